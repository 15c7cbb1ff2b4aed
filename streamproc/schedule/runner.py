"""Evaluating the app's schedules in a worker process. Every worker process does it; there is no leader.

Each evaluation is one Redis call (schedules_poll.lua: Redis's clock and every schedule's record), then, for each
schedule that is not paused and not firing already in this process, the due ticks (misfire.py) are fired in a task
of their own, oldest first: call the function, publish its events with ids derived from the tick (fire.py: the
dedup makes one append per tick whatever the number of processes), then record the tick as fired. A tick whose
function raises (or times out, or returns no events) or whose publish fails is logged and not recorded, so the
next evaluation finds it due again and retries it; the schedule's later ticks wait behind it, the other schedules
do not. Evaluations come every `schedule_poll_ms` and at each schedule's next tick, whichever is sooner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .cron import tick_text, tick_time
from .declare import Schedule, call
from .fire import publish_tick
from .misfire import Plan, marker_ms, plan
from .state import ScheduleState, Snapshot

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)

# Wake this long after a tick (by Redis's clock), so that the evaluation finds it due.
TICK_LAG_S = 0.002
MIN_PAUSE_S = 0.01
Step = Callable[[], Awaitable[float | None]]


class ScheduleRunner:
    """The schedules of one app in one process: `run` them with a loop that repeats `step` (worker/schedules.py
    gives it the worker's outage handling)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._state = ScheduleState(app.redis, app.name)
        self._grace_ms = app.settings.schedule_grace_ms
        self._poll_s = app.settings.schedule_poll_ms / 1000
        # The last tick this process fired and recorded per schedule: an evaluation whose read raced that record
        # does not fire the tick again (it would only be deduplicated, but its function would run twice).
        self._fired: dict[str, int] = {}
        self._firing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        # A schedule never fired has missed nothing before this process first evaluated schedules (less one poll,
        # for the tick that fell just before): a new schedule starts at its next tick, not with a burst of the
        # ticks of the grace. Fixed then, so that a first tick that fails stays due for the next evaluations.
        self._floor_ms: int | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self, repeat: Callable[[Step], Awaitable[None]]) -> None:
        """Evaluate until `repeat` returns; then wait for the ticks being fired (the worker bounds the stop)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await repeat(self.step)

    async def step(self) -> float:
        """One evaluation; returns the seconds until the next one."""
        snapshot = await self._state.poll()
        read_at = time.monotonic()
        if self._floor_ms is None:
            self._floor_ms = snapshot.now_ms - self._app.settings.schedule_poll_ms
        wake_ms: list[int] = []
        for schedule in self._app.schedules.values():
            if snapshot.of(schedule.name).paused:
                continue
            self._evaluate(schedule, snapshot)
            wake_ms.append(schedule.timetable.after(snapshot.now_ms))
        pause = self._poll_s
        if wake_ms:
            pause = min(pause, (min(wake_ms) - snapshot.now_ms) / 1000 + TICK_LAG_S)
        return max(MIN_PAUSE_S, pause - (time.monotonic() - read_at))

    def _evaluate(self, schedule: Schedule, snapshot: Snapshot) -> None:
        name = schedule.name
        if name in self._firing:
            return
        now = snapshot.now_ms
        floor = self._floor_ms if self._floor_ms is not None else now
        baseline = max(snapshot.of(name).baseline(floor), self._fired.get(name, -1))
        due = plan(schedule, now, baseline, self._grace_ms)
        if due.dropped and self._reported.get(name) != baseline:
            self._reported[name] = baseline
            log.warning("schedule %s: ticks missed since %s were not fired (misfire=%s%s)", name,
                        tick_text(baseline), schedule.misfire,
                        f", max_catchup={schedule.max_catchup}" if schedule.misfire == "all" else "")
        if due.ticks:
            assert self._tasks is not None, "step() runs inside run()"
            self._firing.add(name)
            self._tasks.create_task(self._fire(schedule, due, now), name=f"schedule {name}")

    async def _fire(self, schedule: Schedule, due: Plan, now_ms: int) -> None:
        try:
            for tick in due.ticks:
                if not await self._fire_tick(schedule, tick, now_ms):
                    return  # its later ticks wait: the next evaluation retries this one first
        finally:
            self._firing.discard(schedule.name)

    async def _fire_tick(self, schedule: Schedule, tick: int, now_ms: int) -> bool:
        name = schedule.name
        try:
            batch = await call(schedule, tick_time(tick, schedule.tz))
            keep_ms = marker_ms(schedule, tick, now_ms, self._grace_ms, self._app.settings.dedup_window_ms)
            fired = await publish_tick(self._app, name, tick_text(tick), batch, keep_ms)
            await self._state.fired(name, tick, fired.first_id, len(fired.event_ids))
        except Exception as exc:  # a schedule's failure, whatever it is, must not stop the others
            self._failed(schedule, tick, exc)
            return False
        self._fired[name] = max(tick, self._fired.get(name, tick))
        if self._failures.pop(name, 0):
            log.info("schedule %s: tick %s fired after failing before", name, tick_text(tick))
        log.debug("schedule %s: tick %s fired %d event(s), %d appended here", name, tick_text(tick),
                  len(fired.event_ids), fired.appended)
        return True

    def _failed(self, schedule: Schedule, tick: int, exc: Exception) -> None:
        """Log a failed tick: with its traceback the first time in a row, then one line per retry."""
        failures = self._failures[schedule.name] = self._failures.get(schedule.name, 0) + 1
        log.error("schedule %s: tick %s failed (%s: %s); retried at the next evaluation%s", schedule.name,
                  tick_text(tick), type(exc).__name__, exc, f" (failure {failures} in a row)" if failures > 1 else "",
                  exc_info=exc if failures == 1 else None)
