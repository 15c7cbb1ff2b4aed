"""The ingest contract as OpenAPI 3.1, generated from the registered event types' msgspec schemas."""

from __future__ import annotations

from typing import Any

import msgspec

from ..event import EVENT_ID_PATTERN
from ..topology import Topology
from .intake import JSON, MAX_ID_LENGTH, MAX_INT, MIN_INT

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "path": {"type": "string"}, "message": {"type": "string"}}}},
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
_ERRORS = {
    "400": "Malformed JSON or msgpack (or nested too deeply to decode)", "401": "Missing or invalid bearer token",
    "408": "The body did not arrive within the body timeout; the connection is closed",
    "413": "Body or batch too large", "415": "Unsupported content type",
    "422": "An event is invalid (unknown type, schema violation, data nested too deeply), or the Idempotency-Key "
           "came before with a different body",
    "429": "A stream's backlog is over its limit; retry after Retry-After",
    "503": "Redis unavailable, or the server is at its connection limit; retry after Retry-After",
}


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


def openapi_document(topology: Topology, title: str) -> dict[str, Any]:
    schemas = _event_schemas(topology)
    names = sorted(route.event_type.__name__ for route in topology.by_tag.values())
    mapping = {route.tag: f"#/components/schemas/{route.event_type.__name__}" for route in topology.by_tag.values()}
    one_event = {"oneOf": [{"$ref": f"#/components/schemas/{n}"} for n in names],
                 "discriminator": {"propertyName": "type", "mapping": mapping}}
    schemas.update({"AnyEvent": one_event, "Problem": PROBLEM, "Accepted": ACCEPTED})
    body_schema = {"oneOf": [{"$ref": "#/components/schemas/AnyEvent"},
                             {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/AnyEvent"}}]}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    responses: dict[str, Any] = {"202": {"description": "Every event of the request was appended",
                                         "content": {JSON: {"schema": {"$ref": "#/components/schemas/Accepted"}}}}}
    responses.update({code: {"description": text, "content": problem} for code, text in _ERRORS.items()})
    post = {
        "operationId": "postEvents", "summary": "Append one event or a batch (all or nothing)",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {JSON: {"schema": body_schema},
                                                      "application/msgpack": {"schema": body_schema}}},
        "responses": responses,
    }
    plain = {"200": {"description": "OK"}, "503": {"description": "Not ready"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} ingest", "version": "1"},
        "paths": {"/v1/events": {"post": post}, "/healthz": {"get": {"responses": plain}},
                  "/readyz": {"get": {"responses": plain}}},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
