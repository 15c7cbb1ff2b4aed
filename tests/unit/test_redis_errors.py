"""The one table of Redis failure kinds: what each error reply means to a loop (wait, recreate, or stop)."""

from __future__ import annotations

import pytest
from redis import exceptions as rx
from redis._parsers.base import BaseParser

from streamproc.redis.errors import Failure, classify, is_transient


def reply(text: str) -> rx.RedisError:
    """The exception redis-py raises for an error reply, made by redis-py's own parser."""
    error = BaseParser.parse_error(text)
    assert isinstance(error, rx.RedisError)
    return error


@pytest.mark.parametrize("text", [
    "READONLY You can't write against a read only replica.",
    "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
])
def test_transient_replies_are_outages(text: str) -> None:
    assert classify(reply(text)) is Failure.OUTAGE


def test_connection_failures_and_deadlines_are_outages() -> None:
    for exc in (rx.ConnectionError("reset"), rx.TimeoutError("deadline"), ConnectionResetError(), TimeoutError()):
        assert classify(exc) is Failure.OUTAGE


def test_out_of_memory_is_its_own_kind_and_transient() -> None:
    oom = reply("OOM command not allowed when used memory > 'maxmemory'.")
    assert classify(oom) is Failure.MEMORY
    assert is_transient(oom)


@pytest.mark.parametrize("text", [
    "NOGROUP No such key 'ns:ev:{t:0}' or consumer group 'g' in XREADGROUP with GROUP option",
    "UNBLOCKED the stream key no longer exists",
])
def test_a_vanished_group_or_stream_is_nogroup(text: str) -> None:
    assert classify(reply(text)) is Failure.NOGROUP


@pytest.mark.parametrize("text", [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "NOPERM this user has no permissions to run the 'xadd' command",
    "ERR Error compiling script (new function): user_script:1: unexpected symbol",
    "ERR unknown command 'XAUTOCLAIM', with args beginning with:",
    "ERR user_script:31: attempt to perform arithmetic on local 'own' (a nil value)",
])
def test_what_retrying_cannot_fix_is_fatal(text: str) -> None:
    assert classify(reply(text)) is Failure.FATAL
    assert not is_transient(reply(text))
