"""What a handler knows about the event it is running for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

log = logging.getLogger("streamproc.handler")


@dataclass(slots=True)
class Context:
    """Passed to every handler run.

    `attempt` is 1 on first delivery and counts every start of the handler for this event in this group
    (failures, retries and redeliveries after a crash). `redis` is the app's client, for handlers that keep
    their state in Redis.
    """

    event_id: str
    event_type: str
    group: str
    attempt: int
    stream: str
    stream_id: str
    occurred_at_ms: int
    redis: aioredis.Redis
    namespace: str
    priority: int | None = None  # the lane the event was published to (a type with priority lanes), else None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.occurred_at_ms / 1000, tz=UTC)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(log, {"event_id": self.event_id, "event_type": self.event_type,
                                           "group": self.group, "attempt": self.attempt})

    def idempotency_key(self, scope: str = "") -> str:
        """A Redis key unique to (group, event id, scope): keyed on the event id, never on the stream entry id,
        so a redelivered or re-published copy of the event maps to the same key."""
        return f"{self.namespace}:once:{self.group}:{self.event_id}:{scope}"

    async def once(self, scope: str = "", ttl_s: int = 7 * 86_400) -> bool:
        """True the first time it is called for (group, event id, scope), False ever after (within ttl).

        Call it right before an effect that must not repeat; if the effect itself can fail, prefer writing the
        effect and this marker in one MULTI with `idempotency_key`, so a failure leaves neither.
        """
        return bool(await self.redis.set(self.idempotency_key(scope), b"1", nx=True, ex=ttl_s))
