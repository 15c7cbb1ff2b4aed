"""How a read's count is split over a partition's priority lanes, and the floor credit kept across reads."""

from __future__ import annotations

import pytest

from streamproc.keys import PartitionKeys
from streamproc.worker.lanes import LaneSet, plan


@pytest.mark.parametrize(("count", "lags", "reserves", "takes"), [
    (200, [500, 500, 500], [0, 20, 20], [160, 20, 20]),  # every lane backlogged: lower lanes get their reserve
    (200, [0, 500, 500], [0, 20, 20], [0, 180, 20]),  # lane 0 empty: lane 1 fills the rest, lane 2 its reserve
    (200, [50, 0, 5], [0, 20, 20], [50, 0, 5]),  # less than the count in all: all of it
    (200, [0, 0, 0], [0, 20, 20], [0, 0, 0]),  # nothing anywhere
    (200, [-1, 10, 10], [0, 20, 20], [180, 10, 10]),  # an unknown lag: read as much as it is given
    (10, [500, 500, 500], [0, 8, 8], [0, 8, 2]),  # reserves past the count: the nearer lane first, never over
    (1, [500, 500, 500], [0, 0, 1], [0, 0, 1]),  # a credit that reached 1 takes a read of 1
])
def test_plan(count: int, lags: list[int], reserves: list[int], takes: list[int]) -> None:
    got = plan(count, lags, reserves)
    assert got == takes and sum(got) <= count


def test_floor_credit_holds_over_small_reads_and_is_not_saved_up_while_empty() -> None:
    lanes = LaneSet(None, [PartitionKeys("ns", "t", 0, lane) for lane in (2, 0, 1)])  # type: ignore[arg-type]
    assert [k.lane for k in lanes.keys] == [0, 1, 2]
    lane2 = 0
    for _ in range(1_000):  # reads of 3 with every lane backlogged: lane 2 gets 10% of the entries
        reserves = lanes.reserves(3, 0.1)
        takes = plan(3, [10**6, 10**6, 10**6], reserves)
        lanes.settle(reserves, takes)
        lane2 += takes[2]
    assert lane2 == 300
    for _ in range(100):  # lane 2 empty: nothing owed
        reserves = lanes.reserves(3, 0.1)
        lanes.settle(reserves, plan(3, [10**6, 10**6, 0], reserves))
    assert lanes.credit[2] < 1
