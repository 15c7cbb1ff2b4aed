"""A real supervisor process (tests/crashapp.py) whose children die about a second after they start: restarts come
further and further apart, as its log and timing show, and the crash loop is reported once; a child that finds
Redis changed to an evicting policy stops with one line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.crashapp import EXIT_STATUS, POLICY
from tests.helpers import wait_for
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# configure_logging's text format: "2026-05-09 07:35:25,123 ERROR [pid] logger: message"
LINE = re.compile(r"^(\S+ \S+) (\w+) \[(\d+)\] ([\w.]+): (.*)$", re.MULTILINE)
DEATH = re.compile(rf"exited with {EXIT_STATUS}; restarting in ([\d.]+)s \(it ran ([\d.]+)s; death (\d+) in a row\)")
DEATHS = 5


@dataclass(frozen=True)
class Logged:
    at: float
    message: str


def supervisor_lines(text: str, pid: int) -> list[Logged]:
    """The supervisor's own log lines (its children write to the same output)."""
    return [Logged(datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp(), message)
            for when, _, who, _, message in LINE.findall(text) if int(who) == pid]


def start_supervisor(redis_url: str, ns: str, log: Path) -> subprocess.Popen[bytes]:
    """`python -m tests.crashapp`: a supervisor of one child that dies a second after it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(REDIS_URL=redis_url, CRASHAPP_NS=ns, CRASHAPP_AFTER_S="1.0")
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.crashapp"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.timeout(120)
async def test_children_that_crash_after_a_second_are_restarted_further_apart_each_time(
        redis_url: str, ns: str, tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    proc = start_supervisor(redis_url, ns, log)
    try:
        await wait_for(lambda: proc.poll() is not None or len(DEATH.findall(log.read_text())) >= DEATHS + 1, 90,
                       message=f"{DEATHS + 1} deaths")
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = supervisor_lines(log.read_text(), proc.pid)
    deaths = [(line, DEATH.search(line.message)) for line in lines]
    deaths_found = [(line, m) for line, m in deaths if m is not None][:DEATHS]
    print("\n".join(line.message for line in lines))

    # The delay doubles from death to death, up to its cap, although no child lived less than a second.
    assert [float(m.group(1)) for _, m in deaths_found] == [0.2, 0.4, 0.8, 1.6, 1.6]
    assert [int(m.group(3)) for _, m in deaths_found] == [1, 2, 3, 4, 5]
    assert all(float(m.group(2)) >= 1.0 for _, m in deaths_found)
    # ... and really separates a death from the next start.
    starts = [line.at for line in lines if line.message.startswith("started worker process")]
    for death, m in deaths_found:
        restart = min(at for at in starts if at >= death.at)
        assert float(m.group(1)) - 0.01 <= restart - death.at < float(m.group(1)) + 2.0
    # One crash-loop warning, at the third death (POLICY.loop_deaths within the window).
    warnings = [line for line in lines if line.message.startswith("crash loop:")]
    assert len(warnings) == 1, [w.message for w in warnings]
    assert warnings[0].message.startswith(f"crash loop: {POLICY.loop_deaths} worker process deaths in the last 60s")
    third, fourth = deaths_found[POLICY.loop_deaths - 1][0], deaths_found[POLICY.loop_deaths][0]
    assert third.at <= warnings[0].at <= fourth.at


@pytest.mark.timeout(120)
async def test_a_child_that_finds_an_evicting_redis_stops_with_one_line_and_is_restarted_later(
        ns: str, tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    with RedisServer() as server:
        proc = start_supervisor(server.url, ns, log)
        try:
            await wait_for(lambda: "running groups" in log.read_text(), 60, message="a first child running")
            client = aioredis.Redis.from_url(server.url)
            try:  # the operator changes the policy under running workers; the first child dies on its own
                await client.config_set("maxmemory-policy", "allkeys-lru")
            finally:
                await client.aclose()
            refused = re.compile(r"worker process (\d+) stopped: Redis's maxmemory-policy is allkeys-lru")
            found = await wait_for(lambda: refused.search(log.read_text()), 60, message="a child refusing")
            assert isinstance(found, re.Match)
            await wait_for(lambda: f"worker process {found.group(1)} exited with 2; restarting" in log.read_text(),
                           30, message="the supervisor restarting the refused child")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in log.read_text()
