"""The ingest contract as OpenAPI 3.1, generated from the registered event types' msgspec schemas."""

from __future__ import annotations

from typing import Any

import msgspec

from ..event import EVENT_ID_PATTERN
from ..topology import Topology
from ..version import __version__
from .intake import JSON, MAX_ID_LENGTH, MAX_INT, MIN_INT

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; the README's Problem types section lists every type",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["index", "path", "pointer", "message"],
            "properties": {"index": {"type": "integer", "description": "position of the event in the body"},
                           "path": {"type": "string", "description": "where in the body, as `$[1].card_id`"},
                           "pointer": {"type": "string", "format": "json-pointer",
                                       "description": "where in the body, as an RFC 6901 JSON Pointer: `/1/card_id`"},
                           "message": {"type": "string"}}}},
    },
}
ACCEPTED = {
    "type": "object",
    "required": ["events"],
    "properties": {"events": {"type": "array", "items": {
        "type": "object", "required": ["id", "stream", "stream_id", "duplicate"],
        "properties": {"id": {"type": "string"}, "stream": {"type": "string"}, "stream_id": {"type": "string"},
                       "duplicate": {"type": "boolean"}}}}},
}
HEALTHY = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
READY = {"type": "object", "required": ["status", "types"],
         "properties": {"status": {"const": "ready"}, "types": {"type": "array", "items": {"type": "string"}}}}
RETRY_AFTER = {"description": "Seconds to wait before retrying", "required": True,
               "schema": {"type": "integer", "minimum": 0}}
_ERRORS = {
    "400": "Malformed JSON or msgpack (or nested too deeply to decode)", "401": "Missing or invalid bearer token",
    "408": "The body did not arrive within the body timeout; the connection is closed",
    "413": "Body or batch too large", "415": "Unsupported content type",
    "422": "An event is invalid (unknown type, schema violation, data nested too deeply), or the Idempotency-Key "
           "came before with a different body",
    "429": "A stream's backlog is over its limit; retry after Retry-After",
    "503": "Redis unavailable, or the server is at its connection limit; retry after Retry-After",
}
# Any operation may answer these (405: another method on its path; 500: a failure of ours, without internals). A
# path not listed answers 404: no operation of this document can declare it, so it is components.responses.NotFound.
_ALWAYS = {"405": "This path does not take the method used; Allow lists those it does",
           "500": "An unexpected error of the server (logged there; the problem carries no internals)"}
_NOT_FOUND = "No such path (every path the ingest serves is in this document)"
ALLOW = {"description": "The methods this path takes", "required": True, "schema": {"type": "string"}}
_AT_LIMIT = "The server is at its connection limit; retry after Retry-After"
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _error(description: str, status: str) -> dict[str, Any]:
    """An error response: a problem document, with Retry-After on the statuses that always carry it."""
    response: dict[str, Any] = {"description": description, "content": _PROBLEM}
    if status in ("429", "503"):
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    elif status == "405":
        response["headers"] = {"Allow": {"$ref": "#/components/headers/Allow"}}
    return response


def _always() -> dict[str, Any]:
    return {code: _error(text, code) for code, text in _ALWAYS.items()}


def _event_schemas(topology: Topology) -> dict[str, Any]:
    types = [route.event_type for route in topology.by_tag.values()]
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    for route in topology.by_tag.values():
        schema = components[route.event_type.__name__]
        # null is accepted as "not given" by ingest (intake._convert), so the contract allows it too
        schema["properties"]["id"] = {"type": ["string", "null"], "pattern": f"^{EVENT_ID_PATTERN.pattern}$",
                                      "description": "event id; publishing the same id twice appends once"}
        schema["properties"]["partition_key"] = {"type": ["string", "null"], "minLength": 1,
                                                 "maxLength": MAX_ID_LENGTH}
    _bound_integers(components)
    return dict(components)


