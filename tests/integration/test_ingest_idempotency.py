"""Idempotency-Key at the ingest, against a real server and Redis: a retried request appends nothing, the same key
with another body is refused (422) instead of being answered "duplicate" while its events are dropped, and keys are
scoped to the caller. Every check counts what the streams hold (XLEN)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis

from streamproc.http.auth import token_digest
from streamproc.http.problems import problem_type
from tests.ingestserver import (
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

OTHER_TOKEN = "another-secret"


def keyed(key: str, token: str = TOKEN) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {token}", "Idempotency-Key": key}


async def lengths(redis: aioredis.Redis, app: Any) -> tuple[int, int]:
    return await xlen(redis, app, CardAdded), await xlen(redis, app, UserFollowed)


async def test_identical_retry_answers_the_same_ids_as_duplicates_and_appends_nothing(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        batch = [card(1), follow(1), card(2, id="own-id")]
        status, first, _ = await post(client, server, batch, keyed("order-42"))
        assert status == 202, first
        assert [e["duplicate"] for e in first["events"]] == [False, False, False]
        assert first["events"][2]["id"] == "own-id", "an event's own id is kept"
        for _ in range(3):
            status, again, _ = await post(client, server, batch, keyed("order-42"))
            assert status == 202, again
            assert [(e["id"], e["stream_id"]) for e in again["events"]] == [
                (e["id"], e["stream_id"]) for e in first["events"]]
            assert all(e["duplicate"] for e in again["events"])
        assert await lengths(redis, app) == (2, 1)


async def test_same_key_with_another_body_is_422_and_appends_nothing(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        status, first, _ = await post(client, server, [card(1), card(2)], keyed("order-7"))
        assert status == 202, first
        assert await lengths(redis, app) == (2, 0)
        # Once, this answered 202 with "duplicate": true for both, and the new events were never appended.
        for other in ([card(1), card(3)], [card(1)], [follow(9)], card(1)):
            _, answer, resp = await post(client, server, other, keyed("order-7"))
            assert_problem(resp, answer, 422)
            assert answer["type"] == problem_type("idempotency-key-reused")
            assert "Idempotency-Key" in answer["detail"]
        # The same bytes as another content type are another body too.
        packed = msgspec.msgpack.encode([card(1), card(2)])
        as_msgpack = {**keyed("order-7"), "Content-Type": "application/msgpack"}
        _, answer, resp = await post(client, server, packed, as_msgpack)
        assert_problem(resp, answer, 422)
        assert await lengths(redis, app) == (2, 0)
        # The first body is still welcome under its key (a late retry), and a new key is a new request.
        status, again, _ = await post(client, server, [card(1), card(2)], keyed("order-7"))
        assert status == 202 and all(e["duplicate"] for e in again["events"])
        status, fresh, _ = await post(client, server, [card(1), card(3)], keyed("order-8"))
        assert status == 202 and not any(e["duplicate"] for e in fresh["events"])
        assert await lengths(redis, app) == (4, 0)


async def test_keys_are_scoped_to_the_caller(ns: str, redis_url: str, redis: aioredis.Redis,
                                              client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url, ingest_token_hashes=f"{token_digest(TOKEN)},{token_digest(OTHER_TOKEN)}")
    async with serving(app) as server:
        status, mine, _ = await post(client, server, [card(1)], keyed("k-1"))
        assert status == 202, mine
        # Another caller's request with the same key and the same body is its own request: appended, other ids.
        status, theirs, _ = await post(client, server, [card(1)], keyed("k-1", OTHER_TOKEN))
        assert status == 202, theirs
        assert theirs["events"][0]["duplicate"] is False
        assert theirs["events"][0]["id"] != mine["events"][0]["id"]
        # ... and with another body it is not a reuse of my key either.
        assert (await post(client, server, [card(5)], keyed("k-2", OTHER_TOKEN)))[0] == 202
        status, mine_again, _ = await post(client, server, [card(6)], keyed("k-2"))
        assert status == 202, mine_again
        assert await xlen(redis, app, CardAdded) == 4


async def test_the_key_is_remembered_for_the_dedup_window_in_the_namespace(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    window = 60_000
    app = make_app(ns, redis_url, dedup_window_ms=window, ingest_auth_disabled=True, ingest_token_hashes="")
    async with serving(app) as server:
        status, _, _ = await post(client, server, card(1), {**JSON, "Idempotency-Key": "{odd key}"})
        assert status == 202
        [record] = [k async for k in redis.scan_iter(match=f"{ns}:idem:*")]
        assert record.startswith(f"{ns}:idem:anonymous:".encode())
        assert b"{" not in record, "the key is hashed: no braces (a Cluster hash tag) from a header value"
        assert 0 < await redis.pttl(record) <= window


async def test_a_refused_body_does_not_bind_its_key(ns: str, redis_url: str, redis: aioredis.Redis,
                                                   client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        invalid = card(1, card_id=5)
        _, answer, resp = await post(client, server, invalid, keyed("fix-and-retry"))
        assert_problem(resp, answer, 422)
        assert answer["type"] == problem_type("invalid-events")
        status, fixed, _ = await post(client, server, card(1), keyed("fix-and-retry"))
        assert status == 202, fixed
        assert fixed["events"][0]["duplicate"] is False
        assert await xlen(redis, app, CardAdded) == 1


async def test_concurrent_identical_requests_append_each_event_once(
        ns: str, redis_url: str, redis: aioredis.Redis, client: aiohttp.ClientSession) -> None:
    app = make_app(ns, redis_url)
    async with serving(app) as server:
        batch = [card(i) for i in range(5)]
        results = await asyncio.gather(*(post(client, server, batch, keyed("burst")) for _ in range(10)))
        assert [status for status, _, _ in results] == [202] * 10
        ids = {tuple(e["id"] for e in answer["events"]) for _, answer, _ in results}
        assert len(ids) == 1, "every answer names the same events"
        appended = sum(not e["duplicate"] for _, answer, _ in results for e in answer["events"])
        assert appended == 5
        assert await xlen(redis, app, CardAdded) == 5
