"""Hostile clients at the ingest, as an attacker would be: bodies nested 100,000 levels deep (JSON and msgpack), bodies
that stop arriving, hundreds of stalled connections at once, more connections than the limit, oversized headers, and
a graceful stop with all of those still connected. Real server, real sockets on 127.0.0.1, real Redis; tiny timeouts.
Every malformed body is a 400 problem (never a 500), nothing is appended, and nothing holds the server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from streamproc import ConfigError, Event, Settings
from streamproc.http.intake import MAX_DEPTH
from tests.helpers import wait_for
from tests.ingestserver import (
    AUTH,
    JSON,
    TOKEN,
    CardAdded,
    IngestServer,
    assert_problem,
    card,
    ingest_app,
    make_app,
    post,
    serving,
    xlen,
)
from tests.inproc import partition

DEEP = 100_000
MSGPACK = {**AUTH, "Content-Type": "application/msgpack"}


class Doc(Event, tag="doc"):
    """An event with free-form data: only such a type can hold data nested past MAX_DEPTH."""

    payload: Any = None


@dataclass
class Raw:
    """One HTTP/1.1 connection written and read by hand."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, server: IngestServer) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:  # noqa: ASYNC109
        """The status, headers (lower-case names) and body of the next response."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def closed(self, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        """Wait until the server closes the connection; returns what it sent meanwhile."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read()
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.writer.close()


