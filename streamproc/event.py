"""The base of every domain event, its partitioning, and event ids."""

from __future__ import annotations

import array
import os
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar, dataclass_transform

import msgspec

from .errors import ConfigError, InvalidEvent


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A domain event: subclass with `class CardAdded(Event, tag="card.added"): ...`.

    Fields are data only; the event id, time and trace context travel in the stream entry beside it.
    Class variables choose the partitioning: `partitions` streams per type (default 1), routed by
    `crc32(str(getattr(event, partition_key))) % partitions`. Without a partition key, one partition.
    """

    partitions: ClassVar[int] = 1
    partition_key: ClassVar[str | None] = None


def event_tag(event_type: type[Event]) -> str:
    """The type's wire name (its msgspec tag), e.g. "card.added"."""
    tag = event_type.__struct_config__.tag
    if not isinstance(tag, str) or not tag:
        raise ConfigError(f"{event_type.__name__} needs a string tag: class {event_type.__name__}(Event, tag=...)")
    return tag


def check_event_type(event_type: type[Event]) -> str:
    """Validate a type's declaration once, at registration; returns its tag."""
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise ConfigError(f"{event_type!r} is not a subclass of streamproc.Event")
    tag = event_tag(event_type)
    if any(c in tag for c in "{}: \n"):
        raise ConfigError(f"event tag {tag!r} must not contain braces, colons or spaces (it is part of Redis keys)")
    if not isinstance(event_type.partitions, int) or event_type.partitions < 1:
        raise ConfigError(f"{event_type.__name__}.partitions must be a positive int")
    key = event_type.partition_key
    if event_type.partitions > 1 and key not in event_type.__struct_fields__:
        raise ConfigError(f"{event_type.__name__} has several partitions: partition_key must name one of its fields")
    return tag


def partition_of(event: Event, override: str | None = None) -> int:
    """Stable partition number of an event: crc32 of its partition key's text, mod the type's partition count."""
    count = event.partitions
    if count == 1:
        return 0
    key: Any = override if override is not None else getattr(event, event.partition_key or "")
    return zlib.crc32(str(key).encode()) % count


# Producer-given event ids become part of Redis keys (dedup, idempotency): no braces (they would change the
# Cluster hash tag), no spaces or control characters, at most 200 characters.
EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


def check_event_id(event_id: str) -> str:
    if not isinstance(event_id, str) or not EVENT_ID_PATTERN.fullmatch(event_id):
        raise InvalidEvent(f"event id {event_id!r} must be 1-200 characters of A-Z a-z 0-9 . _ : @ / + = -")
    return event_id


# The random part of generated ids: 62 bits a time, from os.urandom, read in blocks (one os.urandom call per id was
# a syscall that cost more than the rest of the id). A forked child must never use the parent's unread bits: two
# children forked from one publisher would generate the same ids (the fork bug of a private random.Random()), so
# the block is dropped after fork. Each next() on the block's iterator is one atomic step under the GIL, so threads
# never take the same bits either.
_RANDOM_BLOCK = 512
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_MASK = (1 << 62) - 1
_random: Iterator[int] = iter(())


def _forget_random() -> None:
    global _random
    _random = iter(())


os.register_at_fork(after_in_child=_forget_random)


def new_event_id() -> str:
    """A sortable, unique event id in the UUIDv7 layout (RFC 9562), as 32 hex digits: 48 bits of Unix time in ms,
    the version (7), 12 bits of sub-millisecond time (the RFC's method 3: ids sort by creation time to 1/4096 ms,
    not only to the ms), the variant, and 62 random bits from os.urandom (unique across threads and forks)."""
    global _random
    ms, ns = divmod(time.time_ns(), 1_000_000)
    try:
        rand = next(_random)
    except StopIteration:
        _random = iter(array.array("Q", os.urandom(8 * _RANDOM_BLOCK)))
        rand = next(_random)
    value = (ms << 80) | _VERSION_AND_VARIANT | ((ns * 4096 // 1_000_000) << 64) | (rand & _RANDOM_MASK)
    return f"{value:032x}"
