"""The ingest HTTP service (aiohttp): validates events and appends them, answering only once Redis has them.

    POST /v1/events    one event or an array (all or nothing); JSON or msgpack; 202 with event and stream ids
    GET  /healthz      the process is alive
    GET  /readyz       Redis answers and the app's consumer groups exist
    GET  /metrics      Prometheus: the text format, or OpenMetrics if Accept asks for it
    GET  /openapi.json the contract, generated from the registered event types

Every error is an RFC 9457 problem (application/problem+json; problems.py lists the types), aiohttp's own too:
a missing route or method in the middleware, what its HTTP parser refuses in ProblemRequestHandler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError

from ..app import App
from ..errors import BacklogFull, ConfigError, PublishError
from ..observe.metrics import Metrics, StreamStateCollector, endpoint_registry
from ..publish.coalesce import Coalescer
from ..publish.groups import ensure_app_groups
from ..publish.publisher import Prepared
from ..redis.server import check_server
from .auth import TokenCheck
from .intake import ANONYMOUS, FastIntake, RequestKey, decode_body, to_outgoing, with_request_ids
from .openapi import openapi_document
from .problems import Problem, status_phrase
from .tracing import server_span

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(problem: Problem) -> web.Response:
    return web.Response(status=problem.status, body=orjson.dumps(problem.body()), headers=problem.headers,
                        content_type="application/problem+json")


async def _answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send the answer now, then close the connection. After a handler returns, aiohttp would wait up to its
    lingering time (10 s) for the rest of an unread body before closing; a body that stalled is not coming."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


class Ingest:
    def __init__(self, app: App) -> None:
        self.app = app
        settings = app.settings
        if settings.ingest_auth_disabled:
            self.auth: TokenCheck | None = None
        else:
            self.auth = TokenCheck(settings.ingest_token_hashes)
            if not self.auth.digests:
                raise ConfigError("ingest needs bearer tokens: set STREAMPROC_INGEST_TOKEN_HASHES to SHA-256 digests "
                                  "(see `streamproc token-hash`), or turn auth off for local development only")
        if app.instruments.metrics is None:
            app.instruments.metrics = Metrics(CollectorRegistry())
        # Serve the registry the app's counters live in: when instrument() made them first (a metrics port in the
        # settings), that is the default registry, and serving only a private one lost every ingest request count.
        self.state = StreamStateCollector(app.topology, settings.redis_url)  # a sync client: closed by _drain
        self.scrape = endpoint_registry(app.topology, settings.redis_url, [app.instruments.metrics.registry],
                                        self.state)
        self.coalescer = Coalescer(app.publisher, settings.ingest_coalesce_max)
        self.openapi = orjson.dumps(openapi_document(app.topology, app.name, auth=self.auth is not None))
        self.fast = FastIntake(app.topology)
        self._status_metrics: dict[int, tuple[Counter, Histogram]] = {}
        self.ready = False

    def web_app(self) -> web.Application:
        wa = web.Application(client_max_size=self.app.settings.ingest_max_body_bytes,
                             middlewares=[self._observe])
        wa.router.add_post("/v1/events", self.post_events)
        wa.router.add_get("/healthz", self.healthz)
        wa.router.add_get("/readyz", self.readyz)
        wa.router.add_get("/metrics", self.metrics)
        wa.router.add_get("/openapi.json", self.openapi_json)
        wa.on_startup.append(self._start)
        # on_cleanup, not on_shutdown: aiohttp runs on_shutdown *before* it waits for in-flight handlers, so
        # closing the coalescer there cancelled an append in progress and those requests never got their 202.
        wa.on_cleanup.append(self._drain)
        return wa

    async def _start(self, _: web.Application) -> None:
        if self.auth is None:
            log.warning("INGEST AUTHENTICATION IS OFF: anyone who can reach this port can append events. "
                        "Use this for local development only.")
        await check_server(self.app.redis, self.app.settings, unreachable_ok=True)  # refuses an evicting Redis
        try:
            await self._ensure_groups()
        except Exception as exc:  # Redis not up yet: /readyz says so, and the first publish creates the groups
            log.warning("could not create consumer groups at start (%s); /readyz will report not ready", exc)

    async def _ensure_groups(self) -> None:
        await ensure_app_groups(self.app.redis, self.app.topology)
        self.ready = True

    async def _drain(self, _: web.Application) -> None:
        await self.coalescer.close()
        self.state.close()

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Problems as RFC 9457 responses, a SERVER span per request (parent of the publish spans) when tracing,
        and request metrics by status. One middleware: each one is a layer every request pays for."""
        started = time.perf_counter()
        status = 500
        try:
            tracer = self.app.instruments.tracing.tracer()
            if tracer is not None:
                response = await server_span(tracer, request, self._answer(request, handler))
            else:
                response = await self._answer(request, handler)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if self.app.instruments.metrics is not None:
                self._count(status, time.perf_counter() - started)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            response = problem_response(problem)
            if problem.close:
                await _answer_and_close(request, response)
            return response
        except web.HTTPRequestEntityTooLarge:
            return problem_response(Problem(413, "Payload Too Large", "the body is over the size limit of "
                                            f"{self.app.settings.ingest_max_body_bytes} bytes"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # not an error (aiohttp raises redirects too)
            return problem_response(http_problem(request, exc))

    def _count(self, status: int, seconds: float) -> None:
        children = self._status_metrics.get(status)
        if children is None:
            metrics = self.app.instruments.metrics
            assert metrics is not None
            label = str(status)
            children = self._status_metrics[status] = (metrics.ingest_requests.labels(label),
                                                       metrics.ingest_duration.labels(label))
        children[0].inc()
        children[1].observe(seconds)

    def _check_request(self, request: web.Request) -> str:
        """Check the credentials and the declared body size; return who is calling (see TokenCheck.caller)."""
        caller = ANONYMOUS if self.auth is None else self.auth.caller(request.headers.get("Authorization"))
        if caller is None:
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="streamproc"'})
        limit = self.app.settings.ingest_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Problem(413, "Payload Too Large", f"the body is over the size limit of {limit} bytes")
        return caller

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, or a 408 (and the connection closed) if it does not arrive in time: a client that sends
        headers and part of a body, then nothing, must not hold its connection and request for ever."""
        timeout = self.app.settings.ingest_body_timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except TimeoutError:
            raise Problem(408, "Request Timeout", f"the body did not arrive within {timeout:g} s", close=True,
                          ) from None

    async def post_events(self, request: web.Request) -> web.Response:
        caller = self._check_request(request)
        body = await self._read_body(request)
        key = request.headers.get("Idempotency-Key")
        request_key = RequestKey.of(caller, key, request.content_type, body) if key else None
        prepared = self._prepare(body, request.content_type, request_key)
        if request_key is not None:
            await self._bind(request_key, prepared)
        retry_after = {"Retry-After": str(self.app.settings.ingest_retry_after_s)}
        try:
            published = await self.coalescer.submit(prepared)
        except BacklogFull as exc:
            raise Problem(429, "Backlog Full", str(exc), headers=retry_after) from None
        except PublishError as exc:
            raise Problem(503, "Redis Unavailable", str(exc), headers=retry_after) from None
        events = [{"id": p.event_id, "stream": p.stream, "stream_id": p.stream_id, "duplicate": not p.appended}
                  for p in published]
        return web.Response(status=202, body=orjson.dumps({"events": events}), content_type="application/json")

    def _prepare(self, body: bytes, content_type: str, request_key: RequestKey | None) -> list[Prepared]:
        """Validated, encoded events: by the fast typed path when it accepts the body, else by the general path
        (which also reports every error)."""
        max_items = self.app.settings.ingest_max_batch
        fast = self.fast.outgoing(body, content_type, max_items)
        if fast is not None:
            try:
                return self.app.publisher.prepare(with_request_ids(fast, request_key))
            except (OverflowError, msgspec.EncodeError):
                pass  # e.g. an integer too wide for the stream encoding: the general path names the field
        items = decode_body(body, content_type)
        outgoing = to_outgoing(self.app.topology, items, request_key, max_items)
        return self.app.publisher.prepare(outgoing)

    async def _bind(self, key: RequestKey, prepared: list[Prepared]) -> None:
        """Remember which body an Idempotency-Key came with, for the dedup window, in one round trip (SET NX GET);
        refuse the key with another body (422, as the IETF Idempotency-Key draft says). An identical retry passes,
        and its events, whose ids derive from the same key and body, dedup to the ones already appended."""
        window = self.app.settings.dedup_window_ms
        try:
            seen = await self.app.redis.set(key.record(self.app.name), key.fingerprint, nx=True, get=True, px=window)
        except RedisError as exc:
            problem = Problem(503, "Redis Unavailable", f"Redis did not answer ({type(exc).__name__}: {exc})",
                              headers={"Retry-After": str(self.app.settings.ingest_retry_after_s)})
        else:
            if seen is None or seen == key.fingerprint.encode():
                return
            problem = Problem(422, "Idempotency Key Reused", "this Idempotency-Key came with a different body "
                              "before; send a new request with a new key (nothing was appended)")
        self.app.publisher.abandon(prepared, problem)
        raise problem

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2):
                await self.app.redis.ping()
                if not self.ready:
                    await self._ensure_groups()
        except Exception as exc:
            raise Problem(503, "Not Ready", str(exc) or type(exc).__name__,
                          headers={"Retry-After": str(self.app.settings.ingest_retry_after_s)}) from None
        return web.json_response({"status": "ready", "types": sorted(self.app.topology.by_tag)})

    async def metrics(self, request: web.Request) -> web.Response:
        """The text format, or OpenMetrics when the Accept header asks for it (as Prometheus does), chosen as
        prometheus_client's own HTTP server chooses, so the ingest and the workers answer alike."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.scrape)  # the state collector does blocking I/O
        response = web.Response(body=body, headers={"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"})
        response.enable_compression()  # if Accept-Encoding allows, as prometheus_client's server does (gzip)
        return response

    async def openapi_json(self, _: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


def http_problem(request: web.Request, exc: web.HTTPException) -> Problem:
    """aiohttp's own errors (no route, a method the route lacks, ...) as problems: type about:blank, as they mean
    nothing beyond their status, with their headers (Allow on a 405)."""
    if isinstance(exc, web.HTTPNotFound):
        detail = f"nothing is served at {request.path}; /openapi.json lists what is"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(sorted(exc.allowed_methods))}"
    else:
        detail = exc.text or status_phrase(exc.status)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return Problem(exc.status, status_phrase(exc.status), detail, headers=headers)


_REFUSAL_LINGER_S = 1.0  # how long a refused connection may take to read its 503 and close


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, whose own error answers are problems too. A request line or header its parser
    refuses (400) is answered before any middleware runs, as are errors that escape the handlers (500, or 504 for
    a TimeoutError): all by RequestHandler.handle_error, in text/plain or HTML. aiohttp has no hook for those
    (aio-libs/aiohttp#3287 is open); overriding that public method of its exported protocol class is the one way,
    and it keeps aiohttp's logging and its refusal to answer twice."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if an answer has started already
        if status == 500:
            detail = "the server failed to handle the request; its log says why"
        elif status == 504:
            detail = "handling the request took too long"
        else:
            detail = message or status_phrase(status)  # the parser's reason: "Got more than 8190 bytes ..."
        response = problem_response(Problem(status, status_phrase(status), detail))
        response.force_close()
        return response


class ConnectionGate:
    """The ingest's protocol factory: each connection goes to aiohttp (a ProblemRequestHandler from `protocol`)
    while fewer than `limit` are open, and is answered 503 (and closed) otherwise. aiohttp has no connection limit
    (it leaves that to the application); counting in connection_made and connection_lost, which asyncio calls once
    each per connection, is exact."""

    def __init__(self, protocol: Callable[[], web.RequestHandler], limit: int, retry_after_s: int) -> None:
        self.protocol = protocol
        self.limit = limit
        self.open = 0
        body = orjson.dumps(Problem(503, "Too Many Connections", f"the server is at its limit of {limit} "
                                    "connections; retry after Retry-After seconds").body())
        self.refusal = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
                        f"Content-Length: {len(body)}\r\nRetry-After: {retry_after_s}\r\nConnection: close\r\n"
                        "\r\n").encode() + body

    def __call__(self) -> asyncio.Protocol:
        return _GatedConnection(self)


class _GatedConnection(asyncio.Protocol):
    """One connection: aiohttp's protocol, counted, or (over the limit) a refusal that writes its 503, then reads
    and drops what the client sends until it closes or a second passes, so the client reads the answer rather than
    a reset."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._inner: web.RequestHandler | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate.open < gate.limit:
            gate.open += 1
            self._inner = gate.protocol()
            self._inner.connection_made(transport)
            return
        stream = cast(asyncio.Transport, transport)
        stream.write(gate.refusal)
        if stream.can_write_eof():
            stream.write_eof()
        self._linger = asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, stream.abort)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None  # close (aiohttp's answer too)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.open -= 1
            self._inner.connection_lost(exc)
        elif self._linger is not None:
            self._linger.cancel()


async def serve_ingest(app: App, host: str, port: int, stopping: asyncio.Event,
                       started: Callable[[int], None] | None = None) -> None:
    """Serve until `stopping` is set, then stop accepting, finish in-flight requests and flush appends. Whatever the
    clients do, the stop takes grace_period_s at most (aiohttp rounds a timeout over 5 s up to a whole second), plus
    the deadline of an append still on its way: idle and half-sent requests are closed at once, and handlers still
    running after the grace period (a request waiting for its body among them) are cancelled."""
    ingest = Ingest(app)
    settings = app.settings
    protocol_options: dict[str, Any] = {  # what aiohttp's Server would give each RequestHandler it makes
        "access_log": None, "keepalive_timeout": settings.ingest_keepalive_timeout_ms / 1000,
        "max_line_size": settings.ingest_max_header_bytes, "max_field_size": settings.ingest_max_header_bytes,
        "max_headers": settings.ingest_max_headers}
    runner = web.AppRunner(ingest.web_app(), shutdown_timeout=settings.grace_period_s, **protocol_options)
    await runner.setup()
    server, loop = runner.server, asyncio.get_running_loop()
    assert server is not None
    gate = ConnectionGate(lambda: ProblemRequestHandler(server, loop=loop, **protocol_options),
                          settings.ingest_max_connections, settings.ingest_retry_after_s)
    try:
        listener = await loop.create_server(gate, host, port, backlog=128)  # as TCPSite's
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(listener.sockets[0].getsockname()[1])
    log.info("ingest listening on http://%s:%s", host, bound)
    if started is not None:
        started(bound)
    try:
        await stopping.wait()
    finally:
        listener.close()
        await runner.cleanup()
        await app.aclose()
    log.info("ingest stopped cleanly")
