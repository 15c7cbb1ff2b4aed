"""Turning an ingest request body into events: decode, validate every item, and explain what is wrong.

A body is one event or an array of events, each in its tagged form: {"type": "card.added", "card_id": ...}, with
an optional "id" (the event id, used for dedup) and "partition_key" (overrides the type's partition key).
Validation is complete before anything is appended, so a batch is all-or-nothing.

Hostile bodies: an event's data may nest at most MAX_DEPTH levels (the event object is level 1); deeper data in a
field of its type is a 422 naming the field. Fields a type does not have are ignored whatever they hold, and a body
nested too deeply for the decoder at all (msgspec guards its recursion with Python's recursion limit and raises
RecursionError; it has no depth option) is a 400. So no body can make the ingest recurse past the limit, answer a
500, or append an event that a worker could not decode.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import Any, Union

import msgspec
import msgspec.inspect as mi

from ..event import EVENT_ID_PATTERN, Event
from ..publish.publisher import Outgoing
from ..topology import Topology
from .problems import Problem, json_pointer

JSON = "application/json"
MSGPACK = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
RESERVED = ("id", "partition_key")
MAX_ID_LENGTH = 200
# The integers an event can carry: its stream encoding, msgpack, has nothing wider. The OpenAPI document says so.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# How deep an event's data may nest (the event object is level 1): far more than any event needs, and far below
# Python's recursion limit, so that encoding here and decoding in a worker never run out of stack.
MAX_DEPTH = 64
ANONYMOUS = "anonymous"  # the caller scope of idempotency keys when authentication is off


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
    except RecursionError:
        raise Problem(400, "Malformed Body", f"the {content_type} body nests too deeply to decode; an event's data "
                      f"may nest {MAX_DEPTH} levels") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise Problem(422, "Invalid Events", "the array holds no events")
    return items


Location = tuple[str | int, ...]  # keys and indexes from the event object down to a value


def _item_error(index: int, at: Location | str, message: str) -> dict[str, Any]:
    """One item's error: its index, where in it as a path (`$[1].card_id`, as msgspec writes them) and as an RFC 6901
    JSON Pointer into the body (`/1/card_id`), and the message. `at` is a Location, or a path msgspec gave."""
    if isinstance(at, str):
        path, tokens = at.replace("$", f"$[{index}]", 1), _msgspec_location(at)
    else:
        path = f"$[{index}]" + "".join(f".{t}" if isinstance(t, str) else f"[{t}]" for t in at)
        tokens = at
    return {"index": index, "path": path, "pointer": json_pointer((index, *tokens)), "message": message}


_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _msgspec_location(path: str) -> Location:
    """The keys and indexes of a msgspec path (`$.tags[2]`). msgspec writes a map's value as `[...]`, without its
    key: the location stops at the map."""
    tokens: list[str | int] = []
    at = 1  # after the "$"
    while (step := _STEP.match(path, at)) is not None:
        key, position = step.groups()
        tokens.append(key if key is not None else int(position))
        at = step.end()
    return tuple(tokens)


def _convert(topology: Topology, index: int, item: Any, measure: bool,
             ) -> tuple[Outgoing | None, dict[str, Any] | None]:
    if not isinstance(item, dict):
        return None, _item_error(index, (), "each event must be an object")
    event_type = item.get("type")
    route = topology.by_tag.get(event_type) if isinstance(event_type, str) else None
    if route is None:
        known = ", ".join(sorted(topology.by_tag))
        return None, _item_error(index, ("type",), f"unknown event type {event_type!r}; known types: {known}")
    options = {k: item.pop(k) for k in RESERVED if k in item}
    error = _options_error(options) or (_depth_error(item, route.event_type) if measure else None)
    if error is not None:
        return None, _item_error(index, *error)
    try:
        event = _to_event(item, route.event_type)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).rpartition(" - at `")
        return None, _item_error(index, path.rstrip("`") if message else "$", message or str(exc))
    too_wide = _wide_int_at(msgspec.to_builtins(event), ())
    if too_wide is not None:  # msgspec accepts any size, but encoding it for the stream would fail (was a 500)
        return None, _item_error(index, too_wide, f"integers must be between {MIN_INT} and {MAX_INT}")
    return Outgoing(event, options.get("id"), options.get("partition_key")), None


def _options_error(options: dict[str, Any]) -> tuple[Location, str] | None:
    """The location and message of the first invalid reserved key (id, partition_key), or None."""
    for key, value in options.items():
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH):
            return (key,), f"must be a non-empty string of at most {MAX_ID_LENGTH}"
    if options.get("id") is not None and not EVENT_ID_PATTERN.fullmatch(options["id"]):
        return ("id",), "must be 1-200 characters of A-Z a-z 0-9 . _ : @ / + = -"
    return None


def _free_form_too_deep(topology: Topology, items: list[Any]) -> bool:
    """Whether a free-form field of any item nests past MAX_DEPTH (its type's other fields cannot hold such data,
    and fields it does not have are ignored)."""
    if not any(_free_form_fields(route.event_type) for route in topology.by_tag.values()):
        return False
    values: list[Any] = []
    for item in items:
        event_type = item.get("type") if isinstance(item, dict) else None
        route = topology.by_tag.get(event_type) if isinstance(event_type, str) else None
        if route is not None and (fields := _free_form_fields(route.event_type)):
            values.extend(item.get(key) for _, key in fields)
    return too_deep(values, MAX_DEPTH)  # the list of them is a level too


def _depth_error(item: dict[str, Any], event_type: type[Event]) -> tuple[Location, str] | None:
    """The location and message of the first free-form field whose value nests past MAX_DEPTH, or None. Only those can
    hold such data once converted: other fields refuse it by their type, and fields the type does not have are
    ignored (as msgspec ignores them), whatever they hold."""
    for _, key in _free_form_fields(event_type):
        value = item.get(key)
        if isinstance(value, dict | list) and too_deep(value, MAX_DEPTH - 1):
            return (key,), f"nests deeper than {MAX_DEPTH} levels (the event object is level 1)"
    return None


@cache
def _free_form_fields(event_type: type[Event]) -> tuple[tuple[str, str], ...]:
    """The fields (attribute and encoded names) of an event type whose values could nest past MAX_DEPTH."""
    return tuple((f.name, f.encode_name) for f in msgspec.structs.fields(event_type)
                 if (depth := static_depth(f.type)) is None or depth > MAX_DEPTH - 1)


@cache
def _field_names(event_type: type[Event]) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(event_type))


def too_deep(value: Any, limit: int) -> bool:
    """True if `value` nests more than `limit` levels of containers (a scalar is level 0, `[]` level 1), counted as
    they would be encoded (a Struct or a dataclass is an object). Level by level, without recursion: it measures a
    value nested past Python's recursion limit too, and a batch of values at once, mostly at C speed."""
    level = [value]
    for depth in range(1, limit + 2):
        kinds = set(map(type, level))
        if kinds <= _LEAVES:
            return False
        children = _children_of(level, kinds)
        if children is None:  # no container at this level after all (scalars of other types)
            return False
        if depth > limit:  # a container at level limit + 1
            return True
        level = children
    return False  # not reached: the last level either has a container or is the end


