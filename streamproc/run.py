"""Running one handler on one delivery and deciding its outcome: ack, retry or dead-letter."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .codec import read_envelope
from .consume import Delivery
from .context import Context
from .errors import DeadLetter, DecodeError, Retry
from .settle import Settler

log = logging.getLogger(__name__)


class HandlerRun:
    """Runs deliveries of one group. Shared by the group's runner tasks; holds no per-event state."""

    def __init__(self, settler: Settler, redis: Any, namespace: str) -> None:
        self.settler = settler
        self.redis = redis
        self.namespace = namespace

    async def __call__(self, d: Delivery) -> None:
        handler = d.handler
        if d.attempt > handler.max_deliveries:
            reason = (f"delivered {d.attempt} times without being settled (max_deliveries="
                      f"{handler.max_deliveries}): it kills or hangs its worker")
            await self.settler.dead_letter(d, reason, None)
            return
        try:
            envelope = read_envelope(d.fields)
            event = handler.codec.decode(envelope)
        except DecodeError as exc:
            await self.settler.dead_letter(d, f"undecodable: {exc}", exc)
            return
        ctx = Context(event_id=envelope.event_id, event_type=envelope.type, group=handler.group, attempt=d.attempt,
                      stream=d.keys.stream, stream_id=d.entry_id.decode(), occurred_at_ms=envelope.occurred_at_ms,
                      redis=self.redis, namespace=self.namespace)
        try:
            async with asyncio.timeout(handler.timeout):
                await handler.fn(event, ctx)
        except Retry as exc:
            await self._failed(d, exc, exc.delay)
        except DeadLetter as exc:
            await self.settler.dead_letter(d, f"handler gave up: {exc.reason}", exc)
        except Exception as exc:  # any handler failure is retried, then dead-lettered; it must not stop the worker
            await self._failed(d, exc, None)
        else:
            self.settler.succeeded(d)

    async def _failed(self, d: Delivery, error: BaseException, delay: float | None) -> None:
        handler = d.handler
        if d.attempt >= handler.max_attempts:
            await self.settler.dead_letter(d, f"failed {d.attempt} of max_attempts={handler.max_attempts}", error)
            return
        wait = handler.backoff.delay(d.attempt) if delay is None else delay
        log.info("%s failed on %s %s (attempt %d, %s: %s); retrying in %.3fs", handler.name, d.keys.stream,
                 d.entry_id.decode(), d.attempt, type(error).__name__, error, wait)
        await self.settler.schedule_retry(d, wait)
