"""Fuzzing POST /v1/events from the server's own /openapi.json with schemathesis: valid and invalid bodies, JSON
and msgpack, with and without credentials. No answer may be a 5xx, and every answer must match the contract
(documented status, content type and body schema)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Annotated, Any
from uuid import uuid4

import hypothesis
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode

from streamproc import App, Context, Event
from streamproc.http.ingest import serve_ingest
from tests.ingestserver import AUTH, ingest_app

MAX_EXAMPLES = 50


def _msgpack_safe(value: Any) -> Any:
    """msgpack has no integers beyond 64 bits: a client could only send such numbers as floats."""
    if isinstance(value, dict):
        return {k: _msgpack_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_msgpack_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    return msgspec.msgpack.encode(_msgpack_safe(value))


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str
    url: str
    title: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    position: int = 0


class CardRated(Event, tag="card.rated"):
    card_id: str
    stars: Annotated[int, msgspec.Meta(ge=1, le=5)]


class UserFollowed(Event, tag="user.followed"):
    partitions = 4
    partition_key = "follower_id"
    follower_id: str
    followee_id: str


async def noop(event: Event, ctx: Context) -> None:
    return None


@pytest.fixture
def base_url(ns: str, redis_url: str) -> Iterator[str]:
    """The ingest server on its own event loop in a thread, since schemathesis calls it synchronously."""
    app = ingest_app(ns, redis_url, backlog_check_ms=1_000)
    app.handler(CardAdded, group="feeds")(noop)
    app.handler(CardRated, group="feeds")(noop)
    app.register(UserFollowed)
    yield from _served(app)


def _served(app: App) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    bound: list[int] = []
    started = threading.Event()
    failure: list[BaseException] = []

    def on_started(port: int) -> None:
        bound.append(port)
        started.set()

    def run() -> None:
        try:
            loop.run_until_complete(serve_ingest(app, "127.0.0.1", 0, stopping, started=on_started))
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="ingest", daemon=True)
    thread.start()
    try:
        assert started.wait(10), "ingest did not start"
        assert not failure, failure
        yield f"http://127.0.0.1:{bound[0]}"
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        loop.close()
        assert not failure, failure


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_5xx_and_match_the_contract(base_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operation = schema["/v1/events"]["POST"]
    statuses: list[int] = []

    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        if case.headers and case.headers.get("Idempotency-Key"):
            # A key names one request, as for a real client: the same key with another body is refused (422).
            case.headers["Idempotency-Key"] = f"{uuid4().hex}-{case.headers['Idempotency-Key']}"
        response = case.call_and_validate(base_url=base_url, headers=AUTH)
        assert response.status_code < 500, response.text
        statuses.append(response.status_code)

    fuzz()
    assert len(statuses) >= MAX_EXAMPLES // 2, "the fuzzer sent requests"
    if mode == GenerationMode.POSITIVE:
        assert 202 in statuses, "valid bodies were accepted"
    else:
        assert set(statuses) - {202}, "invalid bodies were refused"


def test_every_operation_answers_as_its_declaration_says(base_url: str) -> None:
    """The probes, /metrics and /openapi.json, called without credentials (they are declared open), answer with a
    documented status, content type and body; /v1/events without credentials is a documented 401."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    called: dict[str, int] = {}
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        called[path] = schema[path]["GET"].Case().call_and_validate(base_url=base_url).status_code
    case = schema["/v1/events"]["POST"].Case(body={"type": "card.rated", "card_id": "c1", "stars": 3},
                                             media_type="application/json")
    called["/v1/events"] = case.call_and_validate(base_url=base_url).status_code
    assert called == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/openapi.json": 200, "/v1/events": 401}