def _children_of(level: list[Any], kinds: set[type]) -> list[Any] | None:
    """The items of the containers in `level`, or None if it holds none."""
    children: list[Any] = []
    found = False
    if dict in kinds:
        children.extend(chain.from_iterable(map(dict.values, [n for n in level if type(n) is dict])))
        found = True
    if list in kinds:
        children.extend(chain.from_iterable([n for n in level if type(n) is list]))
        found = True
    for kind in kinds - _PLAIN:  # rare: tuples, sets, Structs, dataclasses, subclasses, other scalars
        for items in map(_children, [n for n in level if type(n) is kind]):
            if items is not None:
                children.extend(items)
                found = True
    return children if found else None


def _children(node: Any) -> list[Any] | None:
    """The items of a value that is not a plain dict or list, as it would be encoded, or None if it is a scalar (a
    datetime, an Ext, a str subclass ...)."""
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list | tuple | set | frozenset):
        return list(node)
    if isinstance(node, str | bytes | bytearray | int | float):
        return None
    try:
        builtin = msgspec.to_builtins(node)
    except (msgspec.EncodeError, TypeError):
        return None
    return _children(builtin) if isinstance(builtin, dict | list) else None


_LEAVES = frozenset([str, int, float, bool, bytes, type(None)])
_PLAIN = _LEAVES | {dict, list}


