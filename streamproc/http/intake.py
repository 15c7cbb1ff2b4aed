"""Turning an ingest request body into events: decode, validate every item, and explain what is wrong.

A body is one event or an array of events, each in its tagged form: {"type": "card.added", "card_id": ...}, with
an optional "id" (the event id, used for dedup) and "partition_key" (overrides the type's partition key).
Validation is complete before anything is appended, so a batch is all-or-nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Union

import msgspec

from ..event import EVENT_ID_PATTERN, Event
from ..publish.publisher import Outgoing
from ..topology import Topology

JSON = "application/json"
MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
RESERVED = ("id", "partition_key")
MAX_ID_LENGTH = 200
# The integers an event can carry: its stream encoding, msgpack, has nothing wider. The OpenAPI document says so.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1


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
    if options.get("id") is not None and not EVENT_ID_PATTERN.fullmatch(options["id"]):
        return None, _item_error(index, "$.id", "must be 1-200 characters of A-Z a-z 0-9 . _ : @ / + = -")
    try:
        event = _to_event(item, route.event_type)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).rpartition(" - at `")
        return None, _item_error(index, path.rstrip("`") if message else "$", message or str(exc))
    too_wide = _wide_int_path(msgspec.to_builtins(event), "$")
    if too_wide is not None:  # msgspec accepts any size, but encoding it for the stream would fail (was a 500)
        return None, _item_error(index, too_wide, f"integers must be between {MIN_INT} and {MAX_INT}")
    return Outgoing(event, options.get("id"), options.get("partition_key")), None


def _to_event(item: dict[str, Any], event_type: type[Event]) -> Event:
    """JSON has one kind of number: 2.0 is the integer 2 (so says JSON Schema, and the OpenAPI document), but
    msgspec refuses a float for an int field. A failed conversion is tried again with integral floats as ints;
    if that fails too, the first error is the one reported."""
    try:
        return msgspec.convert(item, event_type)
    except msgspec.ValidationError as exc:
        try:
            return msgspec.convert(_integral_floats_as_ints(item), event_type)
        except msgspec.ValidationError:
            raise exc from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _wide_int_path(value: Any, path: str) -> str | None:
    """The path of the first integer outside MIN_INT..MAX_INT (JSON allows any size), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if MIN_INT <= value <= MAX_INT else path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _wide_int_path(child, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


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


class _Placeholder(Event, tag="streamproc.placeholder"):
    """Never published: it only makes the fast decoder's type a union (see FastIntake)."""


class _Options(msgspec.Struct):
    """The reserved keys of an item; every other key is ignored when decoding into this."""

    id: str | None = None
    partition_key: str | None = None


class FastIntake:
    """The common case in one pass of typed decoding (C speed, no dicts): a body of valid events. Anything it
    does not accept (invalid items, integral floats for ints, odd ids) returns None, and the caller takes the
    general path, which accepts exactly what it should and explains every error."""

    def __init__(self, topology: Topology) -> None:
        # Always a union (of tagged structs), so the "type" tag is required even when the app has one type.
        types = (*(route.event_type for route in topology.by_tag.values()), _Placeholder)
        one: Any = Union[types]  # noqa: UP007 - a union built at run time
        self._json = (msgspec.json.Decoder(one), msgspec.json.Decoder(list[one]),
                      msgspec.json.Decoder(_Options), msgspec.json.Decoder(list[_Options]))
        self._msgpack = (msgspec.msgpack.Decoder(one), msgspec.msgpack.Decoder(list[one]),
                         msgspec.msgpack.Decoder(_Options), msgspec.msgpack.Decoder(list[_Options]))

    def outgoing(self, body: bytes, content_type: str, max_items: int) -> list[Outgoing] | None:
        decoders = self._json if content_type == JSON else self._msgpack if content_type in MSGPACK else None
        if decoders is None or not body:
            return None
        many = body.lstrip()[:1] == b"[" if content_type == JSON else body[0] in _MSGPACK_ARRAY
        try:
            if many:
                events, options = decoders[1].decode(body), decoders[3].decode(body)
            else:
                events, options = [decoders[0].decode(body)], [decoders[2].decode(body)]
        except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
            return None
        if not events or len(events) > max_items or any(isinstance(e, _Placeholder) for e in events):
            return None
        for o in options:
            if (o.id is not None and not EVENT_ID_PATTERN.fullmatch(o.id)) or (
                    o.partition_key is not None and not 0 < len(o.partition_key) <= MAX_ID_LENGTH):
                return None
        return [Outgoing(e, o.id, o.partition_key) for e, o in zip(events, options, strict=True)]


# msgpack array headers: fixarray 0x90-0x9f, array16 0xdc, array32 0xdd.
_MSGPACK_ARRAY = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


def with_request_ids(items: list[Outgoing], idempotency_key: str | None) -> list[Outgoing]:
    return _with_request_ids(items, idempotency_key) if idempotency_key else items
