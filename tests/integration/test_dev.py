"""`streamproc dev` as a user runs it: one command brings up a throwaway Redis, the ingest and the workers; an
event posted over HTTP gets processed; Ctrl-C stops everything, exits 0 and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for
from tests.redis_server import free_port, ping
from tests.spawn import Spawned, running, spawning


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    yield from spawning()


def redis_server_pid(port: int) -> int | None:
    """The redis-server serving `port`, found in /proc (dev starts it in a session of its own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
            except OSError:
                continue
            # redis-server retitles itself "redis-server 127.0.0.1:<port>"; before that, its argv has --port <port>
            if words and b"redis-server" in words[0] and (f"127.0.0.1:{port}".encode() in words
                                                           or str(port).encode() in words):
                return int(entry.name)
    return None


async def processed(client: aiohttp.ClientSession, url: str) -> float:
    try:
        async with client.get(url) as resp:
            text = await resp.text()
    except aiohttp.ClientConnectionError:
        return 0.0
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "streamproc_events_processed_total")


async def test_dev_runs_everything_and_stops_cleanly_on_ctrl_c(ns: str, spawned: Spawned) -> None:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("STREAMPROC_")}
    env.update({"METRICSAPP_NS": ns, "STREAMPROC_BLOCK_MS": "50", "STREAMPROC_GRACE_PERIOD_S": "2"})
    proc = spawned.streamproc("dev", "tests.metricsapp:app", "--port", str(port), "--metrics-port", str(metrics_port),
                              env=env)

    def printed_redis_url() -> str | None:
        found = re.search(r"^redis\s+(redis://127\.0\.0\.1:(\d+)/0)$", spawned.output(proc), re.MULTILINE)
        if found is None and proc.poll() is not None:
            raise AssertionError(f"dev exited with {proc.returncode}:\n{spawned.output(proc)}")
        return found.group(1) if found else None

    redis_url = str(await wait_for(printed_redis_url, timeout=20))
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_pid = redis_server_pid(redis_port)
    assert redis_pid is not None and running(redis_pid)
    output = spawned.output(proc)
    assert f"http://127.0.0.1:{port}/v1/events" in output
    assert f"http://127.0.0.1:{metrics_port}/metrics" in output

    worker_pids: set[bytes] = set()
    async with aiohttp.ClientSession() as client:
        async def ingest_up() -> bool:
            try:
                async with client.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ingest_up, timeout=20)
        # Auth is off in dev: no token needed.
        async with client.post(f"http://127.0.0.1:{port}/v1/events", json={"type": "metrics.tick", "n": 1}) as resp:
            assert resp.status == 202, await resp.text()
        await wait_for(lambda: processed(client, f"http://127.0.0.1:{metrics_port}/metrics"), timeout=20)

        redis = aioredis.Redis.from_url(redis_url)
        try:
            worker_pids = await redis.smembers(f"{ns}:pids")
        finally:
            await redis.aclose()
    assert len(worker_pids) == 1

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
    try:
        code = proc.wait(timeout=20)
    except Exception:
        raise AssertionError(f"dev did not stop on Ctrl-C:\n{spawned.output(proc)}") from None
    assert code == 0, spawned.output(proc)
    assert "Traceback" not in spawned.output(proc)
    assert not ping(redis_port), "the throwaway redis-server still answers"
    assert not running(redis_pid), "the throwaway redis-server is still running"
    for pid in worker_pids:
        assert not running(int(pid)), f"worker process {int(pid)} outlived dev"


@pytest.mark.parametrize("via", ["flag", "variable"])
async def test_dev_uses_the_redis_it_is_given_and_ignores_redis_url(ns: str, redis_url: str, spawned: Spawned,
                                                                     via: str) -> None:
    """`dev --redis-url` (or STREAMPROC_DEV_REDIS_URL) means what its help says: that Redis, no throwaway one; a
    REDIS_URL exported for other work is not dev's."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update({"METRICSAPP_NS": ns, "STREAMPROC_BLOCK_MS": "50", "STREAMPROC_GRACE_PERIOD_S": "2",
                "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    given = ["--redis-url", redis_url] if via == "flag" else []
    if via == "variable":
        env["STREAMPROC_DEV_REDIS_URL"] = redis_url
    proc = spawned.streamproc("dev", "tests.metricsapp:app", "--port", str(port), "--metrics-port", str(metrics_port),
                              *given, env=env)

    def printed_redis_url() -> str | None:
        assert proc.poll() is None, spawned.output(proc)
        found = re.search(r"^redis\s+(\S+)$", spawned.output(proc), re.MULTILINE)
        return found.group(1) if found else None

    assert await wait_for(printed_redis_url, timeout=20) == redis_url
    async with aiohttp.ClientSession() as client, client.post(f"http://127.0.0.1:{port}/v1/events",
                                                              json={"type": "metrics.tick", "n": 1}) as resp:
        assert resp.status == 202, await resp.text()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert await wait_for(lambda: redis.smembers(f"{ns}:pids"), timeout=20)  # the workers use it too
    finally:
        await redis.aclose()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 0, spawned.output(proc)
