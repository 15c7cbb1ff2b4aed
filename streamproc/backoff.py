"""How long a failed event waits before its next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits between half and all of base * factor**(n-1),
    capped at `cap` seconds. Jitter spreads the retries of a burst of failures so they don't return together."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.cap < 0:
            raise ConfigError("backoff needs base >= 0, factor >= 1 and cap >= 0")

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after the `failed_attempt`-th attempt (1-based) failed."""
        full = min(self.cap, self.base * self.factor ** max(0, failed_attempt - 1))
        return random.uniform(full / 2, full) if self.jitter else full
