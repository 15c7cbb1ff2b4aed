"""Unit tests (no Redis): the entry envelope, per-type codecs, old payloads, dead-letter records, backoff.

tests/fixtures/card_added_v1.msgpack was written once with the schema below (card_id, curator_id, url):
    msgspec.msgpack.encode(CardAdded(card_id="card-1", curator_id="user-7", url="https://example.com/a"))
It must keep decoding: fields may be added (with defaults), never renamed, retyped or removed.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from streamproc import Backoff, DecodeError, Event
from streamproc.codec import Envelope, EventCodec, encode_event, entry_fields, read_envelope
from streamproc.worker.deadletter import deadletter_fields, parse_deadletter

FIXTURES = Path(__file__).parents[1] / "fixtures"


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str
    url: str | None = None


class CardAddedLater(Event, tag="card.added"):
    """The same event after a compatible change: a new field with a default, appended at the end."""

    card_id: str
    curator_id: str
    url: str | None = None
    note: str = ""


class Other(Event, tag="other"):
    card_id: str


def envelope(data: bytes, type_: str = "card.added") -> Envelope:
    return Envelope(event_id="e1", type=type_, occurred_at_ms=1, data=data)


def as_stored(fields: dict[bytes, bytes | str | int]) -> dict[bytes, bytes]:
    """What Redis gives back for the fields of an XADD: everything as bytes."""
    return {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_old_payload_fixture_keeps_decoding() -> None:
    data = (FIXTURES / "card_added_v1.msgpack").read_bytes()
    expected = CardAdded(card_id="card-1", curator_id="user-7", url="https://example.com/a")
    assert EventCodec(CardAdded).decode(envelope(data)) == expected
    later = EventCodec(CardAddedLater).decode(envelope(data))
    assert (later.card_id, later.curator_id, later.url, later.note) == ("card-1", "user-7", "https://example.com/a", "")


def test_entry_round_trip() -> None:
    event = CardAdded(card_id="c1", curator_id="u1")
    stored = as_stored(entry_fields("a" * 32, "card.added", 1_700_000_000_123, encode_event(event)))
    env = read_envelope(stored)
    assert (env.event_id, env.type, env.occurred_at_ms) == ("a" * 32, "card.added", 1_700_000_000_123)
    decoded = EventCodec(CardAdded).decode(env)
    assert decoded == event
    with pytest.raises(AttributeError):
        decoded.card_id = "changed"  # type: ignore[misc]  # events are frozen


@pytest.mark.parametrize(("fields", "message"), [
    ({b"data": b"\xff\xfe garbage"}, "no 'event_id' field"),
    ({b"event_id": b"e", b"type": b"card.added", b"data": b""}, "no 'occurred_at' field"),
    ({b"event_id": b"e", b"type": b"card.added", b"occurred_at": b"soon", b"data": b""}, "malformed"),
    ({b"event_id": b"\xff", b"type": b"card.added", b"occurred_at": b"1", b"data": b""}, "malformed"),
])
def test_bad_envelopes_raise_decode_error(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        read_envelope(fields)


@pytest.mark.parametrize(("env", "message"), [
    (envelope(encode_event(Other(card_id="c1")), "other"), "unknown type 'other'"),
    (envelope(msgspec.msgpack.encode({"type": "card.added", "card_id": 5, "curator_id": "u"})), "schema mismatch"),
    (envelope(msgspec.msgpack.encode({"type": "card.added", "card_id": "c"})), "schema mismatch"),
    (envelope(encode_event(Other(card_id="c1"))), "schema mismatch"),  # right envelope type, wrong data tag
    (envelope(b"\xc1\xc1 not msgpack"), "undecodable data"),
    (envelope(b""), "undecodable data"),
])
def test_undecodable_events_raise_decode_error(env: Envelope, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        EventCodec(CardAdded).decode(env)


def test_deadletter_record_keeps_raw_bytes() -> None:
    original = {b"data": b"\xff\xfe garbage", b"event_id": b"e1", b"odd\xff": b"\x00"}
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = deadletter_fields(group="g", stream="s", stream_id="1-0", original=original, reason="r",
                                   attempts=3, error=exc)
    names, values = record[::2], record[1::2]
    raw = {str(k).encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in zip(names, values, strict=True)}
    dead = parse_deadletter(b"9-0", raw)
    assert dead.fields == original
    assert dead.payload == b"\xff\xfe garbage"
    assert (dead.id, dead.event_id, dead.group, dead.reason, dead.attempts) == ("9-0", "e1", "g", "r", 3)
    assert (dead.error_type, dead.error_message) == ("ValueError", "boom")
    assert "raise ValueError" in dead.traceback
    assert (dead.stream, dead.stream_id) == ("s", "1-0")


def test_backoff_delays() -> None:
    fixed = Backoff(base=0.01, factor=2, cap=0.05, jitter=False)
    assert [fixed.delay(n) for n in (1, 2, 3, 4, 10)] == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    jittered = Backoff(base=1, factor=2, cap=300)
    delays = [jittered.delay(3) for _ in range(100)]  # equal jitter: between half and all of 1 * 2**2
    assert all(2 <= d <= 4 for d in delays)
    assert len(set(delays)) > 1
