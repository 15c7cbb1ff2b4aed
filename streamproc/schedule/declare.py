"""A schedule as the app declares it (`@app.cron`): its name, its ticks, its function and its misfire policy, checked
once at registration; and what a function's return value must be (one event, or a list of them, for one tick)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Literal, TypeAlias

from ..errors import ConfigError
from ..event import Event
from ..keys import check_namespace
from .cron import Cron, Every, Timetable, interval_ms, time_zone

Misfire = Literal["latest", "skip", "all"]
MISFIRES: tuple[Misfire, ...] = ("latest", "skip", "all")
Events: TypeAlias = Event | Sequence[Event]
# A schedule's function: given the tick (an aware datetime in the schedule's time zone), the event(s) to publish
# for it; a plain function (run in a thread, so a slow one does not hold up handlers) or an `async def`.
ScheduleFn: TypeAlias = Callable[[datetime], Events | Awaitable[Events]]
# Event ids are at most 200 characters: "cron:{name}:trigger:{tick to the microsecond}:{index}" must fit.
MAX_NAME = 120


class NotEvents(TypeError):
    """A schedule's function returned something that is not an event or a list of events."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One declared schedule. `tz` is where cron fields are read and what the function's tick is given in."""

    name: str
    fn: ScheduleFn
    timetable: Timetable
    tz: tzinfo
    misfire: Misfire
    max_catchup: int
    timeout: float | None

    @property
    def tz_name(self) -> str:
        return str(self.tz)


def declare(fn: ScheduleFn, expression: str | None, every: timedelta | float | None, name: str,
            tz: str | tzinfo, misfire: Misfire, max_catchup: int, timeout: float | None) -> Schedule:
    """Check a `@app.cron(...)` declaration and its function; every mistake is a ConfigError now."""
    check_namespace(name)
    if len(name) > MAX_NAME:
        raise ConfigError(f"schedule name {name!r} is longer than {MAX_NAME} characters (it is part of event ids)")
    if misfire not in MISFIRES:
        raise ConfigError(f"misfire must be one of {', '.join(MISFIRES)}, not {misfire!r}")
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) or max_catchup < 1:
        raise ConfigError(f"max_catchup must be a whole number of at least 1, not {max_catchup!r}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout must be positive seconds or None, not {timeout!r}")
    if not callable(fn):
        raise ConfigError(f"schedule {name!r}: {fn!r} is not callable")
    zone = time_zone(tz) if isinstance(tz, str) else tz
    if not isinstance(zone, tzinfo):
        raise ConfigError(f"tz={tz!r} must be a time zone name (e.g. 'Europe/Berlin') or a tzinfo")
    timetable = _timetable(expression, every, zone)
    _check_return(fn, name)
    return Schedule(name, fn, timetable, zone, misfire, max_catchup, timeout)


def _timetable(expression: str | None, every: timedelta | float | None, zone: tzinfo) -> Timetable:
    if (expression is None) == (every is None):
        raise ConfigError("give a schedule either a cron expression or every=, not both or neither")
    if expression is not None:
        if not isinstance(expression, str):
            raise ConfigError(f"cron expression {expression!r} must be a string")
        return Cron(expression, zone)
    assert every is not None
    return Every(interval_ms(every))


def _check_return(fn: ScheduleFn, name: str) -> None:
    """Refuse a function whose return annotation says it returns no events. An annotation that cannot be resolved
    (a name imported only for type checking) proves nothing: the value is checked at each tick anyway."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # any failure to resolve annotations leaves the check to run time
        return
    if "return" in hints and _returns_events(hints["return"]) is False:
        raise ConfigError(f"schedule {name!r}: its function is annotated to return {hints['return']!r}; a "
                          "schedule returns the event(s) of one tick (an Event or a list of Events)")


def _returns_events(annotation: Any) -> bool | None:
    """Whether an annotation is an Event type, a list of them, or a union of such (None: cannot tell)."""
    if annotation is None or annotation is type(None):
        return False
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return issubclass(annotation, Event) if annotation is not object else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_returns_events(a) for a in args]
        return False if False in verdicts else (None if None in verdicts else True)
    if isinstance(origin, type) and issubclass(origin, Sequence) and args and origin not in (str, bytes):
        return _returns_events(args[0])
    if isinstance(origin, type) and issubclass(origin, Awaitable) and args:  # an explicit Awaitable[...] result
        return _returns_events(args[-1])
    return None


@dataclass(frozen=True, slots=True)
class TickEvents:
    """What a function returned for one tick: its events, and whether as a list (their event ids get an index)."""

    events: list[Event]
    listed: bool


def events_of(result: object, name: str) -> TickEvents:
    """The events of one tick, from what the function returned; anything else is a NotEvents error."""
    if isinstance(result, Event):
        return TickEvents([result], listed=False)
    if isinstance(result, list | tuple) and all(isinstance(e, Event) for e in result):
        return TickEvents(list(result), listed=True)
    raise NotEvents(f"schedule {name!r} returned {type(result).__name__} {result!r:.100}, not an Event or a list "
                    "of Events (return [] to publish nothing for a tick)")


class StillRunning(RuntimeError):
    """A plain function's run for an earlier tick outlived its timeout and has not returned yet."""


class Threads:
    """The threads of plain schedule functions in one process: at most one per schedule at a time. A timeout stops
    the await, not the thread (Python cannot stop one), so a hung function started again at every evaluation
    would take one more thread each time. Each run gets a daemon thread of its own rather than one of the loop's
    default executor, so that a hung function never makes other schedules (or getaddrinfo, on reconnects) queue
    behind it, and does not hold up the interpreter's exit."""

    def __init__(self) -> None:
        self._running: dict[str, concurrent.futures.Future[object]] = {}

    def busy(self, name: str) -> bool:
        """Whether schedule `name`'s function is still running in a thread (a timed-out run)."""
        run = self._running.get(name)
        return run is not None and not run.done()

    async def run(self, schedule: Schedule, tick: datetime) -> object:
        if self.busy(schedule.name):
            raise StillRunning(f"schedule {schedule.name!r}: its function's previous run outlived its timeout and "
                               "is still running; it is not started again until that run returns")
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        context = contextvars.copy_context()  # as asyncio.to_thread does

        def work() -> None:
            done.set_running_or_notify_cancel()
            try:
                done.set_result(context.run(schedule.fn, tick))
            except BaseException as exc:  # handed to the awaiting task, which decides
                done.set_exception(exc)

        self._running[schedule.name] = done
        threading.Thread(target=work, name=f"schedule {schedule.name}", daemon=True).start()
        # shield: a timeout cancels the wait, not `done` (which could not be cancelled once running anyway)
        return await asyncio.shield(asyncio.wrap_future(done))


async def call(schedule: Schedule, tick: datetime, threads: Threads) -> TickEvents:
    """Run the function for one tick, within its timeout: an `async def` in this loop, a plain function in a
    thread of its own (threads: never two at once for one schedule; and what it returns awaited, if awaitable)."""
    fn = schedule.fn
    async with asyncio.timeout(schedule.timeout):
        if inspect.iscoroutinefunction(fn):
            result: object = await fn(tick)
        else:
            result = await threads.run(schedule, tick)
            if inspect.isawaitable(result):
                result = await result
    return events_of(result, schedule.name)
