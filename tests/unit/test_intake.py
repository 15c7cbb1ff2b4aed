"""The fast typed intake path accepts only what the general path accepts; everything else falls through to it."""

from __future__ import annotations

import msgspec

from streamproc import App, Event, Outgoing
from streamproc.http.intake import JSON, FastIntake, decode_body, to_outgoing


class Ping(Event, tag="ping"):
    n: int


def fast(body: bytes, content_type: str = JSON) -> list[Outgoing] | None:
    app = App("intake")
    app.register(Ping)
    return FastIntake(app.topology).outgoing(body, content_type, max_items=3)


def test_valid_bodies_take_the_fast_path() -> None:
    assert fast(b'{"type": "ping", "n": 1}') == [Outgoing(Ping(n=1))]
    assert fast(b'[{"type": "ping", "n": 1, "id": "e-1", "partition_key": "k"}, {"type": "ping", "n": 2}]') == [
        Outgoing(Ping(n=1), "e-1", "k"), Outgoing(Ping(n=2))]
    packed = msgspec.msgpack.encode([{"type": "ping", "n": 3}])
    assert fast(packed, "application/msgpack") == [Outgoing(Ping(n=3))]


def test_anything_questionable_falls_through() -> None:
    for body in (b'{"n": 1}',  # no type: required even when the app has a single type
                 b'{"type": "pong", "n": 1}', b'{"type": "ping", "n": "1"}', b'{"type": "ping", "n": 2.0}',
                 b'{"type": "ping", "n": 1, "id": "a{b}"}', b'{"type": "streamproc.placeholder"}',
                 b"[]", b"[" + b",".join([b'{"type": "ping", "n": 1}'] * 4) + b"]", b"{bad"):
        assert fast(body) is None, body


def test_general_path_accepts_integral_floats_the_fast_path_refuses() -> None:
    app = App("intake")
    app.register(Ping)
    assert to_outgoing(app.topology, decode_body(b'{"type": "ping", "n": 2.0}', JSON), None, 3) == [
        Outgoing(Ping(n=2))]
