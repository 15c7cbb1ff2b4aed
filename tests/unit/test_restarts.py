"""Unit tests (no Redis, no processes): the supervisor's restart backoff and crash-loop detection."""

from __future__ import annotations

from streamproc.worker.restarts import CrashLoop, RestartPolicy

POLICY = RestartPolicy(first_delay_s=0.25, max_delay_s=30.0, healthy_after_s=60.0, loop_deaths=5, loop_window_s=300.0)


def delays(lifetimes: list[float]) -> list[float]:
    """The restart delays of one slot whose children ran these many seconds each."""
    deaths, out = 0, []
    for ran in lifetimes:
        deaths, delay = POLICY.after_death(deaths, ran)
        out.append(delay)
    return out


def test_children_that_die_after_a_few_seconds_back_off_more_each_time() -> None:
    # The old rule (ran 5 s: restart after 0.25 s again) restarted these every 6.25 s forever.
    assert delays([6.0] * 9) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_child_that_ran_healthy_is_restarted_promptly_again() -> None:
    assert delays([1.0, 1.0, 1.0, 61.0, 1.0]) == [0.25, 0.5, 1.0, 0.25, 0.5]


def test_a_crash_loop_is_reported_once_per_window() -> None:
    loop = CrashLoop(POLICY)
    reports = {t: loop.died(float(t)) for t in range(0, 400, 10)}  # a death every 10 s
    assert {t: n for t, n in reports.items() if n is not None} == {40: 5, 340: 30}  # the 5th death, a window later


def test_deaths_spread_wider_than_the_window_are_no_loop() -> None:
    loop = CrashLoop(POLICY)
    assert all(loop.died(t * 100.0) is None for t in range(20))


def test_a_crash_loop_of_days_keeps_the_longest_delay() -> None:
    policy = RestartPolicy()
    deaths, delay = policy.after_death(5_000, ran_s=1.0)  # 2 ** 5000 would overflow a float
    assert (deaths, delay) == (5_001, policy.max_delay_s)
