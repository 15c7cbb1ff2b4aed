"""Small building blocks for the worker's long-running loops: interruptible sleeps and outage-tolerant repeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from ..redis.errors import Failure, FatalRedisError, classify

log = logging.getLogger(__name__)

# What a Redis call can raise: its own errors, socket errors, and a deadline that passed.
REDIS_FAILURES = (RedisError, OSError, TimeoutError)
MAX_PAUSE_S = 5.0


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True early if `event` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def _nothing(_: Failure) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a loop does about failures it cannot simply wait out: recreate a vanished group, stop the worker on a
    fatal error; `noted` hears of every failure (for metrics)."""

    nogroup: Callable[[], Awaitable[None]]
    fatal: Callable[[FatalRedisError], None]
    noted: Callable[[Failure], None] = _nothing


def backoff_s(failures: int) -> float:
    return min(MAX_PAUSE_S, 0.05 * 2.0**failures)


async def repeat(name: str, step: Callable[[], Awaitable[float | None]], until: asyncio.Event,
                 recovery: Recovery) -> None:
    """Run `step` until `until` is set (or the step returns None: done), sleeping for the seconds it returns
    between runs.

    Every failure is classified once (redis/errors.py): an outage or a full Redis is logged and waited out with
    capped exponential backoff (the pool reconnects); a vanished group is recreated before the next step (and a
    failure while recreating it is handled like any other); a fatal error stops the worker gracefully.
    """
    failures = 0
    recreate = False
    while not until.is_set():
        try:
            if recreate:
                await recovery.nogroup()
                recreate = False
            pause = await step()
            if failures:
                log.info("%s: Redis answers again after %d failed attempt(s)", name, failures)
            if pause is None:
                return
            failures = 0
        except REDIS_FAILURES as exc:
            kind = classify(exc)
            recovery.noted(kind)
            if kind is Failure.FATAL:
                recovery.fatal(FatalRedisError(name, exc))
                return
            recreate = recreate or kind is Failure.NOGROUP
            pause = backoff_s(failures) if failures or kind is not Failure.NOGROUP else 0.0
            failures += 1
            _log_failure(name, kind, exc, pause)
        if pause > 0:
            await sleep_unless(until, pause)


async def until_done(name: str, call: Callable[[], Awaitable[object]], until: asyncio.Event,
                     recovery: Recovery) -> None:
    """Run `call` until it succeeds once (or `until` is set), riding out failures as `repeat` does."""

    async def step() -> None:
        await call()

    await repeat(name, step, until, recovery)


def _log_failure(name: str, kind: Failure, exc: BaseException, pause: float) -> None:
    if kind is Failure.MEMORY:
        log.warning("%s: Redis is out of memory (maxmemory reached, noeviction) and refuses writes (%s); acks, "
                    "claims and trimming go on, retrying in %.2fs", name, exc, pause)
    elif kind is Failure.NOGROUP:
        log.warning("%s: consumer group or stream vanished (%s); recreating it", name, exc)
    else:
        log.warning("%s: Redis unavailable (%s: %s); retrying in %.2fs", name, type(exc).__name__, exc, pause)
