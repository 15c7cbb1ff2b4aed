"""Small building blocks for the worker's long-running loops: interruptible sleeps and outage-tolerant repeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis import exceptions as rx

log = logging.getLogger(__name__)

OUTAGE = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError)


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True early if `event` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def is_nogroup(exc: BaseException) -> bool:
    # A blocked XREADGROUP whose stream was deleted (FLUSHALL, DEL) fails with "UNBLOCKED the stream key no longer
    # exists", not NOGROUP; the group went with the stream, so it is recovered the same way.
    text = str(exc)
    return isinstance(exc, rx.ResponseError) and ("NOGROUP" in text or "stream key no longer exists" in text)


async def repeat(
    name: str,
    step: Callable[[], Awaitable[float]],
    until: asyncio.Event,
    on_nogroup: Callable[[], Awaitable[None]],
) -> None:
    """Run `step` until `until` is set, sleeping for the seconds it returns between runs.

    A Redis outage is logged and waited out with capped exponential backoff (the connection pool reconnects);
    a vanished consumer group (NOGROUP, Redis lost its data) is recreated through `on_nogroup`.
    """
    failures = 0
    while not until.is_set():
        try:
            pause = await step()
            failures = 0
        except OUTAGE as exc:
            failures += 1
            pause = min(5.0, 0.05 * 2**failures)
            log.warning("%s: Redis unavailable (%s: %s); retrying in %.2fs", name, type(exc).__name__, exc, pause)
        except rx.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            await on_nogroup()
            pause = 0.0
        if pause > 0:
            await sleep_unless(until, pause)
