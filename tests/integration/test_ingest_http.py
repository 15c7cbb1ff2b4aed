"""The ingest's HTTP conventions against a real server, client and Redis: every error is an RFC 9457 problem (aiohttp's
own 404 and 405, a request its HTTP parser refuses, a handler that fails, /readyz when Redis is down), per-item
errors point into the body with JSON Pointers, and the OpenAPI document declares security per operation,
Retry-After, every path and the package version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from streamproc import Event
from streamproc.http.ingest import ConnectionGate, ProblemRequestHandler
from streamproc.version import __version__
from tests.ingestserver import AUTH, JSON, PROBLEM, card, ingest_app, make_app, post, serving
from tests.redis_server import RedisServer


async def problem_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The response's problem document, checked for what every problem has."""
    assert resp.status == status
    assert resp.content_type == PROBLEM
    problem: dict[str, Any] = msgspec.json.decode(await resp.read())
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem


async def test_unknown_paths_and_methods_are_problems(ns: str, redis_url: str, client: aiohttp.ClientSession) -> None:
    async with serving(make_app(ns, redis_url)) as server:
        for path in ("/nope", "/v1/events/x"):
            async with client.get(server.url + path) as resp:
                problem = await problem_of(resp, 404)
            assert (problem["type"], problem["title"]) == ("about:blank", "Not Found")
            assert path in problem["detail"]
        for method, path, allowed in (("PUT", "/v1/events", "POST"), ("GET", "/v1/events", "POST"),
                                      ("DELETE", "/healthz", "GET,HEAD"), ("POST", "/metrics", "GET,HEAD")):
            async with client.request(method, server.url + path, headers=AUTH) as resp:
                problem = await problem_of(resp, 405)
                assert sorted(resp.headers["Allow"].split(",")) == allowed.split(","), (method, path)
            assert (problem["type"], problem["title"]) == ("about:blank", "Method Not Allowed")
            assert method in problem["detail"]
        async with client.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    # Counted by status like any other request.
    assert 'streamproc_ingest_requests_total{status="404"} 2.0' in text
    assert 'streamproc_ingest_requests_total{status="405"} 4.0' in text


