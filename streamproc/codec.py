"""Stream entry layout and the per-type codecs, built once at registration.

An entry holds whole-word fields:
    event_id     the event's unique id (producer-given or generated)
    type         the event's tag, e.g. "card.added"
    occurred_at  publish time, integer milliseconds since the epoch
    data         the event encoded with msgspec msgpack (it carries its own "type" tag)
and, when tracing is on, the trace context of the publish as the global propagator writes it, a field per header:
    traceparent  W3C trace context (with the default propagators; entries of older versions carry only this)
    tracestate   W3C vendor trace state, when there is one
    baggage      W3C baggage, when there is some
(another propagator set by OTEL_PROPAGATORS writes its own names, e.g. b3; none may replace an envelope field)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from .errors import DecodeError
from .event import Event, event_tag

E = TypeVar("E", bound=Event)

EVENT_ID = b"event_id"
TYPE = b"type"
OCCURRED_AT = b"occurred_at"
DATA = b"data"
ENVELOPE_FIELDS = frozenset((EVENT_ID, TYPE, OCCURRED_AT, DATA))

_encoder = msgspec.msgpack.Encoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def entry_fields(event_id: str, tag: str, occurred_at_ms: int, data: bytes) -> dict[bytes, bytes | str | int]:
    return {EVENT_ID: event_id, TYPE: tag, OCCURRED_AT: occurred_at_ms, DATA: data}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a stream entry says about its event, before the event itself is decoded."""

    event_id: str
    type: str
    occurred_at_ms: int
    data: bytes


def read_envelope(fields: dict[bytes, bytes]) -> Envelope:
    """Parse an entry's fields; raises DecodeError naming what is missing or malformed."""
    try:
        return Envelope(
            event_id=fields[EVENT_ID].decode(),
            type=fields[TYPE].decode(),
            occurred_at_ms=int(fields[OCCURRED_AT]),
            data=fields[DATA],
        )
    except KeyError as exc:
        raise DecodeError(f"entry has no {exc.args[0].decode()!r} field") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"entry envelope is malformed: {exc}") from None


class EventCodec(Generic[E]):
    """Encoder/decoder for one event type; one instance per type, made at registration."""

    __slots__ = ("decoder", "event_type", "tag")

    def __init__(self, event_type: type[E]) -> None:
        self.event_type = event_type
        self.tag = event_tag(event_type)
        self.decoder: msgspec.msgpack.Decoder[E] = msgspec.msgpack.Decoder(event_type)

    def decode(self, envelope: Envelope) -> E:
        return self.decode_data(envelope.type, envelope.data)

    def decode_data(self, event_type: str, data: bytes) -> E:
        if event_type != self.tag:
            raise DecodeError(f"unknown type {event_type!r} on the stream of {self.tag!r}")
        try:
            return self.decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"schema mismatch for {self.tag!r}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise DecodeError(f"undecodable data for {self.tag!r}: {exc}") from None
