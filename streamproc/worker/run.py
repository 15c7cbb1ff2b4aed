"""Running one handler on one delivery and deciding its outcome: ack, retry or dead-letter."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from opentelemetry.trace import Span

from ..codec import DATA, EVENT_ID, OCCURRED_AT, TYPE, read_envelope
from ..context import Context
from ..errors import DeadLetter, DecodeError, Retry
from ..event import Event
from ..observe.instruments import Instruments
from ..observe.telemetry import (
    A_ATTEMPT,
    A_DEAD_LETTER_REASON,
    A_ENTRY_ID,
    A_MESSAGE_ID,
    A_RETRY_DELAY,
    EV_DEAD_LETTER,
    EV_RETRY,
    current,
    mark_failed,
    start_process,
)
from .consume import Delivery
from .eager import Resumed
from .settle import Settler

log = logging.getLogger(__name__)


class Started(NamedTuple):
    """A delivery whose handler has yet to finish: run `rest` as a task, in `context`."""

    rest: Coroutine[Any, Any, None]
    context: contextvars.Context


class HandlerRun:
    """Runs deliveries of one group. Shared by the group's runner tasks; holds no per-event state."""

    def __init__(self, settler: Settler, redis: aioredis.Redis, namespace: str, instruments: Instruments) -> None:
        self.settler = settler
        self.redis = redis
        self.namespace = namespace
        self.instruments = instruments
        # Each run gets a copy of this context, not of whatever task happens to start it (that may be a handler
        # that just finished and set its own context variables).
        self.base_context = contextvars.copy_context()

    def start(self, d: Delivery) -> Started | None:
        """Run a delivery as far as it goes without waiting. Returns None if it is done (the handler finished
        without suspending; its ack is queued), else the coroutine that finishes it and the context to run it in,
        for a task of its own."""
        if d.reclaimed:
            return Started(self._start_reclaimed(d), self.base_context.copy())
        return self._start(d, eager_ok=True)

    async def _start_reclaimed(self, d: Delivery) -> None:
        """A reclaimed entry's start is recorded in Redis before it runs, so a crash during this run counts
        against it, and a crash while it only waited in a worker's memory does not."""
        recorded = await self.settler.record_start(d)
        if recorded is not None:
            d.attempt = min(d.deliveries, recorded + 1)  # + its first start, which a read does not record
        started = self._start(d, eager_ok=False)
        if started is not None:
            await started.rest

    def _start(self, d: Delivery, eager_ok: bool) -> Started | None:
        handler = d.handler
        if d.attempt > handler.max_deliveries:
            reason = (f"delivered {d.attempt} times without being settled (max_deliveries="
                      f"{handler.max_deliveries}): it kills or hangs its worker")
            return Started(self._dead_letter(d, reason, None, None), self.base_context.copy())
        fields = d.fields
        try:
            # The envelope, read inline (this runs once per event): see codec.read_envelope for the slow, exact path.
            event_type = fields[TYPE].decode()
            ctx = Context(fields[EVENT_ID].decode(), event_type, handler.group, d.attempt, d.keys.stream,
                          d.entry_id.decode(), int(fields[OCCURRED_AT]), self.redis, self.namespace, d.keys.lane)
            event = handler.codec.decode_data(event_type, fields[DATA])
        except DecodeError as exc:
            return Started(self._dead_letter(d, f"undecodable: {exc}", exc, None), self.base_context.copy())
        except (KeyError, UnicodeDecodeError, ValueError):
            try:  # let the exact reader say what is wrong
                read_envelope(fields)
                raise DecodeError("entry envelope is malformed") from None
            except DecodeError as exc:
                return Started(self._dead_letter(d, f"undecodable: {exc}", exc, None), self.base_context.copy())
        if not (handler.eager and eager_ok) or self.instruments.tracing.tracer() is not None:
            return Started(self._run(d, event, ctx), self.base_context.copy())
        return self._start_eagerly(d, event, ctx)

    def _start_eagerly(self, d: Delivery, event: Event, ctx: Context) -> Started | None:
        """Handlers registered with `eager=True`: their first step (up to the first await that suspends) runs right
        here, in the task that read the entry, so one that never suspends costs no task and no timer. That first
        step sees the reading task as `asyncio.current_task()`: such handlers must not enter task-bound constructs
        (asyncio.timeout, TaskGroup) before their first await. Their context variables stay their own."""
        started = time.perf_counter()
        context = self.base_context.copy()
        try:
            coro = d.handler.fn(event, ctx)
            yielded = context.run(coro.send, None)
        except StopIteration:
            self._count(d, None, started)
            self.settler.succeeded(d)
            return None
        except Exception as exc:  # failed before its first await
            self._count(d, exc, started)
            return Started(self._settle(d, exc, None), self.base_context.copy())
        return Started(self._finish(d, coro, yielded, started), context)

    async def _run(self, d: Delivery, event: Event, ctx: Context) -> None:
        """The whole run in a task of its own, under the handler's timeout (and, when tracing, inside a CONSUMER
        span as the current span, so the handler's own spans nest), then settle."""
        tracer = self.instruments.tracing.tracer()
        span, traced = None, None
        if tracer is not None:
            attributes: dict[str, str | int] = {A_MESSAGE_ID: ctx.event_id, A_ENTRY_ID: ctx.stream_id,
                                                A_ATTEMPT: ctx.attempt}
            span, traced = start_process(tracer, d.fields, d.keys, ctx.group, self.settler.consumer, attributes)
        started = time.perf_counter()
        try:
            with current(traced) if traced is not None else contextlib.nullcontext():
                async with asyncio.timeout(d.handler.timeout):
                    await d.handler.fn(event, ctx)
        except Exception as exc:  # any handler failure is retried or dead-lettered; it must not stop the worker
            error: Exception | None = exc
        else:
            error = None
        try:
            self._count(d, error, started)
            await self._settle(d, error, span)
        finally:
            if span is not None:
                span.end()

    async def _finish(self, d: Delivery, coro: Coroutine[Any, Any, None], yielded: Any, started: float) -> None:
        """Continue a handler that suspended, under its timeout, then settle."""
        try:
            async with asyncio.timeout(d.handler.timeout):
                await Resumed(coro, yielded)
        except Exception as exc:  # any handler failure is retried or dead-lettered; it must not stop the worker
            error: Exception | None = exc
        else:
            error = None
        self._count(d, error, started)
        await self._settle(d, error, None)

    def _count(self, d: Delivery, error: Exception | None, started: float) -> None:
        metrics = self.instruments.metrics
        if metrics is not None:
            m = metrics.group(d.handler.route.tag, d.handler.group)
            m.duration.observe(time.perf_counter() - started)
            (m.processed if error is None else m.failed).inc()
            if d.keys.lane is not None and error is None:
                metrics.lane(d.handler.route.tag, d.handler.group, d.keys.lane).inc()

    async def _settle(self, d: Delivery, error: Exception | None, span: Span | None) -> None:
        if error is None:
            self.settler.succeeded(d)
        elif isinstance(error, DeadLetter):
            await self._dead_letter(d, f"handler gave up: {error.reason}", error, span)
        elif d.attempt >= d.handler.max_attempts:
            await self._dead_letter(d, f"failed {d.attempt} of max_attempts={d.handler.max_attempts}", error, span)
        else:
            await self._retry(d, error, error.delay if isinstance(error, Retry) else None, span)

    async def _retry(self, d: Delivery, error: Exception, delay: float | None, span: Span | None) -> None:
        handler = d.handler
        wait = handler.backoff.delay(d.attempt) if delay is None else delay
        log.info("%s failed on %s %s (attempt %d, %s: %s); retrying in %.3fs", handler.name, d.keys.stream,
                 d.entry_id.decode(), d.attempt, type(error).__name__, error, wait)
        if span is not None:
            mark_failed(span, error, EV_RETRY, {A_RETRY_DELAY: wait})
        if await self.settler.schedule_retry(d, wait) and self.instruments.metrics is not None:
            self.instruments.metrics.group(handler.route.tag, handler.group).retried.inc()

    async def _dead_letter(self, d: Delivery, reason: str, error: BaseException | None, span: Span | None) -> None:
        if span is not None and error is not None:
            mark_failed(span, error, EV_DEAD_LETTER, {A_DEAD_LETTER_REASON: reason})
        if await self.settler.dead_letter(d, reason, error) and self.instruments.metrics is not None:
            self.instruments.metrics.group(d.handler.route.tag, d.handler.group).dead_lettered.inc()
