"""Numbers to markdown: medians with min-max over runs, per-run ratios to a raw baseline, and target checks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(slots=True)
class Check:
    """One target of the issue, what was measured for it, and whether it is met (None: not measured)."""

    target: str
    measured: str
    met: bool | None


@dataclass(slots=True)
class Section:
    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


@dataclass(slots=True)
class Runs:
    """Values per case, one per run, in run order (runs of all cases interleave, so run i of two cases shared
    the machine's state of that moment: their ratio is what is stable)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, case: str, value: float) -> None:
        self.values.setdefault(case, []).append(value)

    def get(self, case: str) -> list[float]:
        return self.values.get(case, [])

    def ratios(self, case: str, baseline: str) -> list[float]:
        return [v / b for v, b in zip(self.get(case), self.get(baseline), strict=False) if b]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """'median (min-max)', or just the value for a single run."""
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio_text(ratios: list[float]) -> str:
    if not ratios:
        return ""
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return out


def rate_table(runs: Runs, cases: list[tuple[str, str]], unit: str = "events/s") -> list[str]:
    """Rows of (case, baseline case or ''): median (min-max) and the ratio to the baseline of the same run."""
    rows = []
    for case, baseline in cases:
        ratio = f"{ratio_text(runs.ratios(case, baseline))} of {baseline}" if baseline else "(baseline)"
        rows.append([case, spread(runs.get(case)), ratio])
    return table(["case", f"{unit}: median (min-max)", "ratio to baseline, same run: median (min-max)"], rows)


def check_at_least(target: str, values: list[float], threshold: float, fmt: str) -> Check:
    if not values:
        return Check(target, "not measured", None)
    value = median(values)
    return Check(target, fmt.format(value), value >= threshold)
