"""Micro-batching for ingest: concurrent requests share pipelined appends instead of paying a round trip each.

Requests queue their prepared events; one flusher sends everything queued while the previous append was in
flight (natural batching: no added wait when idle), each flush one MULTI/EXEC so every request stays
all-or-nothing. Backlog limits are checked per request first, so that a full stream only fails the requests
that write to it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from ..errors import PublishError
from .publisher import Prepared, Published, Publisher


@dataclass(slots=True)
class _Request:
    prepared: list[Prepared]
    done: asyncio.Future[list[Published]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Coalescer:
    """Shares appends between concurrent callers. `atomic`: each flush is one MULTI/EXEC (ingest requests must be
    all-or-nothing); without it, a plain pipeline (`App.publish` from many tasks)."""

    def __init__(self, publisher: Publisher, max_events: int, atomic: bool = True) -> None:
        self.publisher = publisher
        self.max_events = max_events
        self.atomic = atomic
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def submit(self, prepared: list[Prepared]) -> list[Published]:
        """Append a request's events (all or none) together with whatever else is waiting."""
        if self._task is None or self._task.done():  # first use, or a submit that raced close()
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coalescer")
        request = _Request(prepared)
        self._queue.append(request)
        self._wakeup.set()
        return await request.done

    def _take(self) -> list[_Request]:
        taken: list[_Request] = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0].prepared) <= self.max_events):
            request = self._queue.popleft()
            taken.append(request)
            size += len(request.prepared)
        return taken

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._flush(self._take())
            if self._closing:
                return

    async def _flush(self, batch: list[_Request]) -> None:
        batch = await self._refuse_full(batch)
        try:
            results = await self.publisher.send([p for r in batch for p in r.prepared], atomic=self.atomic)
        except Exception as exc:  # every request of the batch gets the error; none of them was appended
            for r in batch:
                _fail(r, exc)
            return
        start = 0
        for r in batch:
            if not r.done.done():
                r.done.set_result(results[start : start + len(r.prepared)])
            start += len(r.prepared)

    async def _refuse_full(self, batch: list[_Request]) -> list[_Request]:
        """Fail the requests that would take a stream past its backlog limit, so they don't sink the others; the
        accepted ones are counted in the publisher's backlog estimates (reserved), so the batch as a whole fits."""
        accepted = []
        for r in batch:
            try:
                await self.publisher.reserve(r.prepared)
            except Exception as exc:
                # Redis away during the check: a PublishError (503 at ingest) like a failed append, not a raw
                # redis ConnectionError (which ingest answered with a 500).
                error = PublishError(f"Redis did not answer the backlog check ({type(exc).__name__}: {exc}); "
                                     "nothing was appended") if isinstance(exc, RedisError) else exc
                self.publisher.abandon(r.prepared, error)
                _fail(r, error)
            else:
                accepted.append(r)
        return accepted

    async def close(self) -> None:
        """Send what is queued (letting an append in progress finish, never cancelling it), then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._task = None


def _fail(request: _Request, error: BaseException) -> None:
    if not request.done.done():
        request.done.set_exception(error)