def _to_event(item: dict[str, Any], event_type: type[Event]) -> Event:
    """JSON has one kind of number: 2.0 is the integer 2 (so says JSON Schema, and the OpenAPI document), but
    msgspec refuses a float for an int field. A failed conversion is tried again with integral floats as ints;
    if that fails too, the first error is the one reported."""
    try:
        return msgspec.convert(item, event_type)
    except msgspec.ValidationError as exc:
        names = _field_names(event_type)  # only the type's fields: the others may nest arbitrarily deep
        try:
            retry = {k: _integral_floats_as_ints(v) if k in names else v for k, v in item.items()}
            return msgspec.convert(retry, event_type)
        except (msgspec.ValidationError, RecursionError):  # a field's value too deep for its type, or for Python
            raise exc from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _wide_int_at(value: Any, at: Location) -> Location | None:
    """The location of the first integer outside MIN_INT..MAX_INT (JSON allows any size), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if MIN_INT <= value <= MAX_INT else at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _wide_int_at(child, (*at, key))
        if found is not None:
            return found
    return None


def to_outgoing(topology: Topology, items: list[Any], request_key: RequestKey | None, max_items: int,
                ) -> list[Outgoing]:
    """Validate every item; raise a 422 Problem naming each failing item, or return them all."""
    if len(items) > max_items:
        raise Problem(413, "Too Many Events", f"{len(items)} events in one request; the limit is {max_items}")
    out: list[Outgoing] = []
    errors: list[dict[str, Any]] = []
    measure = _free_form_too_deep(topology, items)  # one pass for all; each item only if one is too deep
    for index, item in enumerate(items):
        outgoing, error = _convert(topology, index, item, measure)
        if error is not None:
            errors.append(error)
        elif outgoing is not None:
            out.append(outgoing)
    if errors:
        raise Problem(422, "Invalid Events", f"{len(errors)} of {len(items)} events are invalid; none was "
                      "appended", errors[:100])
    return with_request_ids(out, request_key)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # aiohttp decodes header bytes that are not UTF-8 this way


@dataclass(frozen=True, slots=True)
class RequestKey:
    """An Idempotency-Key as the ingest keeps it: scoped to its caller and bound to the body it came with.

    Events without their own id get ids derived from the caller, the key, the body's fingerprint and their position,
    so a retried request maps to the same ids (and the dedup window makes it append nothing twice), while the same
    key from another caller, or with another body, can never map onto events already appended. `record` names the
    Redis key that remembers the key's fingerprint, so that the ingest can refuse the key with another body."""

    scope: str  # the caller and the hashed key: "<caller>:<sha256(key)>"; safe in a key name (no braces)
    fingerprint: str  # SHA-256 of the content type and the raw body
    id_prefix: str

    @classmethod
    def of(cls, caller: str, key: str, content_type: str, body: bytes) -> RequestKey:
        fingerprint = hashlib.sha256(_utf8(content_type) + b"\n" + body).hexdigest()
        scope = f"{caller}:{hashlib.sha256(_utf8(key)).hexdigest()[:32]}"
        return cls(scope, fingerprint, hashlib.sha256(f"{scope}:{fingerprint}".encode()).hexdigest()[:24])

    def record(self, ns: str) -> str:
        return f"{ns}:idem:{self.scope}"


def with_request_ids(items: list[Outgoing], request_key: RequestKey | None) -> list[Outgoing]:
    """Give events without an id one derived from the request key and their position (see RequestKey)."""
    if request_key is None:
        return items
    prefix = request_key.id_prefix
    return [o if o.event_id else Outgoing(o.event, f"req-{prefix}-{i}", o.partition_key) for i, o in enumerate(items)]


class _Placeholder(Event, tag="streamproc.placeholder"):
    """Never published: it only makes the fast decoder's type a union (see FastIntake)."""


class _Options(msgspec.Struct):
    """The reserved keys of an item; every other key is ignored when decoding into this."""

    id: str | None = None
    partition_key: str | None = None