def _bound_integers(schema: Any) -> None:
    """Give every integer without bounds the range that ingest accepts (what msgpack can carry)."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            schema.setdefault("minimum", MIN_INT)
            schema.setdefault("maximum", MAX_INT)
        for child in schema.values():
            _bound_integers(child)
    elif isinstance(schema, list):
        for child in schema:
            _bound_integers(child)


def openapi_document(topology: Topology, title: str, auth: bool = True) -> dict[str, Any]:
    """The contract of an ingest for these event types. `auth`: whether /v1/events needs the bearer token (the
    probes, /metrics and /openapi.json never do)."""
    schemas = _event_schemas(topology)
    names = sorted(route.event_type.__name__ for route in topology.by_tag.values())
    mapping = {route.tag: f"#/components/schemas/{route.event_type.__name__}" for route in topology.by_tag.values()}
    one_event = {"oneOf": [{"$ref": f"#/components/schemas/{n}"} for n in names],
                 "discriminator": {"propertyName": "type", "mapping": mapping}}
    schemas.update({"AnyEvent": one_event, "Problem": PROBLEM, "Accepted": ACCEPTED, "Healthy": HEALTHY,
                    "Ready": READY})
    components: dict[str, Any] = {"schemas": schemas, "headers": {"RetryAfter": RETRY_AFTER, "Allow": ALLOW},
                                  "responses": {"NotFound": _error(_NOT_FOUND, "404")}}
    if auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} ingest", "version": __version__,
                 "description": "Append events to the streams of a streamproc app. Every error is an RFC 9457 "
                                "problem (application/problem+json)."},
        "paths": {"/v1/events": {"post": _post_events(auth)}, **_open_paths()},
        "components": components,
    }


def _post_events(auth: bool) -> dict[str, Any]:
    body_schema = {"oneOf": [{"$ref": "#/components/schemas/AnyEvent"},
                             {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/AnyEvent"}}]}
    responses: dict[str, Any] = {"202": {"description": "Every event of the request was appended",
                                         "content": {JSON: {"schema": {"$ref": "#/components/schemas/Accepted"}}}}}
    responses.update({code: _error(text, code) for code, text in _ERRORS.items() if auth or code != "401"})
    responses.update(_always())
    return {
        "operationId": "postEvents", "summary": "Append one event or a batch (all or nothing)",
        "security": [{"bearer": []}] if auth else [],
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "retrying with the same key and body appends nothing twice"}],
        "requestBody": {"required": True, "content": {JSON: {"schema": body_schema},
                                                      "application/msgpack": {"schema": body_schema}}},
        "responses": responses,
    }


def _open_paths() -> dict[str, Any]:
    """The operations anyone may call (`security: []`): the probes, the metrics and this document."""
    def get(operation_id: str, summary: str, ok: dict[str, Any], unavailable: str = _AT_LIMIT) -> dict[str, Any]:
        return {"get": {"operationId": operation_id, "summary": summary, "security": [],
                        "responses": {"200": ok, "503": _error(unavailable, "503"), **_always()}}}

    def content(media_types: tuple[str, ...], schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {media: {"schema": schema} for media in media_types}}

    return {
        "/healthz": get("healthz", "The process is alive", content((JSON,), {"$ref": "#/components/schemas/Healthy"},
                                                                   "Alive")),
        "/readyz": get("readyz", "Redis answers and the app's consumer groups exist",
                       content((JSON,), {"$ref": "#/components/schemas/Ready"}, "Ready: the event types served"),
                       "Not ready (Redis does not answer, or the groups could not be created), or the server is at "
                       "its connection limit; retry after Retry-After"),
        "/metrics": get("metrics", "Prometheus metrics: the text format, or OpenMetrics if Accept asks for it",
                        content(("text/plain", "application/openmetrics-text"), {"type": "string"}, "Metrics")),
        "/openapi.json": get("openapi", "This document", content((JSON,), {"type": "object"}, "OpenAPI 3.1")),
    }
