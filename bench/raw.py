"""The raw limit: hand-written redis-py (hiredis, uvloop) loops on the same payloads, measured in the same run.

    (a) xadd_pipelined   XADD of the same fields, `batch` per pipelined round trip
    (a') xadd_packed     the same XADDs packed into RESP by hand and written at once on one connection: the
                         limit of a single client connection, beyond redis-py's own command packing
    (b) xadd_awaited     one awaited XADD per event
    (c) consume_main     XREADGROUP COUNT 500, msgspec decode, an inline no-op call, and the batch's XACK
                         pipelined with the next read (one round trip per batch)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from bench.events import STREAM, Tick, raw_fields, tick
from bench.procs import wait_for_go
from streamproc import eventloop

READ_COUNT = 500


async def xadd_awaited(client: aioredis.Redis, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await client.xadd(STREAM, raw_fields(tick(i)))  # type: ignore[arg-type]
    return n / (time.perf_counter() - started)


async def xadd_pipelined(client: aioredis.Redis, n: int, batch: int) -> float:
    started = time.perf_counter()
    for first in range(0, n, batch):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(first, min(n, first + batch)):
                pipe.xadd(STREAM, raw_fields(tick(i)))  # type: ignore[arg-type]
            await pipe.execute()
    return n / (time.perf_counter() - started)


def _bulk(value: bytes | str | int) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


def _packed_xadd(fields: dict[bytes, bytes | str | int]) -> bytes:
    parts = [b"XADD", STREAM.encode(), b"*", *(x for kv in fields.items() for x in kv)]
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


async def xadd_packed(client: aioredis.Redis, n: int, batch: int) -> float:
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        started = time.perf_counter()
        for first in range(0, n, batch):
            count = min(n, first + batch) - first
            await conn.send_packed_command(b"".join(_packed_xadd(raw_fields(tick(i)))
                                                    for i in range(first, first + count)))
            for _ in range(count):
                await conn.read_response()
        return n / (time.perf_counter() - started)
    finally:
        await pool.release(conn)


async def xadd_concurrent(client: aioredis.Redis, n: int, tasks: int) -> float:
    """`tasks` tasks, each awaiting one XADD per event (each task on its own pooled connection)."""
    each = n // tasks

    async def one(offset: int) -> None:
        for i in range(offset, offset + each):
            await client.xadd(STREAM, raw_fields(tick(i)))  # type: ignore[arg-type]

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for t in range(tasks):
            tg.create_task(one(t * each))
    return each * tasks / (time.perf_counter() - started)


async def preload(client: aioredis.Redis, n: int, batch: int = 1000) -> None:
    """Fill the stream with n events (not measured)."""
    await xadd_pipelined(client, n, batch)


@dataclass(frozen=True, slots=True)
class RawConsumeJob:
    redis_url: str
    group: str
    consumer: str


def consume_main(job: RawConsumeJob) -> None:
    """Child process: consume until the stream has nothing new for this group."""
    wait_for_go(job.redis_url)
    eventloop.run(_consume(job))


def _noop(event: Tick, event_id: str, occurred_at_ms: int) -> None:
    return None


async def _consume(job: RawConsumeJob) -> None:
    client = aioredis.Redis.from_url(job.redis_url)
    decoder = msgspec.msgpack.Decoder(Tick)
    acks: list[bytes] = []
    try:
        while True:
            async with client.pipeline(transaction=False) as pipe:
                if acks:
                    pipe.xack(STREAM, job.group, *acks)
                pipe.xreadgroup(job.group, job.consumer, {STREAM: ">"}, count=READ_COUNT, block=100)
                replies = await pipe.execute()
            acks = []
            for _stream, entries in replies[-1] or ():
                for entry_id, fields in entries:
                    _noop(decoder.decode(fields[b"data"]), fields[b"event_id"].decode(), int(fields[b"occurred_at"]))
                    acks.append(entry_id)
            if not acks:
                return
    finally:
        await client.aclose()
