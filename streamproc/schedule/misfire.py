"""Which ticks an evaluation fires, and how long the dedup marker of a tick's events must live.

A tick is due when it is after the schedule's baseline (the last tick fired, as Redis records it, or the moment
the schedule was resumed) and not after now. A due tick within `grace_ms` of now is on time and always fires, so
an evaluation that comes a little late (a busy process, a Redis hiccup) fires every tick it finds, in order. An
older due tick was missed (no worker ran, the schedule's function kept failing); the policy decides:

    latest   fire the most recent missed tick once, unless an on-time tick is due (it stands for them all)
    skip     fire none of them
    all      fire each, oldest first, up to `max_catchup` (the most recent ones; older ones are dropped)

A schedule with no record in Redis yet (a new one) has missed nothing: its baseline is the moment the process
first evaluated schedules, less one poll (runner.py), so it starts with its next tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from croniter import CroniterError

from .cron import Timetable, nth_after
from .declare import Misfire, Schedule


@dataclass(frozen=True, slots=True)
class Plan:
    """The ticks one evaluation fires, oldest first, and whether older missed ticks were left out."""

    ticks: tuple[int, ...]
    dropped: bool = False


def missed_limit(misfire: Misfire, max_catchup: int) -> int:
    """How many missed ticks a policy fires at most (for `latest`, only while no on-time tick is due)."""
    return {"skip": 0, "latest": 1, "all": max_catchup}[misfire]


def plan(schedule: Schedule, now_ms: int, baseline_ms: int, grace_ms: int) -> Plan:
    """The due ticks to fire now, walking back from now (so the cost is bounded by what fires, however long the
    schedule was not evaluated)."""
    timetable, limit = schedule.timetable, missed_limit(schedule.misfire, schedule.max_catchup)
    on_time: list[int] = []
    missed: list[int] = []
    dropped = False
    tick: int | None = timetable.at_or_before(now_ms)
    while tick is not None and tick > baseline_ms:
        if now_ms - tick <= grace_ms:
            on_time.append(tick)
        elif len(missed) < (0 if schedule.misfire == "latest" and on_time else limit):
            missed.append(tick)
        else:
            dropped = True
            break
        tick = _before(timetable, tick)
    return Plan(tuple(reversed(on_time + missed)), dropped)


def _before(timetable: Timetable, ms: int) -> int | None:
    try:
        return timetable.before(ms)
    except CroniterError:  # no earlier tick in croniter's search range (decades): nothing more is due
        return None


def marker_ms(schedule: Schedule, tick: int, now_ms: int, grace_ms: int, window_ms: int) -> int:
    """How long the dedup markers of a tick's events must live from now: past the last moment at which some
    evaluation could still find the tick due (on time until `grace_ms` after it; missed until the policy's limit
    of later ticks has passed too), plus the dedup window as a margin for clocks and slow processes.

    With the dedup window alone, a weekly schedule with misfire="all" could append a tick again: a process fires
    it during a catch-up, dies before recording it, and the next process starts more than a window later while
    the tick is still among the last `max_catchup` missed ones."""
    last_chance = nth_after(schedule.timetable, tick, missed_limit(schedule.misfire, schedule.max_catchup))
    return max(window_ms, last_chance + grace_ms - now_ms + window_ms)
