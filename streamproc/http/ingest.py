"""The ingest HTTP service (aiohttp): validates events and appends them, answering only once Redis has them.

    POST /v1/events    one event or an array (all or nothing); JSON or msgpack; 202 with event and stream ids
    GET  /healthz      the process is alive
    GET  /readyz       Redis answers and the app's consumer groups exist
    GET  /metrics      Prometheus
    GET  /openapi.json the contract, generated from the registered event types
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ..app import App
from ..errors import BacklogFull, ConfigError, PublishError
from ..observe.metrics import Metrics, StreamStateCollector
from ..publish.coalesce import Coalescer
from ..publish.groups import ensure_groups
from ..publish.publisher import Prepared
from ..redis.server import check_server
from .auth import TokenCheck
from .intake import FastIntake, Problem, decode_body, to_outgoing, with_request_ids
from .openapi import openapi_document

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_propagator = TraceContextTextMapPropagator()


def problem_response(problem: Problem) -> web.Response:
    return web.Response(status=problem.status, body=orjson.dumps(problem.body()), headers=problem.headers,
                        content_type="application/problem+json")


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
        state = CollectorRegistry()
        state.register(StreamStateCollector(app.topology, settings.redis_url))
        # Serve the registry the app's counters live in: when instrument() made them first (a metrics port in the
        # settings), that is the default registry, and serving only a private one lost every ingest request count.
        self.registries = [app.instruments.metrics.registry, state]
        self.coalescer = Coalescer(app.publisher, settings.ingest_coalesce_max)
        self.openapi = orjson.dumps(openapi_document(app.topology, app.name))
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
        wanted = [(keys.stream, g, start) for route in self.app.topology.by_tag.values()
                  for keys in route.partitions for g, start in route.groups.items()]
        await ensure_groups(self.app.redis, wanted)
        self.ready = True

    async def _drain(self, _: web.Application) -> None:
        await self.coalescer.close()

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Problems as RFC 9457 responses, a SERVER span per request (parent of the publish spans) when tracing,
        and request metrics by status. One middleware: each one is a layer every request pays for."""
        started = time.perf_counter()
        status = 500
        try:
            if self.app.instruments.tracing.enabled:
                response = await self._traced(request, handler)
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
            return problem_response(problem)
        except web.HTTPRequestEntityTooLarge:
            return problem_response(Problem(413, "Payload Too Large", "the body is over the size limit of "
                                            f"{self.app.settings.ingest_max_body_bytes} bytes"))

    async def _traced(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        parent = _propagator.extract(dict(request.headers))
        tracer = self.app.instruments.tracing.tracer
        with tracer.start_as_current_span(f"{request.method} {request.path}", context=parent,
                                          kind=SpanKind.SERVER) as span:
            span.set_attributes({"http.request.method": request.method, "url.path": request.path})
            response = await self._answer(request, handler)
            span.set_attribute("http.response.status_code", response.status)
        return response

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

    def _check_request(self, request: web.Request) -> None:
        if self.auth is not None and not self.auth.allows(request.headers.get("Authorization")):
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="streamproc"'})
        limit = self.app.settings.ingest_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Problem(413, "Payload Too Large", f"the body is over the size limit of {limit} bytes")

    async def post_events(self, request: web.Request) -> web.Response:
        self._check_request(request)
        body = await request.read()
        prepared = self._prepare(body, request.content_type, request.headers.get("Idempotency-Key"))
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

    def _prepare(self, body: bytes, content_type: str, idempotency_key: str | None) -> list[Prepared]:
        """Validated, encoded events: by the fast typed path when it accepts the body, else by the general path
        (which also reports every error)."""
        max_items = self.app.settings.ingest_max_batch
        fast = self.fast.outgoing(body, content_type, max_items)
        if fast is not None:
            try:
                return self.app.publisher.prepare(with_request_ids(fast, idempotency_key))
            except (OverflowError, msgspec.EncodeError):
                pass  # e.g. an integer too wide for the stream encoding: the general path names the field
        items = decode_body(body, content_type)
        outgoing = to_outgoing(self.app.topology, items, idempotency_key, max_items)
        return self.app.publisher.prepare(outgoing)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2):
                await self.app.redis.ping()
                if not self.ready:
                    await self._ensure_groups()
        except Exception as exc:
            return web.json_response({"status": "not ready", "reason": str(exc) or type(exc).__name__}, status=503)
        return web.json_response({"status": "ready", "types": sorted(self.app.topology.by_tag)})

    async def metrics(self, _: web.Request) -> web.Response:
        def render() -> bytes:
            return b"".join(generate_latest(registry) for registry in self.registries)

        body = await asyncio.to_thread(render)  # the state collector does blocking I/O
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_json(self, _: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


async def serve_ingest(app: App, host: str, port: int, stopping: asyncio.Event,
                       started: Callable[[int], None] | None = None) -> None:
    """Serve until `stopping` is set, then stop accepting, finish in-flight requests and flush appends."""
    ingest = Ingest(app)
    runner = web.AppRunner(ingest.web_app(), access_log=None, shutdown_timeout=app.settings.grace_period_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("ingest listening on http://%s:%s", host, bound)
    if started is not None:
        started(bound)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
        await app.aclose()
    log.info("ingest stopped cleanly")
