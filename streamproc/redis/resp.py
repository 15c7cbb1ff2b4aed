"""Packing commands into RESP by hand for the hot paths (XADD when publishing, XACK when settling).

redis-py packs each argument of each command in Python (type checks, encoding, joins); for a batch of appends
that is most of the publisher's time. Here the constant part of the command (XADD key NOMKSTREAM *) is packed
once per stream, and each event adds only its field values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis import exceptions as rx

MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _as_bytes(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b"%d" % value


def xadd_prefix(stream: str, field_count: int, nomkstream: bool) -> bytes:
    """`*N XADD <stream> [NOMKSTREAM] *` for an entry with `field_count` fields."""
    args = (b"XADD", stream.encode(), b"NOMKSTREAM", b"*") if nomkstream else (b"XADD", stream.encode(), b"*")
    return b"*%d\r\n" % (len(args) + 2 * field_count) + b"".join(_bulk(x) for x in args)


def pack_fields(fields: Mapping[bytes, bytes | str | int]) -> bytes:
    return b"".join(_bulk(name) + _bulk(_as_bytes(value)) for name, value in fields.items())


def text(value: object) -> str:
    """A reply value (bytes from a bytes-in, bytes-out client) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def pack_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


async def send_packed(redis: aioredis.Redis, commands: list[bytes], read_timeout: float | None = None,
                      ) -> list[object]:
    """Write packed commands at once on one pooled connection and read their replies (an error reply raises).

    The whole exchange has one deadline: the pool's command deadline, or `read_timeout` (for a blocking read: its
    BLOCK plus a margin). One timer for the batch, not one per reply: redis-py's per-read timeout cost a third of
    a 1,000-event publish. A deadline that passes drops the connection (its replies may still come) and raises
    redis' TimeoutError, which callers treat as an outage."""
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    usual = conn.socket_timeout
    deadline = read_timeout if read_timeout is not None else usual
    conn.socket_timeout = None  # the deadline below covers the write and every read
    try:
        async with asyncio.timeout(deadline):
            await conn.send_packed_command(b"".join(commands))
            return [await conn.read_response() for _ in commands]
    except TimeoutError:
        await conn.disconnect()
        raise rx.TimeoutError(f"Redis did not answer within {deadline}s") from None
    except BaseException:
        await conn.disconnect()  # replies may be left unread: this connection must not be reused
        raise
    finally:
        conn.socket_timeout = usual
        await pool.release(conn)
