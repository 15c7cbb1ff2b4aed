"""How the supervisor restarts worker processes that die: a delay that doubles while a slot's children keep dying,
and a warning when children die in a loop.

A slot's delay starts over only after one of its children ran `healthy_after_s`. A child that lives a few seconds
and dies again is still crash-looping: an earlier rule ("it ran 5 s, restart it at once") restarted such children
every few seconds forever, and each death hands what the child held to another consumer with one more delivery
counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """The supervisor's restart timing (small values for tests; the defaults for production)."""

    first_delay_s: float = 0.25
    max_delay_s: float = 30.0
    # A child that ran this long before it died was healthy: the next restart is prompt again.
    healthy_after_s: float = 60.0
    # This many deaths of any children within the window is a crash loop, logged as a warning once per window.
    loop_deaths: int = 5
    loop_window_s: float = 300.0

    def after_death(self, deaths_in_a_row: int, ran_s: float) -> tuple[int, float]:
        """A slot's child died after running `ran_s`: its deaths in a row now, and the delay before the restart."""
        deaths = 1 if ran_s >= self.healthy_after_s else deaths_in_a_row + 1
        # The exponent is capped: after days of a crash loop, 2 ** deaths would overflow a float.
        return deaths, min(self.max_delay_s, self.first_delay_s * 2.0 ** min(deaths - 1, 60))


class CrashLoop:
    """The deaths of a supervisor's children within the policy's window."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.deaths: deque[float] = deque()
        self._warned_at: float | None = None

    def died(self, now: float) -> int | None:
        """Count a death at `now` (monotonic seconds). Returns the deaths within the window when they amount to a
        crash loop not yet warned about in this window, else None."""
        window = self.policy.loop_window_s
        self.deaths.append(now)
        while self.deaths and self.deaths[0] <= now - window:
            self.deaths.popleft()
        if len(self.deaths) < self.policy.loop_deaths:
            return None
        if self._warned_at is not None and now - self._warned_at < window:
            return None
        self._warned_at = now
        return len(self.deaths)