class FastIntake:
    """The common case in one pass of typed decoding (C speed, no dicts): a body of valid events. Anything it
    does not accept (invalid items, integral floats for ints, odd ids, data nested past MAX_DEPTH) returns None,
    and the caller takes the general path, which accepts exactly what it should and explains every error."""

    def __init__(self, topology: Topology) -> None:
        # Always a union (of tagged structs), so the "type" tag is required even when the app has one type.
        types: tuple[type[Event], ...] = (*(route.event_type for route in topology.by_tag.values()), _Placeholder)
        one: Any = Union[types]  # noqa: UP007 - a union built at run time
        self._json = (msgspec.json.Decoder(one), msgspec.json.Decoder(list[one]),
                      msgspec.json.Decoder(_Options), msgspec.json.Decoder(list[_Options]))
        self._msgpack = (msgspec.msgpack.Decoder(one), msgspec.msgpack.Decoder(list[one]),
                         msgspec.msgpack.Decoder(_Options), msgspec.msgpack.Decoder(list[_Options]))
        # Typed decoding builds nothing deeper than the types allow: only fields with Any, msgspec.Raw, custom
        # types or recursion in them can hold data nested past MAX_DEPTH, and only theirs is measured.
        self._free_form = {t: [name for name, _ in fields] for t in types if (fields := _free_form_fields(t))}

    def outgoing(self, body: bytes, content_type: str, max_items: int) -> list[Outgoing] | None:
        decoders = self._json if content_type == JSON else self._msgpack if content_type in MSGPACK else None
        if decoders is None or not body:
            return None
        decoded = _decode(decoders, body, content_type == JSON)
        if decoded is None:
            return None
        events, options = decoded
        if not events or len(events) > max_items or any(isinstance(e, _Placeholder) for e in events):
            return None
        if self._free_form and self._nested_too_deep(events, body, content_type == JSON):
            return None
        for o in options:
            if (o.id is not None and not EVENT_ID_PATTERN.fullmatch(o.id)) or (
                    o.partition_key is not None and not 0 < len(o.partition_key) <= MAX_ID_LENGTH):
                return None
        return [Outgoing(e, o.id, o.partition_key) for e, o in zip(events, options, strict=True)]

    def _nested_too_deep(self, events: list[Event], body: bytes, is_json: bool) -> bool:
        """Whether a free-form field of an event nests past MAX_DEPTH (then the general path names it). Nothing can
        nest deeper than it has containers, each with a bracket in JSON (a header byte in msgpack): a body with few
        of those needs nothing more; in the others, the values of the free-form fields are measured."""
        if _containers_at_most(body, is_json, MAX_DEPTH):
            return False
        values = [getattr(e, name) for e in events for name in self._free_form.get(type(e), ())]
        try:
            return too_deep(values, MAX_DEPTH)  # the list of them is a level too
        except RecursionError:  # converting a deep dataclass or the like: deep indeed
            return True


def _containers_at_most(body: bytes, is_json: bool, limit: int) -> bool:
    """Whether the body holds at most `limit` containers, counting every byte that could open one (a bound: the
    bytes of a string, or of a number in msgpack, only add to it)."""
    if is_json:
        return body.count(b"[") + body.count(b"{") <= limit
    return len(body) - len(body.translate(None, _MSGPACK_CONTAINERS)) <= limit


def _decode(decoders: tuple[Any, ...], body: bytes, is_json: bool) -> tuple[list[Any], list[_Options]] | None:
    many = body.lstrip()[:1] == b"[" if is_json else body[0] in _MSGPACK_ARRAY
    try:
        if many:
            return decoders[1].decode(body), decoders[3].decode(body)
        return [decoders[0].decode(body)], [decoders[2].decode(body)]
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def static_depth(annotation: Any) -> int | None:
    """The most levels of containers a value of this type can nest (a scalar 0, `list[int]` 1, a Struct of
    scalars 1), or None if unbounded: Any, msgspec.Raw and custom types hold anything, and a type may recurse."""
    return _type_depth(mi.type_info(annotation), frozenset())


def _type_depth(t: mi.Type, enclosing: frozenset[int]) -> int | None:
    if isinstance(t, mi.Metadata):
        return _type_depth(t.type, enclosing)
    if isinstance(t, mi.AnyType | mi.RawType | mi.CustomType) or id(t) in enclosing:
        return None
    if isinstance(t, mi.UnionType):
        parts, level = t.types, 0  # one of them: no level of its own
    elif isinstance(t, mi.CollectionType):
        parts, level = (t.item_type,), 1
    elif isinstance(t, mi.TupleType):
        parts, level = t.item_types, 1
    elif isinstance(t, mi.DictType | mi.FrozenDictType):
        parts, level = (t.key_type, t.value_type), 1
    elif isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        parts, level = tuple(f.type for f in t.fields), 1
    else:
        return 0
    depths = [_type_depth(part, enclosing | {id(t)}) for part in parts]
    return None if None in depths else level + max((d for d in depths if d is not None), default=0)


# msgpack array headers: fixarray 0x90-0x9f, array16 0xdc, array32 0xdd.
_MSGPACK_ARRAY = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
# Every msgpack container header: fixmap 0x80-0x8f, fixarray 0x90-0x9f, array16/32 0xdc-0xdd, map16/32 0xde-0xdf.
_MSGPACK_CONTAINERS = bytes([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