async def test_requests_the_http_parser_refuses_are_problems(ns: str, redis_url: str) -> None:
    async with serving(make_app(ns, redis_url)) as server:
        for head in (b"NOT-HTTP\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                     b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(head)
                async with asyncio.timeout(5):
                    answer = await reader.read()  # all of it: the server closes the connection after a 400
            finally:
                writer.close()
            status_line, _, rest = answer.partition(b"\r\n")
            headers, _, body = rest.partition(b"\r\n\r\n")
            assert status_line.split()[1] == b"400", answer
            assert b"content-type: application/problem+json" in headers.lower(), answer
            problem = msgspec.json.decode(body)
            assert (problem["type"], problem["title"], problem["status"]) == ("about:blank", "Bad Request", 400)


async def fails(request: web.Request) -> web.Response:
    raise RuntimeError("internal detail that must not reach the client")


@pytest.fixture
async def failing_server() -> AsyncIterator[str]:
    """A bare aiohttp app whose handler raises, behind the ingest's connection gate and protocol (the ingest itself
    has no handler that fails on purpose)."""
    wa = web.Application()
    wa.router.add_get("/fails", fails)
    runner = web.AppRunner(wa, access_log=None)
    await runner.setup()
    server, loop = runner.server, asyncio.get_running_loop()
    assert server is not None
    gate = ConnectionGate(lambda: ProblemRequestHandler(server, loop=loop), limit=10, retry_after_s=1)
    listener = await loop.create_server(gate, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    finally:
        listener.close()
        await runner.cleanup()


async def test_a_failing_handler_is_a_500_problem_without_its_internals(failing_server: str,
                                                                       client: aiohttp.ClientSession) -> None:
    for accept in ("application/json", "text/html"):  # aiohttp would answer HTML to the second
        async with client.get(f"{failing_server}/fails", headers={"Accept": accept}) as resp:
            problem = await problem_of(resp, 500)
        assert (problem["type"], problem["title"]) == ("about:blank", "Internal Server Error")
        assert "internal detail" not in problem["detail"]


class Tagged(Event, tag="tagged"):
    name: str
    tags: list[str] = msgspec.field(default_factory=list)
    counts: dict[str, int] = msgspec.field(default_factory=dict)


def resolve(document: Any, pointer: str) -> Any:
    """RFC 6901: the value a JSON Pointer names ("~1" is "/" and "~0" is "~", unescaped in that order)."""
    for token in pointer.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        document = document[int(key)] if isinstance(document, list) else document[key]
    return document


async def test_batch_errors_point_at_each_field(ns: str, redis_url: str, client: aiohttp.ClientSession) -> None:
    app = ingest_app(ns, redis_url)
    app.register(Tagged)
    body: list[Any] = [
        {"type": "tagged", "name": "fine"},
        {"type": "tagged", "name": "n", "tags": ["a", 2]},
        {"type": "tagged", "name": "n", "counts": {"a/b~c": 2**70}},  # a key that needs escaping
        {"type": "nope"},
        5,
        {"type": "tagged"},
        {"type": "tagged", "name": "n", "counts": {"k": "not an int"}},
        {"type": "tagged", "name": "n", "id": "spaces are not allowed"},
    ]
    async with serving(app) as server:
        status, answer, resp = await post(client, server, body)
    assert (status, resp.content_type, answer["title"]) == (422, PROBLEM, "Invalid Events")
    errors = {e["index"]: (e["path"], e["pointer"]) for e in answer["errors"]}
    assert errors == {
        1: ("$[1].tags[1]", "/1/tags/1"),
        2: ("$[2].counts.a/b~c", "/2/counts/a~1b~0c"),
        3: ("$[3].type", "/3/type"),
        4: ("$[4]", "/4"),
        5: ("$[5]", "/5"),  # a missing field: the object that lacks it
        6: ("$[6].counts[...]", "/6/counts"),  # msgspec does not name a map's key: the map
        7: ("$[7].id", "/7/id"),
    }
    assert len(answer["errors"]) == 7
    # Each pointer names a value of the body that was sent.
    assert [resolve(body, pointer) for _, pointer in errors.values()] == [
        2, 2**70, "nope", 5, {"type": "tagged"}, {"k": "not an int"}, "spaces are not allowed"]


async def test_readyz_is_a_503_problem_with_retry_after_while_redis_is_down(
        ns: str, fresh_redis: RedisServer, client: aiohttp.ClientSession) -> None:
    app = make_app(ns, fresh_redis.url, ingest_retry_after_s=7)
    async with serving(app) as server:
        async with client.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
        fresh_redis.stop()
        async with client.get(f"{server.url}/readyz") as resp:
            problem = await problem_of(resp, 503)
            assert resp.headers["Retry-After"] == "7"
        assert problem["title"] == "Not Ready"
        fresh_redis.start()


async def openapi(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(f"{url}/openapi.json") as resp:
        assert resp.status == 200
        document: dict[str, Any] = await resp.json()
        return document


def responses(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, status, response) for path, item in document["paths"].items() for operation in item.values()
            for status, response in operation["responses"].items()]


async def test_openapi_declares_security_retry_after_paths_and_version(ns: str, redis_url: str,
                                                                       client: aiohttp.ClientSession) -> None:
    async with serving(make_app(ns, redis_url)) as server:
        document = await openapi(client, server.url)
    assert document["info"]["version"] == __version__
    assert set(document["paths"]) == {"/v1/events", "/healthz", "/readyz", "/metrics", "/openapi.json"}
    assert "security" not in document, "per operation, not for the whole API"
    security = {path: op["security"] for path, item in document["paths"].items() for op in item.values()}
    assert security == {"/v1/events": [{"bearer": []}], "/healthz": [], "/readyz": [], "/metrics": [],
                        "/openapi.json": []}
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    retry_after = {"$ref": "#/components/headers/RetryAfter"}
    assert document["components"]["headers"]["RetryAfter"]["schema"] == {"type": "integer", "minimum": 0}
    errors = [(path, status, r) for path, status, r in responses(document) if int(status) >= 400]
    assert len(errors) == 8 + 4 + 5 * 2  # every error of /v1/events, the 503 of the four others, 405 and 500 of all
    assert {status for _, status, _ in errors if status in ("405", "500")} == {"405", "500"}
    for path, status, response in errors:
        assert ("Allow" in response.get("headers", {})) == (status == "405"), (path, status)
    assert document["components"]["headers"]["Allow"]["schema"] == {"type": "string"}
    not_found = document["components"]["responses"]["NotFound"]
    assert not_found["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, status, response in errors:
        assert response["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        has_retry_after = response.get("headers", {}).get("Retry-After") == retry_after
        assert has_retry_after == (status in ("429", "503")), (path, status)
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain", "application/openmetrics-text"}
    assert "pointer" in document["components"]["schemas"]["Problem"]["properties"]["errors"]["items"]["required"]


async def test_openapi_without_auth_declares_no_security(ns: str, redis_url: str,
                                                         client: aiohttp.ClientSession) -> None:
    async with serving(make_app(ns, redis_url, ingest_auth_disabled=True)) as server:
        document = await openapi(client, server.url)
        status, _, _ = await post(client, server, card(1), {"Content-Type": JSON["Content-Type"]})
        assert status == 202
    post_events = document["paths"]["/v1/events"]["post"]
    assert post_events["security"] == []
    assert "401" not in post_events["responses"]
    assert "securitySchemes" not in document["components"]
