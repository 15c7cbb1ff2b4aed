"""Operating schedules from outside the workers (`streamproc schedules ...`): list them with their state, pause and
resume them (every worker process sees it at its next evaluation, within `schedule_poll_ms`), trigger one now."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

import msgspec

from ..errors import ConfigError
from .cron import Cron, Every, tick_time
from .declare import Schedule, Threads, call
from .fire import Fired, publish_tick, trigger_label
from .state import Record, ScheduleState

if TYPE_CHECKING:
    from ..app import App


class ScheduleRow(msgspec.Struct, frozen=True, kw_only=True):
    """One schedule as `streamproc schedules list` shows it; times are ISO 8601 in the schedule's time zone."""

    name: str
    expression: str | None
    every_s: float | None
    tz: str
    misfire: str
    next_fire: str | None
    last_fired_tick: str | None
    last_fired_event_id: str | None
    last_fired_events: int
    paused: bool
    paused_since: str | None


class Triggered(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    tick: str
    event_ids: list[str]
    appended: int


def schedule_of(app: App, name: str) -> Schedule:
    schedule = app.schedules.get(name)
    if schedule is None:
        known = ", ".join(sorted(app.schedules)) or "none"
        raise ConfigError(f"the app has no schedule {name!r} (its schedules: {known})")
    return schedule


def _iso(ms: int | None, tz: tzinfo) -> str | None:
    return None if ms is None else tick_time(ms, tz).isoformat()


def row_of(schedule: Schedule, record: Record, now_ms: int) -> ScheduleRow:
    timetable = schedule.timetable
    return ScheduleRow(
        name=schedule.name,
        expression=timetable.expression if isinstance(timetable, Cron) else None,
        every_s=timetable.every_ms / 1000 if isinstance(timetable, Every) else None,
        tz=schedule.tz_name, misfire=schedule.misfire,
        next_fire=_iso(timetable.after(now_ms), schedule.tz),
        last_fired_tick=_iso(record.fired_tick, schedule.tz),
        last_fired_event_id=record.fired_event_id or None, last_fired_events=record.fired_events,
        paused=record.paused, paused_since=_iso(record.paused_at, schedule.tz),
    )


async def list_schedules(app: App) -> list[ScheduleRow]:
    """Every schedule of the app, by name, with what Redis recorded of it (one call)."""
    snapshot = await ScheduleState(app.redis, app.name).poll()
    return [row_of(s, snapshot.of(s.name), snapshot.now_ms) for _, s in sorted(app.schedules.items())]


async def set_paused(app: App, name: str, paused: bool) -> bool:
    """Pause or resume a schedule; False if it was so already. Resuming does not catch up the paused ticks."""
    schedule_of(app, name)
    return await ScheduleState(app.redis, app.name).set_paused(name, paused)


async def trigger(app: App, name: str) -> Triggered:
    """Fire a schedule once now (paused or not), with the moment (Redis's clock, to the microsecond) as its tick.
    Its event ids (fire.py: cron:{name}:trigger:...) never collide with a tick's, and a trigger does not move the
    schedule's last fired tick: its regular ticks fire as they would have."""
    schedule = schedule_of(app, name)
    seconds, micros = await app.redis.time()
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=micros).astimezone(schedule.tz)
    batch = await call(schedule, moment, Threads())
    fired: Fired = await publish_tick(app, name, trigger_label(seconds, micros), batch,
                                      app.settings.dedup_window_ms)
    return Triggered(name=name, tick=moment.isoformat(), event_ids=fired.event_ids, appended=fired.appended)
