"""PNG charts (matplotlib, headless): bars with min-max whiskers, and latency CDFs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import median


def bars(path: Path, title: str, ylabel: str, series: dict[str, list[float]], highlight: str = "raw") -> None:
    """One bar per case at its median, whiskers from min to max; cases whose name contains `highlight` are grey."""
    labels = [k for k, v in series.items() if v]
    mids = [median(series[k]) for k in labels]
    lows = [m - min(series[k]) for k, m in zip(labels, mids, strict=True)]
    highs = [max(series[k]) - m for k, m in zip(labels, mids, strict=True)]
    colors = ["#9e9e9e" if highlight in k else "#1f77b4" for k in labels]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.5))
    ax.bar(range(len(labels)), mids, yerr=[lows, highs], color=colors, capsize=4)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cdfs(path: Path, title: str, series: dict[str, list[float]]) -> None:
    """Cumulative distribution of latencies (ms, log scale) per series."""
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for label, values in series.items():
        if not values:
            continue
        ordered = sorted(values)
        n = len(ordered)
        ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("publish → handler start (ms)")
    ax.set_ylabel("fraction of events")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
