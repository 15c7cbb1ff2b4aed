"""Which streams exist for an app and which groups read each of them: the routing table, built at registration."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from .codec import EventCodec
from .errors import ConfigError
from .event import Event, check_event_type
from .keys import PartitionKeys, partition_keys

StartAt = Literal["new", "all"]


@dataclass(slots=True)
class TypeRoute:
    """One event type: its codec, its streams' keys, and the groups that consume it (group -> start): `groups`
    those with a handler in this app, `declared` those this app only feeds (`App.register(..., groups=...)`).

    `partitions` holds the keys of every stream of the type: one per partition, or, for a type with priority lanes
    (`lanes` > 1), one per lane of each partition, partition by partition, lane 0 first. Whatever walks every
    stream (group creation, trimming, metrics, inventory) walks the lanes with it; `keys_for` finds one."""

    event_type: type[Event]
    tag: str
    codec: EventCodec[Event]
    partitions: list[PartitionKeys]
    groups: dict[str, StartAt] = field(default_factory=dict)
    declared: dict[str, StartAt] = field(default_factory=dict)
    lanes: int = 1

    def keys_for(self, partition: int, lane: int | None) -> PartitionKeys:
        """The stream of a partition (lane None) or of one lane of it (checked by event.lane_of)."""
        return self.partitions[partition] if lane is None else self.partitions[partition * self.lanes + lane]

    def all_groups(self) -> dict[str, StartAt]:
        """Every group this app declares on the type, with or without a handler here."""
        return {**self.declared, **self.groups}


class Topology:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.by_tag: dict[str, TypeRoute] = {}
        self.by_type: dict[type[Event], TypeRoute] = {}

    def route(self, event_type: type[Event]) -> TypeRoute:
        """The route of a type, registering the type on first sight."""
        found = self.by_type.get(event_type)
        if found is not None:
            return found
        tag = check_event_type(event_type)
        other = self.by_tag.get(tag)
        if other is not None:
            # ConfigError, not ValueError: a declaration error like every other one (STYLE: one error base).
            raise ConfigError(f"tag {tag!r} is used by both {other.event_type.__name__} and {event_type.__name__}")
        lanes = event_type.priorities
        keys = partition_keys(self.ns, tag, event_type.partitions, lanes)
        route = TypeRoute(event_type, tag, EventCodec(event_type), keys, lanes=lanes)
        self.by_tag[tag] = route
        self.by_type[event_type] = route
        return route

    def all_group_names(self) -> list[str]:
        return sorted({g for route in self.by_tag.values() for g in route.groups})


# A group that no process has declared for this long is an orphan (a renamed or removed handler group): it is no
# longer created, and trimming and backpressure ignore it. Like Kafka's offsets.retention for empty groups.
ORPHAN_AFTER_MS = 7 * 86_400_000


def is_declared(group: str, own: Collection[str], registry: Collection[str], declared_at_ms: float | None,
                now_ms: float, window_ms: int = ORPHAN_AFTER_MS) -> bool:
    """Whether a group on a stream counts: this app declares it, or the stream's registry holds it and some process
    declared it within the window (or never said when: kept, to be safe). Otherwise it is an orphan."""
    if group in own:
        return True
    return group in registry and (declared_at_ms is None or declared_at_ms >= now_ms - window_ms)
