"""Redis-side fault tools for tests/faults: a primary + replica pair to demote and promote (REPLICAOF), and a
Redis at its memory limit (maxmemory with noeviction). The TCP fault proxy is in proxy.py; a skewed clock is
libfaketime (see test_skewed_clock.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.helpers import wait_for
from tests.redis_server import RedisServer


@contextlib.contextmanager
def replicated_pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and a replica of it, each a private redis-server."""
    primary = RedisServer()
    primary.start()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    try:
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


def in_sync(server: RedisServer) -> bool:
    with redis.Redis(port=server.port) as client:
        info = client.info("replication")
        return info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == 0


async def switch_primary(new_primary: RedisServer, new_replica: RedisServer) -> None:
    """A failover by hand: promote one, demote the other to replicate from it, wait until it is in sync."""
    with redis.Redis(port=new_primary.port) as p, redis.Redis(port=new_replica.port) as r:
        p.replicaof("NO", "ONE")
        r.replicaof("127.0.0.1", str(new_primary.port))
    await wait_for(lambda: in_sync(new_replica), timeout=15, message="replica in sync")


@contextlib.contextmanager
def noeviction_server() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--maxmemory-policy", "noeviction"])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def fill_memory(client: aioredis.Redis, filler: str = "filler") -> None:
    """Bring Redis to its memory limit: a large filler key, then maxmemory well below what is used (so that what
    acks and trims free cannot bring it back). Deleting `filler` frees it again."""
    await client.setrange(filler, 8_000_000, "x")  # made in Redis: no 8 MB query buffer to skew the measure
    used = (await client.info("memory"))["used_memory"]
    await client.config_set("maxmemory", used - 1_000_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await client.set("probe", b"y" * 1000)
