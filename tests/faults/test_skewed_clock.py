"""A worker whose clock is an hour ahead (libfaketime, as `faketime -f +1h`) after one with the right time.
Retry due times and leases come from Redis's clock, so the skewed worker runs no retry before it is due."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from streamproc import Settings
from tests.helpers import wait_for
from tests.procapp import Later, make_app
from tests.redis_server import RedisServer
from tests.spawn import Spawned, spawning

FAKETIME = shutil.which("faketime")
DELAY_S = 1.5
EVENTS = 40
# Leases short enough that a worker trusting its own clock would think every other worker's lease ran out.
ENV = {
    "STREAMPROC_LEASE_MS": "2000",
    "STREAMPROC_BLOCK_MS": "50",
    "STREAMPROC_CLAIM_INTERVAL_MS": "50",
    "STREAMPROC_RETRY_POLL_MS": "20",
    "STREAMPROC_GRACE_PERIOD_S": "2",
}


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    yield from spawning()


def worker_env(ns: str, url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return {**base, **ENV, "PROCAPP_NS": ns, "REDIS_URL": url, "PYTHONPATH": os.getcwd(),
            # uvloop's timers run on the monotonic clock: leave it alone, skew only the wall clock
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def test_a_worker_an_hour_ahead_runs_no_retry_early(ns: str, fresh_redis: RedisServer,
                                                          spawned: Spawned) -> None:
    """The worker with the right time runs every first attempt and schedules the retries; then the one an hour
    ahead takes over. Trusting its own clock it would find every retry an hour overdue and run it at once."""
    assert FAKETIME, "faketime is missing: scripts/bootstrap.sh installs it (apt-get install faketime)"
    env = worker_env(ns, fresh_redis.url)
    args = ("worker", "tests.procapp:app", "--inline", "--group", "later")
    redis = aioredis.Redis.from_url(fresh_redis.url)
    publisher = make_app(ns, Settings(redis_url=fresh_redis.url))  # declares the groups, so they exist first
    try:
        normal = spawned.streamproc(*args, env=env)
        await publisher.publish_many([Later(delay=DELAY_S) for _ in range(EVENTS)])
        await wait_for(lambda: _count(redis, f"{ns}:attempted:1", normal, spawned), timeout=30)
        normal.send_signal(signal.SIGTERM)
        assert normal.wait(timeout=30) == 0, spawned.output(normal)
        skewed = spawned.streamproc(*args, env=env, prefix=(FAKETIME, "-f", "+1h"))
        await wait_for(lambda: _count(redis, f"{ns}:attempted:2", skewed, spawned), timeout=30)
        first = {k: int(v) for k, v in (await redis.hgetall(f"{ns}:attempted:1")).items()}
        second = {k: int(v) for k, v in (await redis.hgetall(f"{ns}:attempted:2")).items()}
        gaps = sorted(second[k] - first[k] for k in first)
        print(f"retries started {gaps[0]}..{gaps[-1]} ms after the failure (delay {DELAY_S * 1000:.0f} ms)")
        assert gaps[0] >= DELAY_S * 1000 - 50, "no retry ran before it was due"
        runs = [int(v) for v in (await redis.hgetall(f"{ns}:runs")).values()]
        assert len(runs) == EVENTS and all(r == 2 for r in runs), f"each event ran twice in all: {runs}"
        starts = [entry.decode().split(":")[1] for entry in await redis.lrange(f"{ns}:started", 0, -1)]
        retried_by = set(starts[EVENTS:])  # (faketime runs the worker as its child: pid is faketime's)
        assert len(retried_by) == 1 and str(normal.pid) not in retried_by, "the skewed worker ran every retry"
    finally:
        await publisher.aclose()
        await redis.aclose()


async def _count(redis: aioredis.Redis, key: str, proc: subprocess.Popen[bytes], spawned: Spawned) -> bool:
    assert proc.poll() is None, spawned.output(proc)
    return int(await redis.hlen(key)) == EVENTS
