"""The base of every domain event, its partitioning, and event ids."""

from __future__ import annotations

import random
import re
import time
import zlib
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


_rand = random.Random()
# Producer-given event ids become part of Redis keys (dedup, idempotency): no braces (they would change the
# Cluster hash tag), no spaces or control characters, at most 200 characters.
EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


def check_event_id(event_id: str) -> str:
    if not isinstance(event_id, str) or not EVENT_ID_PATTERN.fullmatch(event_id):
        raise InvalidEvent(f"event id {event_id!r} must be 1-200 characters of A-Z a-z 0-9 . _ : @ / + = -")
    return event_id


def new_event_id() -> str:
    """A sortable, unique event id in the UUIDv7 layout, as 32 hex digits (48-bit ms time, then random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = _rand.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"
