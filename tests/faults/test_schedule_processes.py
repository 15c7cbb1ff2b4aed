"""A 1-second schedule evaluated for 10 s by 3 worker processes under 2 supervisors (`streamproc worker` with
--processes 2, and another with --processes 1), as on two machines: every tick is appended exactly once (no gap,
no duplicate) and handled once. Then the CLI: list, pause, resume, trigger, and an unknown schedule (exit 2)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.helpers import wait_for
from tests.spawn import Spawned, spawning

ROOT = Path(__file__).resolve().parents[2]
STREAM = "{ns}:ev:{{cron.tick:0}}"


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    yield from spawning()


def environment(redis_url: str, ns: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(REDIS_URL=redis_url, CRONAPP_NS=ns, PYTHONPATH=str(ROOT))
    return env


async def tick_ids(redis: aioredis.Redis, ns: str) -> list[str]:
    entries = await redis.xrange(STREAM.format(ns=ns))
    return [f[b"event_id"].decode() for _, f in entries if f[b"event_id"].startswith(b"cron:every-second:")]


def tick_of(event_id: str) -> datetime:
    return datetime.fromisoformat(event_id.removeprefix("cron:every-second:").replace("Z", "+00:00"))


@pytest.mark.timeout(90)
async def test_three_processes_under_two_supervisors_append_each_tick_once(
        spawned: Spawned, redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    env = environment(redis_url, ns)
    supervisors = [spawned.streamproc("worker", "tests.cronapp:app", "--processes", str(n), env=env) for n in (2, 1)]
    await wait_for(lambda: sum(spawned.output(s).count("running groups") for s in supervisors) >= 3, 30,
                   message="3 worker processes running")
    start = len(await tick_ids(redis, ns))

    async def ten_more() -> bool:  # the proof is 10 ticks (10 s) the three processes evaluate together
        return len(await tick_ids(redis, ns)) >= start + 10

    await wait_for(ten_more, 30, interval=0.2, message="10 more ticks appended")
    for s in supervisors:
        s.send_signal(signal.SIGTERM)
    for s in supervisors:
        assert s.wait(timeout=30) == 0, spawned.output(s)
    ids = await tick_ids(redis, ns)
    counts = Counter(ids)
    ticks = sorted(tick_of(i) for i in counts)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    runs = {k.decode(): int(v) for k, v in (await redis.hgetall(f"{ns}:runs")).items()}
    calls = Counter({k.decode(): int(v) for k, v in (await redis.hgetall(f"{ns}:calls")).items()})
    print(f"{len(ids)} appends of {len(counts)} ticks ({len(ids) - start} while watched), "
          f"duplicates: {[i for i, n in counts.items() if n > 1]}, gaps: {[g for g in gaps if g != 1.0]}, "
          f"function runs per tick: {sorted(Counter(calls.values()).items())} (runs: ticks)")
    # the processes raced for the ticks (their function ran in several of them), and the dedup kept one append
    assert sum(calls.values()) > len(counts), calls
    assert all(n == 1 for n in counts.values()), counts
    assert gaps == [1.0] * len(gaps), gaps
    assert len(ids) - start >= 10
    assert {i: runs.get(i, 0) for i in counts} == dict.fromkeys(counts, 1)  # each tick handled once, too
    logs = "".join(spawned.output(s) for s in supervisors)
    # no tick failed (runner.py's line for it) and nothing crashed; other lines may say "failed" harmlessly
    assert "Traceback" not in logs and not re.findall(r"schedule [\w-]+: tick \S+ failed", logs), logs[-3000:]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamproc", "schedules", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


async def test_the_schedules_commands(redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    env = environment(redis_url, ns)
    listed = cli("list", "tests.cronapp:app", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert sorted(rows) == ["every-second", "weekday-digest"]
    digest = rows["weekday-digest"]
    assert (digest["expression"], digest["tz"], digest["paused"], digest["last_fired_tick"]) == (
        "0 9 * * mon-fri", "Europe/Berlin", False, None)
    assert datetime.fromisoformat(digest["next_fire"]).strftime("%H:%M %a") in {
        f"09:00 {d}" for d in ("Mon", "Tue", "Wed", "Thu", "Fri")}
    assert rows["every-second"]["every_s"] == 1.0

    paused = cli("pause", "tests.cronapp:app", "weekday-digest", env=env)
    assert (paused.returncode, paused.stdout) == (0, "weekday-digest paused\n"), paused.stderr
    again = cli("pause", "tests.cronapp:app", "weekday-digest", "--json", env=env)
    assert json.loads(again.stdout) == {"name": "weekday-digest", "paused": True, "changed": False}
    table = cli("list", "tests.cronapp:app", env=env)
    assert "2 schedule(s), 1 paused" in table.stdout, table.stdout

    fired = cli("trigger", "tests.cronapp:app", "weekday-digest", "--json", env=env)
    assert fired.returncode == 0, fired.stderr
    done = json.loads(fired.stdout)
    assert done["appended"] == 2 and [i.rsplit(":", 1)[1] for i in done["event_ids"]] == ["0", "1"]
    assert all(i.startswith("cron:weekday-digest:trigger:") for i in done["event_ids"])
    entries = await redis.xrange(STREAM.format(ns=ns))
    assert Counter(f[b"event_id"].decode() for _, f in entries) == Counter(done["event_ids"])

    resumed = cli("resume", "tests.cronapp:app", "weekday-digest", env=env)
    assert (resumed.returncode, resumed.stdout) == (0, "weekday-digest resumed\n")
    unknown = cli("trigger", "tests.cronapp:app", "nightly", env=env)
    assert unknown.returncode == 2 and unknown.stderr.startswith("streamproc: error: the app has no schedule 'nightly'")
    assert len(unknown.stderr.splitlines()) == 1
