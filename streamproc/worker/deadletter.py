"""The dead-letter stream: what a dead entry records, and reading it back."""

from __future__ import annotations

import time
import traceback

import msgspec
import redis.asyncio as aioredis

from ..codec import EVENT_ID, TYPE

_fields_encoder = msgspec.msgpack.Encoder()
_fields_decoder = msgspec.msgpack.Decoder(dict[bytes, bytes])


class DeadLettered(msgspec.Struct, frozen=True):
    """One entry of a dead-letter stream, as operators see it."""

    id: str
    event_id: str
    type: str
    group: str
    reason: str
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    stream: str
    stream_id: str
    dead_at_ms: int
    fields: dict[bytes, bytes]

    @property
    def payload(self) -> bytes | None:
        """The event's encoded data, if the original entry had any."""
        return self.fields.get(b"data")


def describe_error(error: BaseException | None, limit: int = 5) -> tuple[str, str, str]:
    """(type, message, short traceback: the innermost `limit` frames) of an error, or empty strings."""
    if error is None:
        return "", "", ""
    frames = traceback.format_exception(type(error), error, error.__traceback__, limit=-limit)
    return type(error).__qualname__, str(error)[:2000], "".join(frames)[-4000:]


def deadletter_fields(  # the entry is a flat record; each argument is one of its fields
    *, group: str, stream: str, stream_id: str, original: dict[bytes, bytes] | None,
    reason: str, attempts: int, error: BaseException | None,
) -> list[bytes | str | int]:
    """Field/value pairs of a dead-letter entry. The original entry's fields are kept whole (msgpack map), so
    even undecodable bytes survive for inspection and redrive."""
    original = original or {}
    error_type, error_message, trace = describe_error(error)
    record: dict[str, bytes | str | int] = {
        "event_id": original.get(EVENT_ID, b""), "type": original.get(TYPE, b""), "group": group,
        "reason": reason, "attempts": attempts, "error_type": error_type, "error_message": error_message,
        "traceback": trace, "stream": stream, "stream_id": stream_id, "dead_at_ms": time.time_ns() // 1_000_000,
        "fields": _fields_encoder.encode(original),
    }
    return [x for kv in record.items() for x in kv]


def _text(raw: dict[bytes, bytes], name: bytes) -> str:
    return raw.get(name, b"").decode(errors="replace")


def parse_deadletter(entry_id: bytes, raw: dict[bytes, bytes]) -> DeadLettered:
    try:
        fields = _fields_decoder.decode(raw.get(b"fields", b"\x80"))
    except msgspec.DecodeError:
        fields = {}
    return DeadLettered(
        id=entry_id.decode(), event_id=_text(raw, b"event_id"), type=_text(raw, b"type"), group=_text(raw, b"group"),
        reason=_text(raw, b"reason"), attempts=int(raw.get(b"attempts", b"0")), error_type=_text(raw, b"error_type"),
        error_message=_text(raw, b"error_message"), traceback=_text(raw, b"traceback"), stream=_text(raw, b"stream"),
        stream_id=_text(raw, b"stream_id"), dead_at_ms=int(raw.get(b"dead_at_ms", b"0")), fields=fields,
    )


async def read_deadletters(redis: aioredis.Redis, keys: list[str], limit: int = 1000) -> list[DeadLettered]:
    """Dead-lettered entries from the given dead-letter streams, oldest first, at most `limit` per stream."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.xrange(key, count=limit)
        replies = await pipe.execute()
    found = [parse_deadletter(eid, raw) for entries in replies for eid, raw in entries]
    return sorted(found, key=lambda d: (d.dead_at_ms, d.id))
