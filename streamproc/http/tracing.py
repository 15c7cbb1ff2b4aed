"""The ingest's SERVER span per request, as the HTTP semantic conventions describe it
(https://opentelemetry.io/docs/specs/semconv/http/http-spans/): named `{method} {http.route}` (the route template,
never the raw path, which would make one span name per URL), continuing the caller's trace from its headers (read
case-insensitively, through the global propagator), status left unset for 4xx (the client's error, not ours) and
set to error with `error.type` for 5xx."""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web
from multidict import CIMultiDictProxy
from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from ..observe.telemetry import A_ERROR_TYPE, current, error_type

# Methods the conventions know; any other is reported as "_OTHER" (with the original in its own attribute), so a
# client cannot mint span names.
KNOWN_METHODS = frozenset(("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"))


class HeaderGetter(Getter[CIMultiDictProxy[str]]):
    """The propagator's view of aiohttp's request headers: case-insensitive, every value of a repeated header."""

    def get(self, carrier: CIMultiDictProxy[str], key: str) -> list[str] | None:
        values = carrier.getall(key, None)
        return list(values) if values else None

    def keys(self, carrier: CIMultiDictProxy[str]) -> list[str]:
        return list(carrier.keys())


HEADERS = HeaderGetter()


def route_of(request: web.Request) -> str | None:
    """The matched route's template (`/v1/events`), or None when no route matched (404, 405)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def request_attributes(request: web.Request, method: str, route: str | None) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method, "url.scheme": request.scheme, "url.path": request.path,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if method != request.method:
        attributes["http.request.method_original"] = request.method
    if route is not None:
        attributes["http.route"] = route
    host, port = request.url.host, request.url.port
    if host:
        attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    if request.remote:
        attributes["client.address"] = request.remote
    return attributes


def _end_status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute(A_ERROR_TYPE, str(status))
        span.set_status(Status(StatusCode.ERROR))


async def server_span(tracer: Tracer, request: web.Request,
                      answer: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    """Await `answer` (the request's handling) inside the request's SERVER span, the current span meanwhile, so
    the publish spans it starts are its children."""
    method = request.method if request.method in KNOWN_METHODS else "_OTHER"
    route = route_of(request)
    # The caller's context is made current, not only the span's parent: its baggage then reaches the publishes.
    with current(propagate.extract(request.headers, getter=HEADERS)), tracer.start_as_current_span(
            f"{method} {route}" if route else method, kind=SpanKind.SERVER,
            attributes=request_attributes(request, method, route), record_exception=False,
            set_status_on_exception=False) as span:
        try:
            response = await answer
        except web.HTTPException as exc:  # aiohttp's own answers (404, 405, 413...), raised through middlewares
            _end_status(span, exc.status)
            raise
        except Exception as exc:  # aiohttp answers 500
            span.record_exception(exc)
            span.set_attribute("http.response.status_code", 500)
            span.set_attribute(A_ERROR_TYPE, error_type(exc))
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        _end_status(span, response.status)
        return response
