"""Unit tests (no Redis): what the start-up server check makes of the version and maxmemory-policy it read."""

from __future__ import annotations

import logging

import pytest

from streamproc.errors import ConfigError, UnsupportedServer
from streamproc.redis.server import ServerFacts, judge, parse_version


def test_versions_are_read_from_what_servers_report() -> None:
    assert parse_version("7.0.15") == (7, 0, 15)
    assert parse_version("7.2.4") == (7, 2, 4)
    assert parse_version("255.255.255") == (255, 255, 255)  # an unstable build
    assert parse_version("8.0") == (8, 0)
    assert parse_version("") is None
    assert parse_version(None) is None


@pytest.mark.parametrize("version", [(6, 2, 14), (6, 0, 0), (5, 0, 7)])
def test_servers_older_than_7_0_are_refused(version: tuple[int, ...]) -> None:
    with pytest.raises(UnsupportedServer, match=r"needs Redis 7\.0 or newer") as refused:
        judge(ServerFacts(version, "noeviction", "CONFIG GET"), allow_evicting=False)
    assert refused.value.retriable is False
    assert isinstance(refused.value, ConfigError)


@pytest.mark.parametrize("version", [(7, 0, 0), (7, 2, 4), (8, 0, 1)])
def test_7_0_and_newer_are_accepted(version: tuple[int, ...]) -> None:
    judge(ServerFacts(version, "noeviction", "CONFIG GET"), allow_evicting=False)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                                    "volatile-random", "volatile-ttl", "some-future-policy"])
def test_every_policy_but_noeviction_is_refused_unless_allowed(policy: str, caplog: pytest.LogCaptureFixture,
                                                                ) -> None:
    facts = ServerFacts((7, 0, 15), policy, "INFO memory")
    with pytest.raises(UnsupportedServer, match=f"maxmemory-policy is {policy} \\(INFO memory\\)") as refused:
        judge(facts, allow_evicting=False)
    text = str(refused.value)
    assert "maxmemory-policy noeviction" in text and "STREAMPROC_ALLOW_EVICTING_MEMORY_POLICY=1" in text
    with caplog.at_level(logging.WARNING):
        judge(facts, allow_evicting=True)
    assert f"maxmemory-policy is {policy}" in caplog.text and "running anyway" in caplog.text


def test_what_cannot_be_read_is_warned_about_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        judge(ServerFacts(None, None), allow_evicting=False)
    assert "could not read the Redis server's version" in caplog.text
    assert "could not read Redis's maxmemory-policy" in caplog.text
