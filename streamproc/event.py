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
    `priorities` > 1 gives each partition that many lanes, 0 the most urgent (read first, see worker/consume.py);
    an event goes to the lane its publish names (`priority=`), else to `default_priority` (None: the middle lane).
    """

    partitions: ClassVar[int] = 1
    partition_key: ClassVar[str | None] = None
    priorities: ClassVar[int] = 1
    default_priority: ClassVar[int | None] = None


# Lanes a type may have: each is a stream that every read of the type's groups visits, so a few are plenty.
MAX_PRIORITIES = 16


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
    _check_priorities(event_type)
    return tag


def _check_priorities(event_type: type[Event]) -> None:
    name, lanes, default = event_type.__name__, event_type.priorities, event_type.default_priority
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= MAX_PRIORITIES:
        raise ConfigError(f"{name}.priorities must be an int from 1 (no lanes) to {MAX_PRIORITIES}, got {lanes!r}")
    if default is not None and (isinstance(default, bool) or not isinstance(default, int)
                                or not 0 <= default < lanes):
        raise ConfigError(f"{name}.default_priority must be None (the middle lane) or a lane from 0 to "
                          f"{lanes - 1}, got {default!r}")


def lane_of(event: Event, priority: int | None) -> int | None:
    """The lane an event is published to: `priority`, else its type's default; None for a type without lanes.
    A priority the type has no lane for is an InvalidEvent (raised at publish, before anything is sent)."""
    lanes = event.priorities
    if lanes == 1:
        if priority is None:
            return None
        raise InvalidEvent(f"{type(event).__name__} has no priority lanes (priorities = 1): publish it without "
                           "priority=, or give the type `priorities: ClassVar[int] = N`")
    if priority is None:
        default = event.default_priority
        return lanes // 2 if default is None else default
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < lanes:
        raise InvalidEvent(f"priority {priority!r} is not a lane of {type(event).__name__}: its lanes are 0 (most "
                           f"urgent) to {lanes - 1}")
    return priority


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
