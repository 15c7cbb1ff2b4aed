"""What every scenario gets: the mode, how many runs, where charts and scratch files go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Bench:
    smoke: bool
    runs: int
    charts_dir: Path
    charts_link: str  # charts_dir as a link relative to the results file
    work_dir: Path  # scratch files of this invocation (latency dumps, logs)
    redis_binary: str | None = None

    def chart(self, name: str) -> tuple[Path, str]:
        """Where to write a chart, and how the results file links to it."""
        return self.charts_dir / name, f"{self.charts_link}/{name}"

    def log_path(self, name: str) -> Path:
        return self.work_dir / f"{name}.log"
