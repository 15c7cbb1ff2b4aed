"""Reading the priority lanes of a partition: most urgent first, with a floor share for every lane with a backlog.

XREADGROUP's COUNT applies to each stream it names, so one plain read over all lanes of a partition would take as
much from lane 2 as from lane 0. Instead a read of a group with lanes is two round trips: first one script call
per partition (redis/lua/lane_lags.lua) says how many entries each lane holds for the group, then `plan` splits
the read's count over the lanes (each lower lane's reserve first, then the rest from lane 0 down, never more than
a lane holds) and plain XREADGROUPs, one per lane, take exactly that. (A first version read the lanes inside a
script: entries passed through Lua cost Redis about six times the read itself, a third of the drain rate.) Only
when every stream of the group is empty does the reader block, on all of them at once. A lane whose lag Redis
cannot tell (-1: entries deleted ahead of the group, which can stay so for good) is planned as much as it is given;
when it gives less, `refill` reads the shortfall from the partition's other lanes in one more round trip.

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
        self.keys = sorted(keys, key=lambda k: k.lane or 0)  # lane 0 first, as lane_lags.lua and plan expect
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


def plan(count: int, lags: list[int], reserves: list[int]) -> list[int]:
    """How many entries to read from each lane: first each lower lane's reserve (lane 1 first), then what is left
    of `count` from lane 0 down; never more than a lane holds (a lag of -1: unknown, as much as it is given)."""
    left = count
    takes = [0] * len(lags)
    have = [count if lag < 0 else lag for lag in lags]
    for lane in range(1, len(lags)):
        takes[lane] = min(reserves[lane], have[lane], left)
        left -= takes[lane]
    for lane in range(len(lags)):
        if left <= 0:
            break
        more = min(have[lane] - takes[lane], left)
        takes[lane] += more
        left -= more
    return takes


def refill(lags: list[int], takes: list[int], read: list[int]) -> list[int]:
    """A second read for a partition where a lane of unknown lag (-1) gave less than `plan` gave it (`read` per
    lane): the shortfall, from the lanes known to hold more, lane 0 first. A lane that gave less than planned holds
    no more (or another consumer was first). Without it a lane whose lag Redis cannot tell (entries deleted ahead of
    the group) and that is in fact empty would take most of every read's count and return nothing for it."""
    short = sum(takes) - sum(read)
    if short <= 0 or -1 not in lags:
        return [0] * len(lags)
    left = [0 if lag < 0 or got < took else lag - got for lag, took, got in zip(lags, takes, read, strict=True)]
    return plan(short, left, [0] * len(lags))


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
