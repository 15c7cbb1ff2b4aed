"""The benchmark's event: one small, realistic type on one partition, and its raw stream-entry form.

`sent_ns` carries the publisher's wall clock (time.time_ns) so a handler in another process can measure
publish -> handler-start latency with microsecond resolution (the entry's `occurred_at` is whole milliseconds).
"""

from __future__ import annotations

import time
from typing import ClassVar

import msgspec

from streamproc import Event, new_event_id

TAG = "bench.tick"
NAMESPACE = "bench"
# streamproc's key layout for (namespace "bench", type "bench.tick", partition 0); checked in bench.apps.
STREAM = f"{NAMESPACE}:ev:{{{TAG}:0}}"

_encoder = msgspec.msgpack.Encoder()


class Tick(Event, tag=TAG, frozen=True):
    """About what a product event carries: a sequence number, a user, a URL, and when it was sent."""

    seq: int
    sent_ns: int = 0
    user_id: str = ""
    url: str = ""


LANED_TAG = "bench.laned"
LANES = 3
# The streams of `LanedTick` (partition 0, lanes 0..2); checked in bench.apps.
LANE_STREAMS = [f"{NAMESPACE}:ev:{{{LANED_TAG}:0}}:lane{lane}" for lane in range(LANES)]


class LanedTick(Event, tag=LANED_TAG, frozen=True):
    """Tick's fields on a type with three priority lanes (bench/lanes.py)."""

    seq: int
    sent_ns: int = 0
    user_id: str = ""
    url: str = ""
    priorities: ClassVar[int] = LANES


def tick(seq: int, sent_ns: int = 0) -> Tick:
    return Tick(seq=seq, sent_ns=sent_ns, user_id=f"u{seq % 1000:04d}", url=f"https://example.org/cards/{seq}")


def raw_fields(event: Tick | LanedTick, tag: str = TAG) -> dict[bytes, bytes | str | int]:
    """The same fields streamproc appends (event_id, type, occurred_at, data), built by hand for the raw loops."""
    return {b"event_id": new_event_id(), b"type": tag, b"occurred_at": time.time_ns() // 1_000_000,
            b"data": _encoder.encode(event)}


def json_event(seq: int) -> dict[str, object]:
    """The same event in the tagged JSON form that the ingest endpoint accepts."""
    event = tick(seq)
    return {"type": TAG, "seq": event.seq, "sent_ns": 0, "user_id": event.user_id, "url": event.url}
