"""Turning an ingest request body into events: decode, validate every item, and explain what is wrong.

A body is one event or an array of events, each in its tagged form: {"type": "card.added", "card_id": ...}, with
an optional "id" (the event id, used for dedup) and "partition_key" (overrides the type's partition key).
Validation is complete before anything is appended, so a batch is all-or-nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .publish import Outgoing
from .topology import Topology

JSON = "application/json"
MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
RESERVED = ("id", "partition_key")
MAX_ID_LENGTH = 200


@dataclass
class Problem(Exception):
    """An RFC 9457 problem: the HTTP status, a short title, the detail, and per-item errors."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        slug = self.title.lower().replace(" ", "-")
        out: dict[str, Any] = {"type": f"urn:streamproc:problem:{slug}", "title": self.title,
                               "status": self.status, "detail": self.detail}
        if self.errors:
            out["errors"] = self.errors
        return out


def decode_body(body: bytes, content_type: str) -> list[Any]:
    """Parse JSON or msgpack into a list of items (a single object becomes a list of one)."""
    try:
        if content_type == JSON:
            data = msgspec.json.decode(body)
        elif content_type in MSGPACK:
            data = msgspec.msgpack.decode(body)
        else:
            raise Problem(415, "Unsupported Media Type",
                          f"send {JSON} or application/msgpack, not {content_type or 'no content type'}")
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise Problem(400, "Malformed Body", f"the body is not valid {content_type}: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise Problem(422, "Invalid Events", "the array holds no events")
    return items


def _item_error(index: int, path: str, message: str) -> dict[str, Any]:
    return {"index": index, "path": path.replace("$", f"$[{index}]", 1), "message": message}


def _convert(topology: Topology, index: int, item: Any) -> tuple[Outgoing | None, dict[str, Any] | None]:
    if not isinstance(item, dict):
        return None, _item_error(index, "$", "each event must be an object")
    event_type = item.get("type")
    route = topology.by_tag.get(event_type) if isinstance(event_type, str) else None
    if route is None:
        known = ", ".join(sorted(topology.by_tag))
        return None, _item_error(index, "$.type", f"unknown event type {event_type!r}; known types: {known}")
    options = {k: item.pop(k) for k in RESERVED if k in item}
    for key, value in options.items():
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH):
            return None, _item_error(index, f"$.{key}", f"must be a non-empty string of at most {MAX_ID_LENGTH}")
    try:
        event = msgspec.convert(item, route.event_type)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).rpartition(" - at `")
        return None, _item_error(index, path.rstrip("`") if message else "$", message or str(exc))
    return Outgoing(event, options.get("id"), options.get("partition_key")), None


def to_outgoing(topology: Topology, items: list[Any], idempotency_key: str | None, max_items: int) -> list[Outgoing]:
    """Validate every item; raise a 422 Problem naming each failing item, or return them all."""
    if len(items) > max_items:
        raise Problem(413, "Too Many Events", f"{len(items)} events in one request; the limit is {max_items}")
    out: list[Outgoing] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        outgoing, error = _convert(topology, index, item)
        if error is not None:
            errors.append(error)
        elif outgoing is not None:
            out.append(outgoing)
    if errors:
        raise Problem(422, "Invalid Events", f"{len(errors)} of {len(items)} events are invalid; none was "
                      "appended", errors[:100])
    if idempotency_key:
        out = _with_request_ids(out, idempotency_key)
    return out


def _with_request_ids(items: list[Outgoing], key: str) -> list[Outgoing]:
    """Give events without an id one derived from the Idempotency-Key and their position, so a retried request
    maps to the same event ids and the dedup window makes it append nothing twice."""
    prefix = hashlib.sha256(key.encode()).hexdigest()[:24]
    return [o if o.event_id else Outgoing(o.event, f"req-{prefix}-{i}", o.partition_key) for i, o in enumerate(items)]
