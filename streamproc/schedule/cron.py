"""When a schedule's ticks fall: cron expressions (through croniter) and fixed intervals aligned to the epoch.

Times are whole milliseconds since the epoch (as Redis TIME gives them); the schedule's time zone only matters for
cron expressions, whose fields are read as wall-clock time there.

Daylight saving time follows Debian's (Vixie) cron, as croniter mostly does already:
- clocks go forward (Europe/Berlin, 2026-03-29, 02:00 -> 03:00): a time that does not exist that day is not lost;
  a daily 02:30 fires at 03:00, the first time after the gap;
- clocks go back (2026-10-25, 03:00 -> 02:00): a fixed-time schedule (no '*' in its second, minute or hour field)
  fires once, at the first 02:30; croniter would fire it again an hour later (the second 02:30), which this module
  drops. A schedule with a wildcard there ("*/5 * * * *", "30 * * * *") fires in both passes of the hour, as it
  fires every real hour of the day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ..errors import ConfigError

# An expression croniter accepts but that matches no time (e.g. "0 0 30 2 *"): it gives up after this many years.
_SEARCH_YEARS = 50


class Timetable(Protocol):
    """The ticks of a schedule, in ms since the epoch."""

    def at_or_before(self, ms: int) -> int:
        """The latest tick at or before `ms`."""
        ...

    def before(self, ms: int) -> int:
        """The latest tick strictly before `ms`."""
        ...

    def after(self, ms: int) -> int:
        """The first tick strictly after `ms`."""
        ...

    def describe(self) -> str:
        """The expression, or the interval, as a person would write it."""
        ...


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r} (an IANA name, e.g. 'Europe/Berlin' or 'UTC')") from None


@dataclass(frozen=True, slots=True)
class Every:
    """Every `every_ms`, on the multiples of it since the epoch (so every process agrees on the ticks)."""

    every_ms: int

    def at_or_before(self, ms: int) -> int:
        return ms - ms % self.every_ms

    def before(self, ms: int) -> int:
        return self.at_or_before(ms - 1)

    def after(self, ms: int) -> int:
        return self.at_or_before(ms) + self.every_ms

    def describe(self) -> str:
        return f"every {format_interval(self.every_ms)}"


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), read in
    the time zone `tz`. Ranges, steps, lists and names (mon-fri, jan) as in crontab(5)."""

    expression: str
    tz: tzinfo = UTC
    with_seconds: bool = field(init=False)
    # Fires in both passes of an hour that clocks go back over (see the module docstring).
    wildcard: bool = field(init=False)

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise ConfigError(f"cron expression {self.expression!r} must have 5 fields (minute hour day month "
                              "weekday) or 6 (seconds first)")
        object.__setattr__(self, "with_seconds", len(fields) == 6)
        object.__setattr__(self, "wildcard", any(f.startswith("*") for f in fields[: len(fields) - 3]))
        try:
            self.after(0)  # an expression that never matches is refused now, not at its first evaluation
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"cron expression {self.expression!r} is not valid: {exc}") from None

    def _iterate(self, ms: int) -> croniter[datetime]:
        start = datetime.fromtimestamp(ms / 1000, tz=self.tz)
        return croniter(self.expression, start, ret_type=datetime, second_at_beginning=self.with_seconds,
                        max_years_between_matches=_SEARCH_YEARS)

    def _repeated(self, tick: datetime) -> bool:
        """A fixed-time tick in the second pass of an hour that clocks went back over: not fired (see above)."""
        return not self.wildcard and tick.astimezone(UTC).astimezone(self.tz).fold == 1

    def after(self, ms: int) -> int:
        it = self._iterate(ms)
        while True:
            tick = it.get_next(datetime)
            if not self._repeated(tick):
                return _ms(tick)

    def before(self, ms: int) -> int:
        # croniter counts in whole seconds: from a start inside a second it would skip that second's own tick.
        it = self._iterate(math.ceil(ms / 1000) * 1000)
        while True:
            tick = it.get_prev(datetime)
            if _ms(tick) < ms and not self._repeated(tick):
                return _ms(tick)

    def at_or_before(self, ms: int) -> int:
        return self.before(ms + 1)

    def describe(self) -> str:
        return self.expression


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def nth_after(timetable: Timetable, ms: int, n: int) -> int:
    """The n-th tick after `ms` (n = 0: `ms` itself)."""
    if isinstance(timetable, Every):
        return ms + n * timetable.every_ms
    for _ in range(n):
        ms = timetable.after(ms)
    return ms


def interval_ms(every: timedelta | float) -> int:
    """An interval (a timedelta, or seconds) in whole ms; at least a second, since schedules are polled each
    second (and their ticks name event ids to the ms)."""
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ConfigError(f"every={every!r} must be a timedelta or a number of seconds")
    ms = round(seconds * 1000)
    if ms < 1000:
        raise ConfigError(f"every={every!r} is shorter than a second; schedules are evaluated once a second")
    return ms


def format_interval(ms: int) -> str:
    seconds, rest = divmod(ms, 1000)
    if rest:
        return f"{ms / 1000:g}s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def tick_text(ms: int) -> str:
    """A tick as it appears in event ids: UTC, ISO 8601, to the second (to the ms when it has any)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def tick_time(ms: int, tz: tzinfo) -> datetime:
    """A tick as the schedule's function receives it: an aware datetime in the schedule's time zone."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz)
