"""The pure parts of delayed publishing: when a publish is due, and how its entry is packed for the Lua mover."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from streamproc.errors import InvalidEvent
from streamproc.publish.delayed import Due, due_of, pack_entry


def test_delays_are_milliseconds_from_redis_now_and_zero_or_less_is_now() -> None:
    assert due_of(1.5, None) == Due(1500)
    assert due_of(timedelta(minutes=2), None) == Due(120_000)
    assert due_of(0.0001, None) == Due(1), "rounded up: never before the asked delay"
    assert due_of(0, None) is None and due_of(-3, None) is None and due_of(None, None) is None


def test_at_is_an_absolute_instant_in_any_zone_and_a_past_one_is_now() -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    due = due_of(None, at)
    assert due is not None and due.absolute and due.ms == pytest.approx(at.timestamp() * 1000, abs=1)
    berlin = at.astimezone(timezone(timedelta(hours=1)))
    assert due_of(None, berlin) == due, "the same instant, whatever its zone"
    assert due_of(None, datetime.now(UTC) - timedelta(seconds=1)) is None
    assert due is not None and due.ms > time.time() * 1000


@pytest.mark.parametrize(("delay", "at", "message"), [
    (None, datetime(2030, 1, 1), "naive datetime"),
    (1.0, datetime(2030, 1, 1, tzinfo=UTC), "not both"),
    (float("inf"), None, "finite"),
    ("5", None, "finite"),
    (True, None, "finite"),
])
def test_wrong_due_times_are_refused_clearly(delay: object, at: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        due_of(delay, at)  # type: ignore[arg-type]


def test_an_entry_is_packed_as_netstrings_of_its_stream_then_its_fields() -> None:
    packed = pack_entry("ns:ev:{t:0}", {b"event_id": "e1", b"occurred_at": 1700000000000, b"data": b"\x00:\xff"})
    assert packed == b"11:ns:ev:{t:0}8:event_id2:e111:occurred_at13:17000000000004:data3:\x00:\xff"