def request_head(length: int, extra: str = "", token: str = TOKEN) -> bytes:
    return (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def full_request(event: dict[str, Any]) -> bytes:
    body = msgspec.json.encode(event)
    return request_head(len(body)) + body


async def stalled_body(server: IngestServer) -> Raw:
    """Headers announcing 1000 bytes, ten of them, then nothing. `Expect: 100-continue` makes the server say when the
    request has reached its handler, which is then waiting for the rest."""
    raw = await Raw.connect(server)
    await raw.send(request_head(1000, "Expect: 100-continue\r\n"))
    async with asyncio.timeout(10):
        assert await raw.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await raw.send(b'{"type": "')
    return raw


async def stalled_head(server: IngestServer) -> Raw:
    """Half a request head, then nothing."""
    raw = await Raw.connect(server)
    await raw.send(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    return raw


async def idle_after_one_request(server: IngestServer) -> Raw:
    """A keep-alive connection that made one request (so the server has surely counted it), now idle."""
    raw = await Raw.connect(server)
    await raw.send(full_request(card(1)))
    status, _, _ = await raw.answer()
    assert status == 202
    return raw


async def refused_with_body_pending(server: IngestServer) -> Raw:
    """A request refused (401) before its body came: aiohttp then lingers, reading the rest, for up to 10 s."""
    raw = await Raw.connect(server)
    await raw.send(request_head(1000, token="wrong") + b'{"type": "')
    status, _, _ = await raw.answer()
    assert status == 401
    return raw


@contextlib.asynccontextmanager
async def opened(*raws: Raw) -> AsyncIterator[list[Raw]]:
    try:
        yield list(raws)
    finally:
        for raw in raws:
            raw.close()


def nested_json(field_value: bytes) -> bytes:
    return b'{"type": "card.added", "card_id": "c", "curator_id": "u", "url": "https://x", ' + field_value + b"}"


def nested_msgpack(key_and_value: bytes) -> bytes:
    """card(1) as a msgpack map with one more entry."""
    packed = msgspec.msgpack.encode(card(1))
    assert 0x80 <= packed[0] < 0x8F, "a fixmap"
    return bytes([packed[0] + 1]) + packed[1:] + key_and_value


@pytest.mark.parametrize(("body", "headers"), [
    (b"[" * DEEP + b"]" * DEEP, JSON),
    (b'{"a": ' * DEEP + b"1" + b"}" * DEEP, JSON),
    (nested_json(b'"title": ' + b"[" * DEEP + b"]" * DEEP), JSON),  # in a field of the type
    (nested_json(b'"junk": ' + b"[" * DEEP + b"]" * DEEP), JSON),  # in a field the type does not have
    (b'[{"type": "card.added"}, ' + b"[" * DEEP + b"]" * DEEP + b"]", JSON),
    (b"\x91" * DEEP + b"\x90", MSGPACK),  # fixarray of one, 100,000 times
    (b"\x81\xa1a" * DEEP + b"\x01", MSGPACK),  # fixmap {"a": ...}, 100,000 times
    (nested_msgpack(b"\xa5title" + b"\x91" * DEEP + b"\x90"), MSGPACK),
], ids=["json-arrays", "json-objects", "json-known-field", "json-unknown-field", "json-batch", "msgpack-arrays",
        "msgpack-maps", "msgpack-known-field"])
async def test_body_nested_100000_levels_is_a_400_problem_not_a_500(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession, body: bytes,
        headers: dict[str, str]) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        assert len(body) < app.settings.ingest_max_body_bytes
        _, answer, resp = await post(client, server, body, headers)
        assert_problem(resp, answer, 400)
        assert answer["title"] == "Malformed Body"
        assert "nests too deeply" in answer["detail"]
        assert await xlen(redis, app, CardAdded) == 0
        assert (await post(client, server, card(1)))[0] == 202, "the server carries on"


def nest(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("encode", [msgspec.json.encode, msgspec.msgpack.encode], ids=["json", "msgpack"])
async def test_event_data_may_nest_max_depth_levels_and_no_more(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                client: aiohttp.ClientSession, encode: Any) -> None:
    app = ingest_app(ns, redis_url)
    app.register(Doc)
    headers = JSON if encode is msgspec.json.encode else MSGPACK
    async with serving(app) as server:
        # The event object is level 1: a payload of MAX_DEPTH - 1 nested lists reaches the limit exactly.
        deepest = {"type": "doc", "payload": nest(MAX_DEPTH - 1)}
        status, answer, _ = await post(client, server, encode(deepest), headers)
        assert status == 202, answer
        too_deep = {"type": "doc", "payload": nest(MAX_DEPTH)}
        for body in ([too_deep], [deepest] * 3 + [too_deep]):
            _, answer, resp = await post(client, server, encode(body), headers)
            assert_problem(resp, answer, 422)
            assert answer["errors"] == [{"index": len(body) - 1, "path": f"$[{len(body) - 1}].payload",
                                         "pointer": f"/{len(body) - 1}/payload",
                                         "message": f"nests deeper than {MAX_DEPTH} levels (the event object is "
                                                    "level 1)"}]
        [(_, fields)] = await redis.xrange(partition(app, Doc).stream)
        assert msgspec.msgpack.decode(fields[b"data"], type=Doc) == Doc(payload=nest(MAX_DEPTH - 1))


async def test_fields_a_type_does_not_have_are_ignored_however_deep(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                    client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        junk = nest(3 * MAX_DEPTH)
        # By the fast typed path, and by the general one (2.0 for an int sends it there).
        for event in (card(1, junk=junk), card(2, junk=junk, position=2.0)):
            status, answer, _ = await post(client, server, event)
            assert status == 202, answer
        entries = await redis.xrange(partition(app, CardAdded).stream)
        decoded = [msgspec.msgpack.decode(f[b"data"], type=CardAdded) for _, f in entries]
        assert [(e.card_id, e.position) for e in decoded] == [("c1", 0), ("c2", 2)]


async def test_deep_data_in_a_field_of_the_type_is_a_422_naming_it(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                   client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        # 450 levels decode, but walking them in Python (the retry that reads 2.0 as 2) would pass the recursion
        # limit: that was a 500 too.
        for event in (card(1, title=nest(450)), card(1, title=nest(450), position=2.0)):
            _, answer, resp = await post(client, server, event)
            assert_problem(resp, answer, 422)
            assert [e["path"] for e in answer["errors"]] == ["$[0].title"]
        assert await xlen(redis, app, CardAdded) == 0


async def test_body_that_stops_arriving_is_408_and_closed(ns: str, redis_url: str, redis: aioredis.Redis,
                                                          client: aiohttp.ClientSession) -> None:
    timeout = 0.3
    app = make_app(ns, redis_url, ingest_body_timeout_ms=int(timeout * 1000))
    async with serving(app) as server:
        started = time.monotonic()
        async with opened(*await asyncio.gather(*(stalled_body(server) for _ in range(20)))) as stalled:
            for raw in stalled:
                status, headers, body = await raw.answer()
                assert status == 408
                assert headers["content-type"] == "application/problem+json"
                assert headers["connection"] == "close"
                assert msgspec.json.decode(body)["title"] == "Request Timeout"
                assert await raw.closed(timeout=5) == b"", "closed at once, not after aiohttp's 10 s lingering"
            waited = time.monotonic() - started
            assert timeout <= waited < timeout + 5, waited
        assert (await post(client, server, card(1)))[0] == 202
        assert await xlen(redis, app, CardAdded) == 1


async def test_hundreds_of_stalled_connections_do_not_keep_out_normal_requests(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    grace = 1.0
    app = make_app(ns, redis_url, grace_period_s=grace, ingest_body_timeout_ms=60_000,
                   ingest_keepalive_timeout_ms=60_000)
    async with serving(app) as server:
        bodies = await asyncio.gather(*(stalled_body(server) for _ in range(200)))
        heads = await asyncio.gather(*(stalled_head(server) for _ in range(100)))
        async with opened(*bodies, *heads) as stalled:
            results = await asyncio.gather(*(post(client, server, card(i)) for i in range(20)))
            assert [status for status, _, _ in results] == [202] * 20
            assert await xlen(redis, app, CardAdded) == 20
            started = time.monotonic()
            await server.stop(timeout=grace + 10)
            took = time.monotonic() - started
            # Nothing was sent to them before the stop (no 408: they were held all along), and it let them all go.
            leftovers = await asyncio.gather(*(raw.closed(timeout=5) for raw in stalled))
            assert leftovers == [b""] * len(stalled)
            assert took < grace + 2.0, f"the stop took {took:.2f}s with a grace period of {grace}s"


async def test_connections_over_the_limit_are_answered_503_and_closed(ns: str, redis_url: str,
                                                                     client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_max_connections=4, ingest_retry_after_s=3)
    async with serving(app) as server:
        held = await asyncio.gather(*(idle_after_one_request(server) for _ in range(4)))
        async with opened(*held):
            async with opened(await Raw.connect(server)) as [extra]:
                status, headers, body = await extra.answer()
                assert status == 503
                assert headers["retry-after"] == "3"
                assert headers["connection"] == "close"
                assert msgspec.json.decode(body)["title"] == "Too Many Connections"
                assert await extra.closed() == b""
            # A real client reads the answer too (the refusal reads what it sends, so it gets no reset).
            async with aiohttp.ClientSession() as fresh, \
                    fresh.post(server.events_url, data=msgspec.json.encode(card(1)), headers=JSON) as resp:
                assert resp.status == 503
            # The held connections still work; once one closes, a new one is served.
            await held[0].send(full_request(card(2)))
            assert (await held[0].answer())[0] == 202
            held[1].close()

            async def served() -> bool:
                async with opened(await Raw.connect(server)) as [probe]:
                    await probe.send(full_request(card(3)))
                    return (await probe.answer())[0] == 202

            await wait_for(served, timeout=5)


async def test_oversized_headers_are_refused_and_closed(ns: str, redis_url: str,
                                                        client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_max_header_bytes=1024, ingest_max_headers=16)
    body = msgspec.json.encode(card(1))
    async with serving(app) as server:
        too_long = request_head(len(body), f"X-Padding: {'a' * 2000}\r\n") + body
        too_many = request_head(len(body), "".join(f"X-H{i}: {i}\r\n" for i in range(20))) + body
        long_target = too_long.replace(b"/v1/events", b"/v1/events?" + b"a" * 2000, 1)
        for request in (too_long, too_many, long_target):
            async with opened(await Raw.connect(server)) as [raw]:
                await raw.send(request)
                status, headers, answer = await raw.answer()
                assert status == 400
                # Refused by aiohttp's HTTP parser, before any middleware: a problem all the same.
                assert headers["content-type"] == "application/problem+json"
                problem = msgspec.json.decode(answer)
                assert (problem["type"], problem["title"], problem["status"]) == ("about:blank", "Bad Request", 400)
                assert problem["detail"]
                assert await raw.closed() == b""
        within = request_head(len(body), f"X-Padding: {'a' * 900}\r\n" + "".join(f"X-H{i}: {i}\r\n" for i in range(8)))
        async with opened(await Raw.connect(server)) as [raw]:
            await raw.send(within + body)
            assert (await raw.answer())[0] == 202


async def test_idle_connections_are_closed_after_the_keepalive_timeout(ns: str, redis_url: str) -> None:
    keepalive = 0.3
    app = make_app(ns, redis_url, ingest_keepalive_timeout_ms=int(keepalive * 1000))
    async with serving(app) as server:
        used, silent = await idle_after_one_request(server), await Raw.connect(server)
        async with opened(used, silent):
            started = time.monotonic()
            assert await used.closed(timeout=keepalive + 3) == b""
            assert await silent.closed(timeout=keepalive + 3) == b"", "a connection that never sends is closed too"
            assert time.monotonic() - started < keepalive + 3


async def test_graceful_stop_with_stalled_clients_finishes_within_the_grace_period(
        ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    grace = 1.0
    app = make_app(ns, redis_url, grace_period_s=grace, ingest_body_timeout_ms=60_000,
                   ingest_keepalive_timeout_ms=60_000)
    async with serving(app) as server:
        bodies = await asyncio.gather(*(stalled_body(server) for _ in range(20)))
        heads = await asyncio.gather(*(stalled_head(server) for _ in range(20)))
        idle = await asyncio.gather(*(idle_after_one_request(server) for _ in range(5)))
        lingering = await asyncio.gather(*(refused_with_body_pending(server) for _ in range(5)))
        async with opened(*bodies, *heads, *idle, *lingering) as raws:
            started = time.monotonic()
            await server.stop(timeout=grace + 10)
            took = time.monotonic() - started
            assert took < grace + 2.0, f"the stop took {took:.2f}s with a grace period of {grace}s"
            await asyncio.gather(*(raw.closed(timeout=2) for raw in raws))
    assert await xlen(redis, app, CardAdded) == 5


@pytest.mark.parametrize("setting", ["ingest_body_timeout_ms", "ingest_keepalive_timeout_ms",
                                     "ingest_max_header_bytes", "ingest_max_headers", "ingest_max_connections"])
def test_limits_of_zero_are_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        Settings(**{setting: 0})
