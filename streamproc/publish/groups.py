"""Creating consumer groups so that no event is lost to start-up order."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from ..redis.scripts import ENSURE_GROUP
from ..topology import StartAt

log = logging.getLogger(__name__)

_START_ID: dict[StartAt, str] = {"new": "$", "all": "0"}


async def ensure_groups(redis: aioredis.Redis, wanted: list[tuple[str, str, StartAt]]) -> int:
    """Create each (stream, group) that is missing, in one pipelined round trip; returns how many were created.

    A stream that does not exist yet is created with its groups at its start; a group added to a stream that
    already has history starts where its `start` option says (only new events, or everything retained).
    """
    if not wanted:
        return 0
    script = redis.register_script(ENSURE_GROUP)
    async with redis.pipeline(transaction=False) as pipe:
        for stream, group, start in wanted:
            await script(keys=[stream], args=[group, _START_ID[start]], client=pipe)
        created = await pipe.execute()
    for (stream, group, start), made in zip(wanted, created, strict=True):
        if made:
            log.info("created consumer group %s on %s (start=%s)", group, stream, start)
    return sum(int(x) for x in created)


async def recreate_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Recreate a group that vanished (NOGROUP: Redis lost its data). It restarts at the stream's beginning,
    because everything now in the stream was appended after the loss and has not been processed by this group."""
    log.error("consumer group %s on %s is gone (did Redis lose its data?); recreating it from the stream start",
              group, stream)
    await ensure_groups(redis, [(stream, group, "all")])
