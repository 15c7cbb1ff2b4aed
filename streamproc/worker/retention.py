"""Stream retention and consumer-group hygiene, run periodically by every worker process.

Trimming never removes an entry some group still needs: the Lua script finds, in one atomic step, the oldest
entry that any group has pending, not yet read, or scheduled for retry, and trims only below it and below the
retention policy (age, then length) for fully acknowledged history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from ..app import App
from ..keys import PartitionKeys
from ..redis.errors import FatalRedisError
from ..redis.scripts import DELETE_IDLE_CONSUMERS, TRIM
from .loops import Recovery, repeat

log = logging.getLogger(__name__)

# The length policy inspects at most this many entries per stream and pass, to keep each call short.
TRIM_INSPECT_LIMIT = 10_000


async def trim_stream(redis: aioredis.Redis, keys: PartitionKeys, retention_ms: int, max_length: int) -> int:
    """Trim one stream by the safe min id and the policy; returns how many entries were removed."""
    policy_minid = f"{max(0, int(time.time() * 1000) - retention_ms)}-0"
    retry_prefix = keys.retry("")
    script = redis.register_script(TRIM)
    trimmed, _ = await script(keys=[keys.stream], args=[policy_minid, max_length, TRIM_INSPECT_LIMIT, retry_prefix])
    return int(trimmed)


async def remove_idle_consumers(redis: aioredis.Redis, stream: str, group: str, me: str, idle_ms: int) -> list[str]:
    """Remove consumers of `group` idle for `idle_ms` that own no pending entries (check and delete are atomic)."""
    script = redis.register_script(DELETE_IDLE_CONSUMERS)
    removed = await script(keys=[stream], args=[group, me, idle_ms])
    return [r.decode() if isinstance(r, bytes) else str(r) for r in removed]


async def maintain_once(app: App, me: str) -> None:
    settings = app.settings
    for route in app.topology.by_tag.values():
        for keys in route.partitions:
            trimmed = await trim_stream(app.redis, keys, settings.retention_ms, settings.retention_max_length)
            if trimmed:
                log.info("trimmed %d fully processed entries from %s", trimmed, keys.stream)
            for group in route.groups:
                gone = await remove_idle_consumers(app.redis, keys.stream, group, me, settings.consumer_gc_idle_ms)
                if gone:
                    log.info("removed idle consumers %s from %s on %s", gone, group, keys.stream)


async def maintain(app: App, me: str, stopping: asyncio.Event, on_fatal: Callable[[FatalRedisError], None]) -> None:
    """Trim and tidy every `trim_interval_ms` until stopped."""

    async def step() -> float:
        await maintain_once(app, me)
        return app.settings.trim_interval_ms / 1000

    async def nothing() -> None:  # a missing group is recreated by the group's own worker loops
        return None

    await repeat("maintenance", step, stopping, Recovery(nothing, on_fatal))
