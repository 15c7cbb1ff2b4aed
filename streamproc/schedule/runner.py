"""Evaluating the app's schedules in a worker process. Every worker process does it; there is no leader.

Each evaluation is one Redis call (schedules_poll.lua: Redis's clock and every schedule's record), then, for each
schedule that is not paused and not firing already in this process, the due ticks (misfire.py) are fired in a task
of their own, oldest first: call the function, publish its events with ids derived from the tick (fire.py: the
dedup makes one append per tick whatever the number of processes), then record the tick as fired. A tick whose
function raises (or times out, or returns something that is not an Event or a list of Events: [] is a tick
with nothing to publish, and is recorded as fired) or whose publish fails is logged and not recorded, so the
next evaluation finds it due again and retries it; the schedule's later ticks wait behind it, the other schedules
do not. Evaluations come every `schedule_poll_ms` and at each schedule's next tick, whichever is sooner.
A pause stops a catch-up between two of its ticks; a timed-out plain function's thread holds back its schedule
until it returns (declare.py: Threads); a fatal Redis error while publishing or recording stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import PublishError
from ..redis.errors import Failure, classify
from .cron import tick_text, tick_time
from .declare import Schedule, Threads, TickEvents, call
from .fire import Fired, publish_tick
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
        self._threads = Threads()
        self._hung: set[str] = set()  # schedules whose timed-out function still runs (logged once)
        # A Redis error retrying cannot fix, met while firing a tick: the next step raises it, so the worker's loop
        # (worker/loops.py) stops the worker gracefully as it does for its other loops.
        self._fatal: RedisError | None = None
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
        if self._fatal is not None:
            raise self._fatal
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
        if name in self._firing or self._still_running(name):
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

    def _still_running(self, name: str) -> bool:
        """Whether the schedule waits for its timed-out function's thread (logged when it starts and ends)."""
        if self._threads.busy(name):
            if name not in self._hung:
                self._hung.add(name)
                log.warning("schedule %s: its function outlived its timeout and still runs in its thread; its "
                            "ticks wait until it returns", name)
            return True
        if name in self._hung:
            self._hung.discard(name)
            log.info("schedule %s: its timed-out function returned; its ticks fire again", name)
        return False

    async def _fire(self, schedule: Schedule, due: Plan, now_ms: int) -> None:
        try:
            for i, tick in enumerate(due.ticks):
                # A pause stops a catch-up under way: the evaluation saw the schedule unpaused, but a plan of
                # misfire="all" can take a while; later ticks check again (one HEXISTS each).
                if i and await self._paused(schedule.name):
                    return
                if self._fatal is not None or not await self._fire_tick(schedule, tick, now_ms):
                    return  # its later ticks wait: the next evaluation retries this one first
        finally:
            self._firing.discard(schedule.name)

    async def _paused(self, name: str) -> bool:
        try:
            return await self._state.is_paused(name)
        except RedisError as exc:  # the tick's own calls fail the same way, and are handled there
            log.debug("schedule %s: reading its pause state failed (%s)", name, exc)
            return False

    async def _fire_tick(self, schedule: Schedule, tick: int, now_ms: int) -> bool:
        name = schedule.name
        try:
            batch = await call(schedule, tick_time(tick, schedule.tz), self._threads)
            keep_ms = marker_ms(schedule, tick, now_ms, self._grace_ms, self._app.settings.dedup_window_ms)
            fired = await self._publish(name, tick, batch, keep_ms)
        except Exception as exc:  # a schedule's failure, whatever it is, must not stop the others
            self._failed(schedule, tick, exc)
            return False
        self._fired[name] = max(tick, self._fired.get(name, tick))
        if self._failures.pop(name, 0):
            log.info("schedule %s: tick %s fired after failing before", name, tick_text(tick))
        log.debug("schedule %s: tick %s fired %d event(s), %d appended here", name, tick_text(tick),
                  len(fired.event_ids), fired.appended)
        return True

    async def _publish(self, name: str, tick: int, batch: TickEvents, keep_ms: int) -> Fired:
        """Publish a tick's events and record it. A fatal Redis error here is the worker's, not the schedule's: it
        is kept for the next step to raise (and raised here too, so that the tick is not recorded). Errors of the
        function itself never get here: a RedisError the function raises is only its tick's failure."""
        try:
            fired = await publish_tick(self._app, name, tick_text(tick), batch, keep_ms)
            await self._state.fired(name, tick, fired.first_id, len(fired.event_ids))
        except (RedisError, PublishError) as exc:
            cause = exc.__cause__ if isinstance(exc, PublishError) else exc  # the publisher wraps Redis's error
            if isinstance(cause, RedisError) and classify(cause) is Failure.FATAL:
                self._fatal = cause
            raise
        return fired

    def _failed(self, schedule: Schedule, tick: int, exc: Exception) -> None:
        """Log a failed tick: with its traceback the first time in a row, then one line per retry."""
        failures = self._failures[schedule.name] = self._failures.get(schedule.name, 0) + 1
        log.error("schedule %s: tick %s failed (%s: %s); retried at the next evaluation%s", schedule.name,
                  tick_text(tick), type(exc).__name__, exc, f" (failure {failures} in a row)" if failures > 1 else "",
                  exc_info=exc if failures == 1 else None)
