"""Unit tests (no Redis): settings refuse values that would break something, and keep the zeros that mean something."""

from __future__ import annotations

import dataclasses
import math

import pytest

from streamproc import ConfigError, Settings
from streamproc.settings import _LIMITS
from tests.inproc import FAST

NUMBER_FIELDS = [f.name for f in dataclasses.fields(Settings) if f.type in ("int", "float")]


def test_the_defaults_and_the_test_suites_fast_timings_are_valid() -> None:
    Settings()
    Settings(**FAST)


@pytest.mark.parametrize("name", sorted(_LIMITS))
def test_each_limit_refuses_the_value_below_it_and_names_the_setting(name: str) -> None:
    low, high, why = _LIMITS[name]
    Settings(**{name: int(low)})
    with pytest.raises(ConfigError, match=f"setting {name} \\(STREAMPROC_{name.upper()}\\) must be") as refused:
        Settings(**{name: int(low) - 1})
    assert why in str(refused.value)
    if high != math.inf:
        Settings(**{name: int(high)})
        with pytest.raises(ConfigError, match=f"between {low:g} and {high:g}"):
            Settings(**{name: int(high) + 1})


@pytest.mark.parametrize("name", NUMBER_FIELDS)
def test_no_number_setting_may_be_negative(name: str) -> None:
    with pytest.raises(ConfigError, match=f"setting {name} "):
        Settings(**{name: -1})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_grace_period_must_be_finite(value: float) -> None:
    # A stop must finish within grace_period_s plus one read deadline; NaN slipped through `value < 0`.
    with pytest.raises(ConfigError, match="grace_period_s"):
        Settings(grace_period_s=value)


def test_a_zero_dedup_window_is_refused_with_the_reason() -> None:
    # SET PX 0 is an error: each publish with an event id appended and then failed, and each retry appended again.
    with pytest.raises(ConfigError, match=r"STREAMPROC_DEDUP_WINDOW_MS.*at least 1.*another copy"):
        Settings.from_env({"STREAMPROC_DEDUP_WINDOW_MS": "0"})


@pytest.mark.parametrize("name", ["claim_interval_ms", "retry_poll_ms", "trim_interval_ms"])
def test_zero_loop_intervals_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}.*at least 10.*spins"):
        Settings(**{name: 0})


@pytest.mark.parametrize("name", ["lease_ms", "block_ms", "redis_timeout_ms", "batch_size", "redis_max_connections",
                                  "deadletter_max_length", "ingest_max_body_bytes", "ingest_max_batch"])
def test_zero_is_refused_where_it_breaks(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings(**{name: 0})


@pytest.mark.parametrize("name", [
    "max_backlog",  # off
    "backlog_check_ms",  # check at every publish
    "retention_ms",  # keep no acknowledged history
    "retention_max_length",  # no length limit
    "consumer_gc_idle_ms",  # remove consumers as soon as they own nothing
    "processes",  # one per CPU
    "metrics_port",  # no endpoint
    "grace_period_s",  # hand unfinished work back at once
    "ingest_retry_after_s",  # retry at once
    "ingest_coalesce_max",  # one request per append
])
def test_zeros_with_a_meaning_are_kept(name: str) -> None:
    assert getattr(Settings(**{name: 0}), name) == 0


def test_the_redis_url_needs_a_scheme_redis_py_knows() -> None:
    for url in ("redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"):
        Settings(redis_url=url)
    with pytest.raises(ConfigError, match="redis_url must start with"):
        Settings(redis_url="localhost:6379")


def test_the_memory_policy_override_is_off_unless_asked_for() -> None:
    assert Settings().allow_evicting_memory_policy is False
    assert Settings.from_env({"STREAMPROC_ALLOW_EVICTING_MEMORY_POLICY": "1"}).allow_evicting_memory_policy is True
