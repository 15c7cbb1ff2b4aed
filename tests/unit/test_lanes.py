"""How a read's count is split over a partition's priority lanes, and the floor credit kept across reads."""

from __future__ import annotations

import pytest

from streamproc.keys import PartitionKeys
from streamproc.worker.lanes import LaneSet, plan, refill


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


@pytest.mark.parametrize(("lags", "takes", "read", "again"), [
    ([-1, 5000, 5000], [160, 20, 20], [0, 20, 20], [0, 160, 0]),  # unknown lane 0 empty: the rest from lane 1
    ([-1, 5000, 5000], [160, 20, 20], [60, 20, 20], [0, 100, 0]),  # it held 60
    ([-1, 5000, 5000], [160, 20, 20], [160, 20, 20], [0, 0, 0]),  # it held all it was given: no second read
    ([-1, 10, 10], [180, 10, 10], [0, 10, 10], [0, 0, 0]),  # the known lanes gave all they hold already
    ([-1, -1, 500], [180, 0, 20], [0, 0, 20], [0, 0, 180]),  # two unknown lanes, both empty: neither is read again
    ([-1, 500, 500], [160, 20, 20], [0, 5, 20], [0, 0, 175]),  # lane 1 came up short too (another consumer): not again
    ([500, 500, 500], [160, 20, 20], [0, 0, 0], [0, 0, 0]),  # every lag known: never a second read
])
def test_refill_reads_the_shortfall_of_unknown_lanes_from_the_others(
        lags: list[int], takes: list[int], read: list[int], again: list[int]) -> None:
    assert refill(lags, takes, read) == again


def test_an_empty_lane_of_unknown_lag_does_not_shrink_reads() -> None:
    """The review's case: lane 0's lag unknown but empty, lanes 1 and 2 backlogged; each read still gets 200."""
    lags, reserves = [-1, 5000, 5000], [0, 20, 20]
    takes = plan(200, lags, reserves)
    assert takes == [160, 20, 20]
    read = [0, *takes[1:]]  # what Redis gives: nothing from lane 0
    again = refill(lags, takes, read)
    assert sum(read) + sum(again) == 200 and again[0] == 0


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
