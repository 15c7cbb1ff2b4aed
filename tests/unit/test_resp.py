"""The hand-packed XADD is byte-for-byte what redis-py would send."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from streamproc.redis.resp import pack_fields, xadd_prefix


def test_packed_xadd_matches_redis_py() -> None:
    fields: dict[bytes, bytes | str | int] = {b"event_id": "e1", b"type": "card.added", b"occurred_at": 17,
                                              b"data": b"\x83\xa4type\x00\xff"}
    for nomkstream in (True, False):
        extra = ["NOMKSTREAM"] if nomkstream else []
        args = ["XADD", "ns:ev:{card.added:0}", *extra, "*", *(x for kv in fields.items() for x in kv)]
        expected = b"".join(Connection().pack_command(*args))
        assert xadd_prefix("ns:ev:{card.added:0}", len(fields), nomkstream) + pack_fields(fields) == expected
