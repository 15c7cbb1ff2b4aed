"""`python -m handlers.demo` (what `make demo` runs) end to end: `streamproc dev` as a child process (its own
redis-server, ingest, workers and notification sink), traffic posted over HTTP, progress lines read from the
workers' metrics, and a clean stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from handlers.demo import GroupCounts, group_counts
from streamproc.devtools.localredis import LocalRedis, LocalRedisError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_bounded_demo_run_processes_events_and_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "handlers.demo", "--seconds", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    final = done.stdout[done.stdout.index("\nfinal "):]
    processed = {group: int(n) for group, n in re.findall(r"^\s+(\S+)\s+processed=(\d+)", final, re.M)}
    assert set(processed) == {"analytics", "digest", "feeds", "notifications", "reminders", "social-graph"}, output
    # the digest's schedule fires at 06:00 UTC, not within a 3-second demo
    assert all(n > 0 for group, n in processed.items() if group != "digest"), output
    assert re.search(r"^final\s+posted=\d+\s+sink: accepted=[1-9]\d*", final, re.M), output
    assert "streamproc dev stopped cleanly" in done.stdout, output


def test_the_demo_reads_per_group_counts_from_the_workers_metrics() -> None:
    exposition = """\
# TYPE streamproc_events_processed_total counter
streamproc_events_processed_total{group="feeds",type="card.added"} 5.0
streamproc_events_processed_total{group="feeds",type="url.shared"} 2.0
streamproc_events_processed_total{group="notifications",type="card.added"} 4.0
# TYPE streamproc_events_retried_total counter
streamproc_events_retried_total{group="notifications",type="card.added"} 3.0
# TYPE streamproc_events_dead_lettered_total counter
streamproc_events_dead_lettered_total{group="feeds",type="url.shared"} 1.0
# TYPE streamproc_group_lag gauge
streamproc_group_lag{group="feeds",stream="s:ev:{card.added:0}"} 7.0
streamproc_group_lag{group="feeds",stream="s:ev:{card.added:1}"} 1.0
# TYPE streamproc_events_published_total counter
streamproc_events_published_total{type="card.added"} 9.0
"""
    assert group_counts(exposition) == {
        "feeds": GroupCounts(processed=7, dead=1, unread=8),
        "notifications": GroupCounts(processed=4, retried=3),
    }


def test_local_redis_starts_answers_and_leaves_nothing_behind() -> None:
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
        directory = server.directory
        assert directory is not None and directory.exists()
    assert not server.running
    assert not directory.exists()


def test_local_redis_explains_a_missing_or_broken_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(LocalRedisError, match="apt-get install -y redis-server"):
        LocalRedis().start()
    with pytest.raises(LocalRedisError, match="did not start: exited with 1"):
        LocalRedis(binary="/bin/false").start()
