"""The observability hooks an App carries: tracing and metrics, both off (and free) until configured."""

from __future__ import annotations

from dataclasses import dataclass, field

from .metrics import Metrics
from .telemetry import Tracing


@dataclass(slots=True)
class Instruments:
    tracing: Tracing = field(default_factory=Tracing)
    metrics: Metrics | None = None
