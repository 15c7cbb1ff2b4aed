"""The Redis client an App uses: every call has a deadline, and TCP keepalive is on.

A connection that goes dark (a partition, a NAT or load-balancer idle drop, a host gone without a RST) would
otherwise hang a read forever. Reads have the pool's `socket_timeout` (redis-py reads under asyncio.timeout; a
blocking read passes its own deadline, its BLOCK plus a margin); writes get the same deadline here under
asyncio.timeout, because redis-py writes under asyncio.wait_for, which on Python 3.11 can swallow a cancellation
that arrives as the write completes. A deadline that passes drops the connection and raises redis' TimeoutError,
which every loop treats as an outage (redis/errors.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection

from ..settings import Settings

# Probe an idle connection after 10 s, every 5 s, and give up after 3 unanswered probes: a dead peer is noticed
# within about 25 s even by a connection nobody writes to.
_PROBES = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
KEEPALIVE = {getattr(socket, name): value for name, value in _PROBES if hasattr(socket, name)}


class _WriteDeadline(AbstractConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await self._send_within_deadline(command, check_health)
        except RuntimeError as exc:
            # uvloop raises RuntimeError ("the handler is closed") for a write to a transport that a reset by the
            # peer closed, where asyncio's own loop raises an OSError that redis-py turns into ConnectionError: an
            # outage either way, never a crash of the loop that wrote. Any other RuntimeError is a bug: raised.
            if "handler is closed" not in str(exc):
                raise
            await self.disconnect(nowait=True)
            raise rx.ConnectionError(f"the connection to Redis closed under a write ({exc})") from exc

    async def _send_within_deadline(self, command: Any, check_health: bool) -> None:
        timeout = self.socket_timeout
        if not timeout:
            return await super().send_packed_command(command, check_health)
        try:
            async with asyncio.timeout(timeout):
                self.socket_timeout = None  # the base class would wrap the write in asyncio.wait_for
                try:
                    await super().send_packed_command(command, check_health)
                finally:
                    self.socket_timeout = timeout
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise rx.TimeoutError(f"sending a command to Redis took longer than {timeout}s") from None


class TcpConnection(_WriteDeadline, Connection):
    pass


class TlsConnection(_WriteDeadline, SSLConnection):
    pass


class UnixConnection(_WriteDeadline, UnixDomainSocketConnection):
    pass


def _connection_class(url: str) -> type[AbstractConnection]:
    scheme = urlsplit(url).scheme
    return {"rediss": TlsConnection, "unix": UnixConnection}.get(scheme, TcpConnection)


def command_deadline_s(settings: Settings) -> float:
    return settings.redis_timeout_ms / 1000


def read_deadline_s(settings: Settings, block_ms: int) -> float:
    """How long a blocking read may take before the connection counts as dark: its BLOCK plus a command deadline."""
    return block_ms / 1000 + command_deadline_s(settings)


# How long a caller waits for a free connection of a full pool before the call fails (redis' ConnectionError).
POOL_WAIT_S = 30


def _pool_options(settings: Settings) -> dict[str, Any]:
    """What both clients' blocking pools are made with: its size and wait, a deadline on every call, TCP keepalive
    (not on a Unix socket, which has none)."""
    deadline = command_deadline_s(settings)
    options: dict[str, Any] = {
        "max_connections": settings.redis_max_connections, "timeout": POOL_WAIT_S, "health_check_interval": 30,
        "socket_timeout": deadline, "socket_connect_timeout": deadline}
    if urlsplit(settings.redis_url).scheme != "unix":
        options |= {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
    return options


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client on a blocking pool (callers wait for a free connection rather than fail), bytes in and out."""
    url = settings.redis_url
    pool = aioredis.BlockingConnectionPool.from_url(url, **_pool_options(settings))
    # After parsing: the URL's scheme (rediss, unix) would override a class given to from_url.
    pool.connection_class = _connection_class(url)
    # from_pool: the client owns the pool, so aclose() closes its connections too (Redis(connection_pool=...) leaves
    # them open, and each App closed that way leaked its sockets until garbage collection).
    return aioredis.Redis.from_pool(pool)


def sync_redis_client(settings: Settings) -> redis.Redis:
    """A sync client like `redis_client`'s, for SyncPublisher: the same pool options. redis-py's sync connections
    need no write deadline of ours (a blocking socket's timeout covers writes too), so from_url's class per scheme
    is right. from_pool, as above: close() then closes the pool's connections."""
    pool = redis.BlockingConnectionPool.from_url(settings.redis_url, **_pool_options(settings))
    return redis.Redis.from_pool(pool)
