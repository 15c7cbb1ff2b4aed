"""The ingest HTTP service against a real aiohttp server on a loopback port, a real client and a real Redis:
what gets appended, every way a request is refused (and that a refusal appends nothing), auth, backpressure,
idempotency, the contract document, request coalescing and graceful stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from streamproc import ConfigError
from streamproc.publish.publisher import Prepared, Published
from tests.ingestserver import (
    AUTH,
    JSON,
    TOKEN,
    CardAdded,
    UserFollowed,
    assert_problem,
    card,
    follow,
    make_app,
    post,
    serving,
    xlen,
)
from tests.inproc import partition


async def test_single_event_is_in_the_stream_when_answered(ns: str, redis_url: str, redis: aioredis.Redis,
                                                           client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        status, answer, resp = await post(client, server, card(1, title="A page"))
        assert status == 202, answer
        assert resp.content_type == "application/json"
        [accepted] = answer["events"]
        assert len(accepted["id"]) == 32
        assert accepted["stream"] == partition(app, CardAdded).stream == f"{ns}:ev:{{card.added:0}}"
        assert accepted["duplicate"] is False
        # No wait: the 202 comes only after Redis has the entry.
        [(stream_id, fields)] = await redis.xrange(accepted["stream"])
        assert stream_id.decode() == accepted["stream_id"]
        assert fields[b"event_id"].decode() == accepted["id"]
        assert fields[b"type"] == b"card.added"
        assert msgspec.msgpack.decode(fields[b"data"], type=CardAdded) == CardAdded(
            card_id="c1", curator_id="u1", url="https://example.com/1", title="A page")


async def test_batch_appends_every_event_in_order(ns: str, redis_url: str, redis: aioredis.Redis,
                                                  client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        status, answer, _ = await post(client, server, [card(1), follow(1), card(2)])
        assert status == 202, answer
        ids = [e["id"] for e in answer["events"]]
        assert len(set(ids)) == 3
        assert [e["stream"] for e in answer["events"]] == [partition(app, t).stream
                                                           for t in (CardAdded, UserFollowed, CardAdded)]
        cards = await redis.xrange(partition(app, CardAdded).stream)
        assert [f[b"event_id"].decode() for _, f in cards] == [ids[0], ids[2]]
        assert await xlen(redis, app, UserFollowed) == 1


async def test_msgpack_body(ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        body = msgspec.msgpack.encode([card(1, id="mp-1"), card(2)])
        status, answer, _ = await post(client, server, body, {**AUTH, "Content-Type": "application/msgpack"})
        assert status == 202, answer
        assert answer["events"][0]["id"] == "mp-1"
        entries = await redis.xrange(partition(app, CardAdded).stream)
        assert [msgspec.msgpack.decode(f[b"data"], type=CardAdded).card_id for _, f in entries] == ["c1", "c2"]


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"type": "card.added", ', "application/json"),
    (b"\xff\xfe not json", "application/json"),
    (b"\xc1", "application/msgpack"),  # 0xc1 is never used in msgpack
    (b"", "application/json"),
])
async def test_malformed_body_is_400(ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession,
                                     body: bytes, content_type: str) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        _, answer, resp = await post(client, server, body, {**AUTH, "Content-Type": content_type})
        assert_problem(resp, answer, 400)
        assert content_type in answer["detail"]
        assert await xlen(redis, app, CardAdded) == 0


async def test_schema_violation_is_422_naming_path_and_expectation(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                   client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        without_url = card(3)
        del without_url["url"]
        _, answer, resp = await post(client, server, [card(0), card(1, card_id=5), without_url])
        assert_problem(resp, answer, 422)
        assert "2 of 3" in answer["detail"]
        [wrong_type, missing] = answer["errors"]
        assert wrong_type["index"] == 1
        assert wrong_type["path"] == "$[1].card_id"
        assert wrong_type["pointer"] == "/1/card_id"
        assert wrong_type["message"] == "Expected `str`, got `int`"
        assert missing["index"] == 2
        assert missing["path"] == "$[2]"
        assert missing["pointer"] == "/2"  # the object the field is missing from
        assert "missing required field `url`" in missing["message"]

        _, answer, resp = await post(client, server, card(1, title=["not", "a", "string"]))
        assert_problem(resp, answer, 422)
        assert answer["errors"] == [{"index": 0, "path": "$[0].title", "pointer": "/0/title",
                                     "message": "Expected `str | null`, got `array`"}]
        assert await xlen(redis, app, CardAdded) == 0


async def test_numbers_as_json_means_them(ns: str, redis_url: str, redis: aioredis.Redis,
                                          client: aiohttp.ClientSession) -> None:
    """2.0 is the integer 2 in JSON (and JSON Schema); integers beyond 64 bits, which the stream's msgpack cannot
    carry, are a 422 naming the field (they were a 500), and the contract states the range."""
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        status, answer, _ = await post(client, server, card(1, position=7.0))
        assert status == 202, answer
        [(_, fields)] = await redis.xrange(partition(app, CardAdded).stream)
        assert msgspec.msgpack.decode(fields[b"data"], type=CardAdded).position == 7

        for position, message in ((7.5, "Expected `int`, got `float`"), (2**64, "integers must be between"),
                                  (-(2**63) - 1, "integers must be between")):
            status, answer, resp = await post(client, server, [card(2), card(3, position=position)])
            assert_problem(resp, answer, 422)
            [error] = answer["errors"]
            assert error["path"] == "$[1].position"
            assert error["message"].startswith(message)
        status, answer, resp = await post(client, server, card(4, position=1e300))  # integral, but too wide
        assert_problem(resp, answer, 422)
        assert answer["errors"][0]["path"] == "$[0].position"
        # An unknown field is dropped, whatever its value.
        assert (await post(client, server, card(5, extra={"deep": [1, 2**70]})))[0] == 202
        assert (await post(client, server, card(6, position=2**64 - 1)))[0] == 202
        assert await xlen(redis, app, CardAdded) == 3

        async with client.get(f"{server.url}/openapi.json") as resp:
            position_schema = (await resp.json())["components"]["schemas"]["CardAdded"]["properties"]["position"]
        assert position_schema == {"type": "integer", "default": 0, "minimum": -(2**63), "maximum": 2**64 - 1}


async def test_unknown_or_missing_type_is_422_listing_known_types(ns: str, redis_url: str,
                                                                  client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        for item in ({"type": "card.exploded", "card_id": "c1"}, {"card_id": "c1"}, "just a string"):
            _, answer, resp = await post(client, server, [card(1), item])
            assert_problem(resp, answer, 422)
            [error] = answer["errors"]
            assert error["index"] == 1
            if isinstance(item, dict):
                assert error["path"] == "$[1].type"
                assert "known types: card.added, user.followed" in error["message"]
            else:
                assert error["message"] == "each event must be an object"


async def test_event_id_that_would_break_key_layout_is_422(ns: str, redis_url: str, redis: aioredis.Redis,
                                                            client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        before = await xlen(redis, app, CardAdded)
        for bad in ("a{b}", "has space", "x" * 201):
            _, answer, resp = await post(client, server, [{**card(1), "id": bad}])
            assert_problem(resp, answer, 422)
            assert answer["errors"][0]["path"] == "$[0].id"
        assert await xlen(redis, app, CardAdded) == before


async def test_batch_with_one_bad_item_appends_nothing(ns: str, redis_url: str, redis: aioredis.Redis,
                                                       client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        assert (await post(client, server, [card(1), follow(1)]))[0] == 202
        before = (await xlen(redis, app, CardAdded), await xlen(redis, app, UserFollowed))
        batch = [card(i) for i in range(2, 40)] + [follow(2)]
        batch[25] = card(25, curator_id=None)
        _, answer, resp = await post(client, server, batch)
        assert_problem(resp, answer, 422)
        assert [e["path"] for e in answer["errors"]] == ["$[25].curator_id"]
        assert "none was appended" in answer["detail"]
        assert (await xlen(redis, app, CardAdded), await xlen(redis, app, UserFollowed)) == before


async def test_too_many_events_in_one_request_is_413(ns: str, redis_url: str, redis: aioredis.Redis,
                                                     client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_max_batch=5)
    async with serving(app) as server:
        _, answer, resp = await post(client, server, [card(i) for i in range(6)])
        assert_problem(resp, answer, 413)
        assert "limit is 5" in answer["detail"]
        assert await xlen(redis, app, CardAdded) == 0


async def test_body_over_limit_with_content_length_is_413(ns: str, redis_url: str, redis: aioredis.Redis,
                                                          client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_max_body_bytes=1024)
    async with serving(app) as server:
        big = [card(i, title="x" * 100) for i in range(20)]
        _, answer, resp = await post(client, server, big)
        assert_problem(resp, answer, 413)
        assert "1024 bytes" in answer["detail"]
        # Refused on the header alone: announce 100 MB, send 10 bytes, and the answer comes anyway.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000000\r\n\r\n".encode() + b"[" * 10)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        assert await xlen(redis, app, CardAdded) == 0


async def test_chunked_body_over_limit_is_413_before_it_is_all_sent(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                    client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_max_body_bytes=1024)
    chunks = 0

    async def body() -> AsyncIterator[bytes]:  # 12.8 MB in 64 KiB chunks, no Content-Length
        nonlocal chunks
        for _ in range(200):
            chunks += 1
            yield b" " * 65536
            await asyncio.sleep(0)

    async with serving(app) as server, client.post(server.events_url, data=body(), headers=JSON) as resp:
        answer = await resp.json(content_type=None)
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert_problem(resp, answer, 413)
    assert chunks < 10, f"the server read {chunks} chunks of a body it had to refuse after 1 KiB"
    assert await xlen(redis, app, CardAdded) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_wrong_content_type_is_415(ns: str, redis_url: str, client: aiohttp.ClientSession,
                                         content_type: str) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        headers = {**AUTH, "Content-Type": content_type} if content_type else AUTH
        _, answer, resp = await post(client, server, msgspec.json.encode(card(1)), headers)
        assert_problem(resp, answer, 415)
        assert "application/msgpack" in answer["detail"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"bearer {TOKEN}", "Bearer "])
async def test_missing_or_invalid_bearer_is_401(ns: str, redis_url: str, redis: aioredis.Redis,
                                                client: aiohttp.ClientSession, authorization: str | None) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        _, answer, resp = await post(client, server, card(1), headers)
        assert_problem(resp, answer, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert await xlen(redis, app, CardAdded) == 0
        assert (await post(client, server, card(1)))[0] == 202, "the configured token is accepted"


async def test_any_configured_token_is_accepted(ns: str, redis_url: str, client: aiohttp.ClientSession) -> None:
    from streamproc.http.auth import token_digest

    app = make_app(ns, redis_url, ingest_token_hashes=f"{token_digest('old')}, {token_digest('new')}")
    async with serving(app) as server:
        for token, expected in (("old", 202), ("new", 202), (TOKEN, 401)):
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            assert (await post(client, server, card(1), headers))[0] == expected, token


async def test_no_tokens_configured_refuses_to_start(ns: str, redis_url: str) -> None:
    app = make_app(ns, redis_url, ingest_token_hashes="")
    with pytest.raises(ConfigError, match="bearer tokens"):
        async with serving(app):
            pass
    await app.aclose()


async def test_auth_disabled_accepts_anyone_and_warns_loudly(ns: str, redis_url: str, client: aiohttp.ClientSession,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(ns, redis_url, ingest_auth_disabled=True, ingest_token_hashes="")
    with caplog.at_level(logging.WARNING, logger="streamproc.http.ingest"):
        async with serving(app) as server:
            status, _, _ = await post(client, server, card(1), {"Content-Type": "application/json"})
            assert status == 202
    [warning] = [r for r in caplog.records if "AUTHENTICATION IS OFF" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "local development only" in warning.getMessage()


async def test_backlog_over_limit_is_429_with_retry_after(ns: str, redis_url: str, redis: aioredis.Redis,
                                                          client: aiohttp.ClientSession) -> None:
    # No worker runs: every card.added stays unread by group "feeds".
    app = make_app(ns, redis_url, max_backlog=3, backlog_check_ms=0, ingest_retry_after_s=7)
    async with serving(app) as server:
        for i in range(3):
            assert (await post(client, server, card(i)))[0] == 202
        _, answer, resp = await post(client, server, [card(9), follow(9)])
        assert_problem(resp, answer, 429)
        assert resp.headers["Retry-After"] == "7"
        assert "backlog" in answer["detail"]
        assert await xlen(redis, app, CardAdded) == 3
        assert await xlen(redis, app, UserFollowed) == 0, "the refused batch appended nothing at all"
        # Another stream is not held back by the full one.
        assert (await post(client, server, follow(1)))[0] == 202
        # Once the group catches up, requests are accepted again.
        stream = partition(app, CardAdded).stream
        for entry_id, _ in (await redis.xreadgroup("feeds", "c", {stream: ">"}))[0][1]:
            await redis.xack(stream, "feeds", entry_id)
        assert (await post(client, server, card(9)))[0] == 202




async def test_idempotency_key_makes_a_retried_request_append_nothing(ns: str, redis_url: str,
                                                                      redis: aioredis.Redis,
                                                                      client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        batch = [card(1), follow(1), card(2)]
        headers = {**JSON, "Idempotency-Key": "order-42"}
        status, first, _ = await post(client, server, batch, headers)
        assert status == 202
        assert not any(e["duplicate"] for e in first["events"])
        lengths = (await xlen(redis, app, CardAdded), await xlen(redis, app, UserFollowed))
        status, second, _ = await post(client, server, batch, headers)
        assert status == 202
        assert [e["id"] for e in second["events"]] == [e["id"] for e in first["events"]]
        assert [e["stream_id"] for e in second["events"]] == [e["stream_id"] for e in first["events"]]
        assert all(e["duplicate"] for e in second["events"])
        assert (await xlen(redis, app, CardAdded), await xlen(redis, app, UserFollowed)) == lengths == (2, 1)
        # Another key is another request.
        status, third, _ = await post(client, server, batch, {**JSON, "Idempotency-Key": "order-43"})
        assert not any(e["duplicate"] for e in third["events"])
        assert await xlen(redis, app, CardAdded) == 4


async def test_events_own_ids_deduplicate(ns: str, redis_url: str, redis: aioredis.Redis,
                                          client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        _, first, _ = await post(client, server, [card(1, id="evt-1"), card(2, id="evt-2")])
        assert [(e["id"], e["duplicate"]) for e in first["events"]] == [("evt-1", False), ("evt-2", False)]
        # A retry that overlaps: evt-2 again, plus a new one; the same id twice in one request appends once.
        _, second, _ = await post(client, server, [card(2, id="evt-2"), card(3, id="evt-3"), card(3, id="evt-3")])
        assert [(e["id"], e["duplicate"]) for e in second["events"]] == [
            ("evt-2", True), ("evt-3", False), ("evt-3", True)]
        assert second["events"][0]["stream_id"] == first["events"][1]["stream_id"]
        entries = await redis.xrange(partition(app, CardAdded).stream)
        assert [f[b"event_id"] for _, f in entries] == [b"evt-1", b"evt-2", b"evt-3"]
        for bad_id in ("", "x" * 201, 17):
            _, answer, resp = await post(client, server, card(4, id=bad_id))
            assert_problem(resp, answer, 422)
            assert answer["errors"][0]["path"] == "$[0].id"


async def test_health_readiness_and_contract(ns: str, redis_url: str, redis: aioredis.Redis,
                                             client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        async with client.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        async with client.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["types"] == ["card.added", "user.followed"]
        # Ready means the groups exist, before any event was posted.
        groups = await redis.xinfo_groups(partition(app, CardAdded).stream)
        assert [g["name"] for g in groups] == [b"feeds"]
        async with client.get(f"{server.url}/openapi.json") as resp:
            assert resp.status == 200
            doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    assert {"CardAdded", "UserFollowed"} <= set(schemas)
    assert schemas["CardAdded"]["required"] == ["type", "card_id", "curator_id", "url"]
    assert schemas["CardAdded"]["properties"]["type"] == {"enum": ["card.added"]}
    assert schemas["AnyEvent"]["discriminator"]["mapping"] == {
        "card.added": "#/components/schemas/CardAdded", "user.followed": "#/components/schemas/UserFollowed"}
    post_op = doc["paths"]["/v1/events"]["post"]
    assert set(post_op["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    assert {"202", "400", "401", "413", "415", "422", "429", "503"} <= set(post_op["responses"])


async def _exec_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_concurrent_requests_share_redis_round_trips(ns: str, redis_url: str, redis: aioredis.Redis,
                                                           client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, backlog_check_ms=1_000)
    sends: list[int] = []
    publisher = app.publisher
    real_send = publisher.send

    async def counting_send(prepared: list[Prepared], atomic: bool = False) -> list[Published]:
        sends.append(len(prepared))
        return await real_send(prepared, atomic)

    publisher.send = counting_send  # type: ignore[method-assign]
    async with serving(app) as server:
        assert (await post(client, server, card(0)))[0] == 202  # warm up: groups exist, a connection is open
        sends.clear()
        execs_before = await _exec_calls(redis)
        results = await asyncio.gather(*(post(client, server, card(i)) for i in range(1, 201)))
        execs = await _exec_calls(redis) - execs_before
    assert [status for status, _, _ in results] == [202] * 200
    assert len({answer["events"][0]["id"] for _, answer, _ in results}) == 200
    assert await xlen(redis, app, CardAdded) == 201
    assert sum(sends) == 200
    # One MULTI/EXEC per coalesced append; far fewer than one per request.
    assert execs == len(sends) <= 50, sends


async def test_graceful_stop_finishes_in_flight_requests(ns: str, redis_url: str, redis: aioredis.Redis,
                                                         client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    publisher = app.publisher
    real_send = publisher.send
    sending = asyncio.Event()

    async def slow_send(prepared: list[Prepared], atomic: bool = False) -> list[Published]:
        sending.set()
        await asyncio.sleep(0.3)  # the stop arrives while this append is on its way
        return await real_send(prepared, atomic)

    publisher.send = slow_send  # type: ignore[method-assign]
    async with serving(app) as server:
        in_flight = [asyncio.create_task(post(client, server, card(i))) for i in range(20)]
        await asyncio.wait_for(sending.wait(), 5)
        await asyncio.sleep(0.05)  # the rest of the requests are queued behind the first append
        stopped = asyncio.create_task(server.stop())
        results = await asyncio.gather(*in_flight)
        await stopped
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(client, server, card(99))
    assert [status for status, _, _ in results] == [202] * 20
    assert await xlen(redis, app, CardAdded) == 20
