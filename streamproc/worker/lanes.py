"""Reading the priority lanes of a partition: most urgent first, with a floor share for every lane with a backlog.

XREADGROUP's COUNT applies to each stream it names, so one plain read over all lanes of a partition would take as
much from lane 2 as from lane 0. Instead each partition's lanes are read by one script call (redis/lua/
read_lanes.lua: non-blocking XREADGROUP lane by lane, one round trip, one slot since the lanes share the
partition's hash tag): first each lower lane's reserve, then the rest from lane 0 down. Only when every stream of
the group is empty does the reader block, on all of them at once (scripts cannot block).

The reserve is the floor share: `priority_floor` of the entries read from the partition, for each lane below 0.
Reads are often small (a worker reads as soon as a few places are free), so the share is kept as a credit across
reads: each read adds `count * floor` to a lane's credit, the reserve is its whole part, and what the lane took
pays it back. A lane that ran dry is owed nothing (its credit drops to 0): a floor is a share of the reads while
the lane has a backlog, not a debt saved up while it had none.
"""

from __future__ import annotations

from typing import Any

from ..app import Handler
from ..keys import PartitionKeys


class LaneSet:
    """The lanes of one partition that one group reads, with each lane's floor credit."""

    __slots__ = ("credit", "handler", "keys", "names", "streams")

    def __init__(self, handler: Handler[Any], keys: list[PartitionKeys]) -> None:
        self.handler = handler
        self.keys = sorted(keys, key=lambda k: k.lane or 0)  # lane 0 first, as read_lanes.lua expects
        self.names = [k.stream for k in self.keys]
        self.streams = [name.encode() for name in self.names]
        self.credit = [0.0] * len(self.keys)

    def reserves(self, count: int, floor: float) -> list[int]:
        """Each lane's reserve for a read of `count` entries (lane 0 needs none: it is read first anyway)."""
        credit = self.credit
        out = [0]
        for lane in range(1, len(credit)):
            credit[lane] += count * floor
            out.append(int(credit[lane]))
        return out

    def settle(self, reserves: list[int], taken: list[int]) -> None:
        """Pay each lane's credit back with what the read gave it; a lane that gave less than its reserve is empty."""
        credit = self.credit
        for lane in range(1, len(credit)):
            credit[lane] = 0.0 if taken[lane] < reserves[lane] else max(0.0, credit[lane] - taken[lane])


def group_lanes(sources: list[tuple[Handler[Any], PartitionKeys]]) -> list[LaneSet]:
    """The lane sets of the laned streams among (handler, keys) pairs: one per (handler, partition)."""
    by_partition: dict[tuple[int, str], list[PartitionKeys]] = {}
    handlers: dict[tuple[int, str], Handler[Any]] = {}
    for handler, keys in sources:
        if keys.lane is None:
            continue
        at = (id(handler), keys.hash_tag)
        by_partition.setdefault(at, []).append(keys)
        handlers[at] = handler
    return [LaneSet(handlers[at], keys) for at, keys in by_partition.items()]
