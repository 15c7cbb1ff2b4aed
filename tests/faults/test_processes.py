"""Fault tests with real processes and real signals: `python -m streamproc worker tests.procapp:app` in subprocesses,
SIGKILL / SIGSTOP / SIGTERM sent to them, redis-server killed under them, poison and garbage in the streams.

What the handlers did is read back from Redis (see tests/procapp.py). Every wait polls a condition with a timeout,
and every process a test starts is killed (with its process group) when the test ends.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from streamproc import App, Outgoing, PublishError, Settings, new_event_id, read_deadletters
from streamproc.keys import PartitionKeys
from tests.helpers import Predicate, wait_for
from tests.procapp import CRASH_MAX_DELIVERIES, FAIL_MAX_ATTEMPTS, Crash, Fail, Hold, Mixed, Slow, Work, make_app
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.procapp:app"
LEASE_MS = 250
GRACE_S = 5.0
# Tiny timings, so that leases run out, claims happen and retries come due within a fraction of a second.
FAST_ENV = {
    "STREAMPROC_LEASE_MS": str(LEASE_MS),
    "STREAMPROC_BLOCK_MS": "50",
    "STREAMPROC_CLAIM_INTERVAL_MS": "50",
    "STREAMPROC_RETRY_POLL_MS": "20",
    "STREAMPROC_GRACE_PERIOD_S": str(GRACE_S),
    "STREAMPROC_TRIM_INTERVAL_MS": "500",
    "STREAMPROC_BACKLOG_CHECK_MS": "0",
}
# How long a worker process may take to start (interpreter, imports, first XREADGROUP) on a loaded machine.
START_S = 15.0


def stream_of(ns: str, tag: str) -> str:
    return PartitionKeys(ns, tag, 0).stream


def dlq_of(ns: str, tag: str, group: str) -> str:
    return PartitionKeys(ns, tag, 0).deadletter(group)


class Procs:
    """Starts `streamproc` processes for one test (each in its own process group) and kills them all at the end."""

    def __init__(self, ns: str, redis_url: str, logs: Path) -> None:
        self.ns = ns
        self.redis_url = redis_url
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        return {**base, **FAST_ENV, "PROCAPP_NS": self.ns, "REDIS_URL": self.redis_url, **(extra or {})}

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`streamproc worker tests.procapp:app ARGS` (add "--inline" for one worker without a supervisor)."""
        log = self.logs / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streamproc", "worker", APP, *args], cwd=ROOT,
                                    env=self.env(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append((proc, log))
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=30, check=False)

    def dlq(self, group: str) -> list[dict[str, Any]]:
        done = self.cli("dlq", "list", APP, "--group", group, "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text(errors="replace") for p, log in self.started if p is proc)

    def tails(self) -> str:
        """The end of every process's output, for failure messages."""
        return "\n".join(f"--- {' '.join(map(str, p.args[3:]))} (pid {p.pid}, exit {p.poll()}):\n"
                         f"{log.read_text(errors='replace')[-3000:]}" for p, log in self.started)

    async def wait(self, predicate: Predicate, timeout: float, message: str,  # noqa: ASYNC109 - polled deadline
                   alive: Iterable[subprocess.Popen[bytes]] = ()) -> object:
        """wait_for, failing at once if one of the `alive` processes exits, and with every process's output."""
        must_live = list(alive)

        async def checked() -> object:
            for proc in must_live:
                assert proc.poll() is None, f"process {proc.pid} exited with {proc.returncode} ({message})"
            value = predicate()
            return (await value) if inspect.isawaitable(value) else value

        try:
            return await wait_for(checked, timeout, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tails()}") from None

    async def ready(self, proc: subprocess.Popen[bytes], workers: int = 1) -> None:
        """Wait until `workers` worker processes of `proc` (itself, or a supervisor's children) are reading.

        (Redis 7.0 creates a consumer only when it first reads an entry, so XINFO CONSUMERS cannot tell.)"""

        await self.wait(lambda: self.log_of(proc).count(" running groups ") >= workers, START_S,
                        f"{workers} worker(s) of {proc.pid} reading", alive=[proc])

    def cleanup(self) -> None:
        for proc, _ in self.started:
            for sig in (signal.SIGCONT, signal.SIGKILL):  # a SIGSTOPped group must wake up to die
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def procs(ns: str, redis_url: str, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(ns, redis_url, tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
async def app(ns: str, redis_url: str) -> AsyncIterator[App]:
    """The test's side of the app: the same declarations as the workers', used to publish."""
    a = make_app(ns, Settings(redis_url=redis_url, backlog_check_ms=0))
    try:
        yield a
    finally:
        await a.aclose()


class Records:
    """Reads back what the handlers recorded (see tests/procapp.py)."""

    def __init__(self, redis: aioredis.Redis, ns: str) -> None:
        self.redis = redis
        self.ns = ns

    async def runs(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.redis.hgetall(f"{self.ns}:runs")).items()}

    async def max_inflight(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.redis.hgetall(f"{self.ns}:maxinflight")).items()}

    async def done(self) -> set[str]:
        return {m.decode() for m in await self.redis.smembers(f"{self.ns}:done")}

    async def done_count(self) -> int:
        return int(await self.redis.scard(f"{self.ns}:done"))

    async def started(self) -> list[tuple[str, int]]:
        """(event id, pid) per handler start, in order."""
        raw = await self.redis.lrange(f"{self.ns}:started", 0, -1)
        return [(eid, int(pid)) for eid, pid in (r.decode().rsplit(":", 1) for r in raw)]

    async def release(self, event_id: str | None = None) -> None:
        """Let a Hold handler finish (all of them without an id)."""
        await self.redis.set(f"{self.ns}:release" + (f":{event_id}" if event_id else ""), b"1")


@pytest.fixture
def records(redis: aioredis.Redis, ns: str) -> Records:
    return Records(redis, ns)


async def pending(redis: aioredis.Redis, stream: str, group: str) -> dict[str, int]:
    """Pending entries of a group by consumer name."""
    info = await redis.xpending(stream, group)
    return {c["name"].decode(): int(c["pending"]) for c in info["consumers"]}


async def consumers(redis: aioredis.Redis, stream: str, group: str) -> list[str]:
    try:
        return [c["name"].decode() for c in await redis.xinfo_consumers(stream, group)]
    except aioredis.ResponseError:  # the stream or group does not exist yet
        return []


def owned_by(names: dict[str, int] | list[str], pid: int) -> list[str]:
    """Consumer names of process `pid` (names are host:pid:suffix)."""
    return [n for n in names if n.split(":")[1] == str(pid)]


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> int:  # noqa: ASYNC109 - a polled deadline
    code = await wait_for(lambda: proc.poll() is not None, timeout, message=f"process {proc.pid} to exit")
    assert code
    return proc.returncode


def worker_children(supervisor_pid: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    try:
        text = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    except FileNotFoundError:
        return set()
    found = set()
    for pid in map(int, text.split()):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


async def publish_ids(app: App, events: list[Any]) -> list[str]:
    return [p.event_id for p in await app.publish_many(events)]


# 1. SIGKILL mid-batch ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_sigkill_of_one_worker_mid_batch_loses_nothing(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    total, concurrency, batch = 5_000, 20, 50
    stream = stream_of(ns, "proc.work")
    ids: list[str] = []
    for start in range(0, total, 500):  # published before any worker runs: the groups exist from the stream start
        ids += await publish_ids(app, [Work(n=n, pause=0.002) for n in range(start, start + 500)])
    args = ("--inline", "--group", "work", "--concurrency", str(concurrency))
    env = {"STREAMPROC_BATCH_SIZE": str(batch)}
    victim, survivor = procs.worker(*args, env=env), procs.worker(*args, env=env)

    async def victim_mid_batch() -> int:
        """Entries the victim holds, once both workers are busy and the run is well under way (else 0)."""
        by_consumer = await pending(redis, stream, "work")
        held = sum(by_consumer[n] for n in owned_by(by_consumer, victim.pid))
        both_busy = held and owned_by(by_consumer, survivor.pid)
        return held if both_busy and 500 <= await records.done_count() <= total - 1_500 else 0

    held_at_kill = await procs.wait(victim_mid_batch, START_S + 20, "the victim mid-batch", alive=[victim, survivor])
    os.kill(victim.pid, signal.SIGKILL)
    assert await exited(victim, 5) == -signal.SIGKILL

    await procs.wait(lambda: _count_is(records, total), 60, f"all {total} events done", alive=[survivor])
    assert await records.done() == set(ids)
    await procs.wait(lambda: _no_pending(redis, stream, "work"), 10, "every entry acked", alive=[survivor])
    runs = await records.runs()
    assert set(runs) == set(ids)
    duplicates = sum(1 for n in runs.values() if n > 1)
    with capsys.disabled():
        print(f"\nduplicates: {duplicates} (the victim had {held_at_kill} entries pending just before the SIGKILL; "
              f"bound: concurrency + batch = {concurrency + batch})")
    assert max(runs.values()) <= 2  # only the victim's entries ran again, and only once more
    assert duplicates <= concurrency + batch


async def _count_is(records: Records, n: int) -> bool:
    return await records.done_count() == n


async def _no_pending(redis: aioredis.Redis, stream: str, group: str) -> bool:
    return int((await redis.xpending(stream, group))["pending"]) == 0


# 2. Hung handlers and frozen processes -------------------------------------------------------------------------------


async def test_handler_hanging_past_its_lease_is_not_run_twice(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    stream = stream_of(ns, "proc.slow")
    workers = [procs.worker("--inline", "--group", "slow") for _ in range(2)]
    for w in workers:
        await procs.ready(w)
    hang = 3 * LEASE_MS / 1000
    ids = await publish_ids(app, [Slow(seconds=hang) for _ in range(3)])

    await procs.wait(lambda: _count_is(records, 3), 10 + hang, "slow events done", alive=workers)
    # The other worker's claimer ran every 50 ms meanwhile: heartbeats kept the lease, so nothing was reclaimed.
    assert await records.runs() == dict.fromkeys(ids, 1)
    assert await records.max_inflight() == dict.fromkeys(ids, 1)
    await procs.wait(lambda: _no_pending(redis, stream, "slow"), 5, "slow events acked", alive=workers)


async def test_frozen_worker_has_its_entry_reclaimed(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    stream = stream_of(ns, "proc.hold")
    workers = [procs.worker("--inline", "--group", "hold") for _ in range(2)]
    for w in workers:
        await procs.ready(w)
    [event_id] = await publish_ids(app, [Hold()])

    started = await procs.wait(records.started, 10, "the hold handler starting", alive=workers)
    assert isinstance(started, list)
    [(_, frozen_pid)] = started
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        # After the lease the other worker reclaims the entry (the frozen one's heartbeat is frozen too) and runs it.
        restarted = await procs.wait(lambda: _started_times(records, 2), 10, "a second start", alive=workers)
        assert isinstance(restarted, list)
        [(_, first), (again, other)] = restarted
        assert (first, again) == (frozen_pid, event_id)
        assert other != frozen_pid and other in {w.pid for w in workers}
        await records.release(event_id)
        await procs.wait(lambda: _count_is(records, 1), 10, "the event done", alive=workers)
        await procs.wait(lambda: _no_pending(redis, stream, "hold"), 5, "the entry acked", alive=workers)
        assert (await records.runs())[event_id] == 2
    finally:
        os.kill(frozen_pid, signal.SIGCONT)


async def _started_times(records: Records, n: int) -> list[tuple[str, int]] | None:
    started = await records.started()
    return started if len(started) >= n else None


# 3. Redis restarts under a running worker ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_worker_survives_redis_restart(procs: Procs, fresh_redis: RedisServer, ns: str) -> None:
    procs.redis_url = fresh_redis.url
    app = make_app(ns, Settings(redis_url=fresh_redis.url, backlog_check_ms=0))
    redis = aioredis.Redis.from_url(fresh_redis.url)
    records = Records(redis, ns)
    try:
        before = [Outgoing(Work(n=n, pause=0.02), event_id=new_event_id()) for n in range(150)]
        await app.publish_many(before)  # acknowledged by Redis (AOF, fsync always) before the restart
        worker = procs.worker("--inline", "--group", "work", "--concurrency", "4")
        await procs.wait(lambda: _at_least(records, 20), START_S, "processing under way", alive=[worker])
        assert await records.done_count() < len(before), "the restart should come during processing"

        fresh_redis.kill()  # a crash: no shutdown, the AOF is what survives
        fresh_redis.start()

        after = [Outgoing(Work(n=n), event_id=new_event_id()) for n in range(150, 250)]
        # The pooled connections died with the server: publishing raises PublishError until it reconnects.
        await procs.wait(lambda: _publish(app, after), 10, "publishing after the restart", alive=[worker])
        wanted = {o.event_id for o in before + after}
        await procs.wait(lambda: _done_includes(records, wanted), 40, "every event processed", alive=[worker])
        stream = stream_of(ns, "proc.work")
        await procs.wait(lambda: _quiet(redis, stream, "work"), 15, "every entry settled", alive=[worker])
        assert worker.poll() is None
    finally:
        await app.aclose()
        await redis.aclose()


async def _at_least(records: Records, n: int) -> bool:
    try:
        return await records.done_count() >= n
    except aioredis.ConnectionError:
        return False


async def _publish(app: App, events: list[Outgoing]) -> bool:
    try:
        await app.publish_many(events)  # same event ids: a publish that did get through is not appended twice
    except PublishError:
        return False
    return True


async def _done_includes(records: Records, wanted: set[str]) -> bool:
    try:
        return wanted <= await records.done()
    except aioredis.ConnectionError:
        return False


async def _quiet(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """Nothing pending and nothing scheduled for retry in `group`."""
    retry = stream.replace(":ev:", ":retry:") + f":{group}"
    return await _no_pending(redis, stream, group) and await redis.zcard(retry) == 0


# 4. Poison events ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_poison_events_are_dead_lettered_and_others_keep_flowing(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    failing_worker = procs.worker("--inline", "--group", "fail")
    supervisor = procs.worker("--processes", "1", "--group", "crash", "--group", "work")
    alive = [failing_worker, supervisor]
    work_ids = await publish_ids(app, [Work(n=n) for n in range(10)])
    [fail_id] = await publish_ids(app, [Fail()])
    [crash_id] = await publish_ids(app, [Crash()])
    work_ids += await publish_ids(app, [Work(n=n) for n in range(10, 20)])

    fail_dlq, crash_dlq = dlq_of(ns, "proc.fail", "fail"), dlq_of(ns, "proc.crash", "crash")
    await procs.wait(lambda: redis.xlen(fail_dlq), START_S + 5, "the failing event dead-lettered", alive=alive)
    await procs.wait(lambda: redis.xlen(crash_dlq), START_S + 20, "the crashing event dead-lettered", alive=alive)
    work_ids += await publish_ids(app, [Work(n=n) for n in range(20, 30)])
    await procs.wait(lambda: _done_includes(records, set(work_ids)), START_S, "other events done", alive=alive)

    runs = await records.runs()
    assert runs[fail_id] == FAIL_MAX_ATTEMPTS
    assert runs[crash_id] == CRASH_MAX_DELIVERIES
    crash_pids = {pid for eid, pid in await records.started() if eid == crash_id}
    assert len(crash_pids) == CRASH_MAX_DELIVERIES  # each run killed a different (restarted) worker process
    assert procs.log_of(supervisor).count("exited with -9; restarting") == CRASH_MAX_DELIVERIES

    [failed] = procs.dlq("fail")
    assert failed["event_id"] == fail_id and failed["type"] == "proc.fail" and failed["group"] == "fail"
    assert failed["attempts"] == FAIL_MAX_ATTEMPTS
    assert failed["reason"] == f"failed {FAIL_MAX_ATTEMPTS} of max_attempts={FAIL_MAX_ATTEMPTS}"
    assert failed["error_type"] == "RuntimeError" and "always fails" in failed["error_message"]
    [crashed] = procs.dlq("crash")
    assert crashed["event_id"] == crash_id and crashed["type"] == "proc.crash" and crashed["group"] == "crash"
    assert crashed["attempts"] == CRASH_MAX_DELIVERIES + 1  # the delivery that found it over the limit
    assert f"max_deliveries={CRASH_MAX_DELIVERIES}" in crashed["reason"]
    assert procs.dlq("work") == []

    for group, tag in (("fail", "proc.fail"), ("crash", "proc.crash"), ("work", "proc.work")):
        await procs.wait(lambda g=group, t=tag: _quiet(redis, stream_of(ns, t), g), 5, f"{group} settled",
                         alive=alive)


@pytest.mark.timeout(120)
async def test_a_poison_entry_does_not_take_the_entries_beside_it_to_the_dead_letter_stream(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    """One entry kills every worker that runs it, in a batch with 30 others running beside it (max_deliveries is
    2). Only the poison is dead-lettered: entries a dead worker held without starting are not blamed, and entries
    reclaimed more than once run one at a time, so the poison's crashes stop counting against its neighbours."""
    supervisor = procs.worker("--processes", "1", "--group", "mixed")
    innocent = await publish_ids(app, [Mixed(pause=0.3) for _ in range(10)])
    [poison] = await publish_ids(app, [Mixed(poison=True)])
    innocent += await publish_ids(app, [Mixed(pause=0.3) for _ in range(20)])
    dlq = dlq_of(ns, "proc.mixed", "mixed")
    await procs.wait(lambda: redis.xlen(dlq), START_S * 3, "the poison dead-lettered", alive=[supervisor])
    await procs.wait(lambda: _done_includes(records, set(innocent)), START_S * 2, "every other entry done",
                     alive=[supervisor])
    [dead] = procs.dlq("mixed")
    assert dead["event_id"] == poison
    runs = await records.runs()
    extra = {eid: runs[eid] - 1 for eid in innocent if runs[eid] > 1}
    print(f"innocent entries run again after the poison's crashes: {len(extra)} of {len(innocent)} "
          f"(at most {CRASH_MAX_DELIVERIES} runs each; the poison ran {runs[poison]} times)")
    assert all(runs[eid] <= CRASH_MAX_DELIVERIES for eid in innocent)
    await procs.wait(lambda: _quiet(redis, stream_of(ns, "proc.mixed"), "mixed"), 10, "mixed settled",
                     alive=[supervisor])


# 5. Garbage in a stream ----------------------------------------------------------------------------------------------


async def test_garbage_entries_are_dead_lettered_with_their_raw_bytes(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    stream = stream_of(ns, "proc.work")
    good = await publish_ids(app, [Work(n=n) for n in range(5)])  # also creates the stream and its groups
    garbage: list[dict[bytes, bytes]] = [
        {b"junk": b"\xff\xfe\x00 not an entry \x80"},  # no envelope at all, not even UTF-8
        {b"event_id": b"g2", b"type": b"proc.work", b"occurred_at": b"1", b"data": b"\xc1\xc1\xff"},  # not msgpack
        {b"event_id": b"g3", b"type": b"proc.work", b"occurred_at": b"1", b"data": b"plain text, not msgpack"},
        {b"event_id": b"g4", b"type": b"proc.other", b"occurred_at": b"1", b"data": b"\x80"},  # wrong type
        {b"event_id": b"g5", b"type": b"proc.work", b"occurred_at": b"yesterday", b"data": b"\x80"},
    ]
    garbage_ids = [await redis.xadd(stream, fields) for fields in garbage]  # type: ignore[arg-type]
    good += await publish_ids(app, [Work(n=n) for n in range(5, 10)])
    worker = procs.worker("--inline", "--group", "work")

    dlq = dlq_of(ns, "proc.work", "work")
    await procs.wait(lambda: _length_is(redis, dlq, len(garbage)), START_S, "garbage dead-lettered", alive=[worker])
    await procs.wait(lambda: _done_includes(records, set(good)), 10, "good events done", alive=[worker])
    more = await publish_ids(app, [Work(n=n) for n in range(10, 15)])
    await procs.wait(lambda: _done_includes(records, set(more)), 10, "the worker kept going", alive=[worker])

    # Exact raw bytes, read with the library's reader.
    dead = {d.stream_id: d for d in await read_deadletters(redis, [dlq])}
    assert set(dead) == {i.decode() for i in garbage_ids}
    for entry_id, fields in zip(garbage_ids, garbage, strict=True):
        d = dead[entry_id.decode()]
        assert d.fields == fields
        assert d.reason.startswith("undecodable: "), d.reason
        assert d.attempts == 1 and d.group == "work"

    # The command line lists them with their reasons; fields as text, or as {"base64": ...} when not UTF-8 (lossless).
    listed = {row["stream_id"]: row for row in procs.dlq("work")}
    assert set(listed) == set(dead)
    for entry_id, fields in zip(garbage_ids, garbage, strict=True):
        row = listed[entry_id.decode()]
        assert row["reason"] == dead[entry_id.decode()].reason
        assert {k: base64.b64decode(v["base64"]) if isinstance(v, dict) else v.encode()
                for k, v in row["fields"].items()} == {k.decode(): v for k, v in fields.items()}
    assert "entry has no 'event_id' field" in listed[garbage_ids[0].decode()]["reason"]
    assert listed[garbage_ids[2].decode()]["fields"]["data"] == "plain text, not msgpack"
    assert "unknown type 'proc.other'" in listed[garbage_ids[3].decode()]["reason"]


async def _length_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) >= n


# 6. Graceful stop ----------------------------------------------------------------------------------------------------


async def _started_count(records: Records, n: int) -> bool:
    return len(await records.started()) >= n


async def test_sigterm_lets_inflight_handlers_finish_and_stops_reading(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    stream = stream_of(ns, "proc.hold")
    worker = procs.worker("--inline", "--group", "hold", "--concurrency", "2", "--grace-period", str(GRACE_S))
    held = await publish_ids(app, [Hold(), Hold()])
    await procs.wait(lambda: _started_count(records, 2), START_S, "both handlers running", alive=[worker])

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    late = new_event_id()
    await records.release(late)  # it would finish at once if this worker still started it
    await app.publish(Hold(), event_id=late)
    for event_id in held:
        await records.release(event_id)
    assert await exited(worker, GRACE_S + 5) == 0, procs.log_of(worker)
    assert time.monotonic() - sent < GRACE_S + 5

    assert await records.done() == set(held)  # finished within the grace period ...
    assert late not in {eid for eid, _ in await records.started()}  # ... and nothing new was started ...
    still_pending = {p["message_id"] for p in await redis.xpending_range(stream, "hold", "-", "+", 100)}
    late_entry = {eid for eid, f in await redis.xrange(stream) if f[b"event_id"] == late.encode()}
    assert still_pending <= late_entry  # ... and acked: only the late one may be pending (read, then handed back)

    successor = procs.worker("--inline", "--group", "hold")
    await procs.wait(lambda: _done_includes(records, {late}), START_S, "a new worker taking the rest",
                     alive=[successor])
    await procs.wait(lambda: _no_pending(redis, stream, "hold"), 5, "all acked", alive=[successor])


@pytest.mark.parametrize("poll", [0.01, 0.0], ids=["sleeping", "redis-bound"])
async def test_unfinished_work_is_left_pending_after_the_grace_period(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str, poll: float) -> None:
    """Handlers still running when the grace period ends are cancelled and left pending, even ones that are nearly
    always in the middle of a Redis command (`poll=0`; that needs cancellation to reach them, see App.redis)."""
    stream = stream_of(ns, "proc.hold")
    grace = 0.3
    worker = procs.worker("--inline", "--group", "hold", "--grace-period", str(grace))
    held = await publish_ids(app, [Hold(poll=poll), Hold(poll=poll)])
    await procs.wait(lambda: _started_count(records, 2), START_S, "both handlers running", alive=[worker])
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert await exited(worker, grace + 5) == 0, procs.log_of(worker)
    assert time.monotonic() - sent < grace + 5

    # Cancelled after the grace period, never acked: still pending, owned by the stopped worker.
    assert await records.done() == set()
    by_consumer = await pending(redis, stream, "hold")
    assert sum(by_consumer.values()) == 2 and owned_by(by_consumer, worker.pid)
    assert "still running after the grace period" in procs.log_of(worker)

    successor = procs.worker("--inline", "--group", "hold")
    await procs.wait(lambda: _started_count(records, 4), START_S, "the new worker reclaiming both", alive=[successor])
    await records.release()
    await procs.wait(lambda: _done_includes(records, set(held)), 10, "both done by the new worker", alive=[successor])
    await procs.wait(lambda: _no_pending(redis, stream, "hold"), 5, "all acked", alive=[successor])
    assert await records.runs() == dict.fromkeys(held, 2)
    assert {pid for _, pid in (await records.started())[2:]} == {successor.pid}


async def test_sigterm_to_the_supervisor_drains_every_child(
        procs: Procs, app: App, redis: aioredis.Redis, records: Records, ns: str) -> None:
    stream = stream_of(ns, "proc.hold")
    supervisor = procs.worker("--processes", "2", "--group", "hold", "--grace-period", str(GRACE_S))
    await procs.ready(supervisor, workers=2)
    children = worker_children(supervisor.pid)
    assert len(children) == 2
    held = await publish_ids(app, [Hold(), Hold(), Hold()])
    await procs.wait(lambda: _started_count(records, 3), 10, "handlers running", alive=[supervisor])

    sent = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    await records.release()
    assert await exited(supervisor, GRACE_S + 10) == 0, procs.log_of(supervisor)
    assert time.monotonic() - sent < GRACE_S + 10
    assert await records.done() == set(held)
    assert await _no_pending(redis, stream, "hold")
    assert not _alive(children)


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


# 7. Supervisor restarts ----------------------------------------------------------------------------------------------


async def test_supervisor_restarts_a_killed_child_and_stops_on_sigterm(
        procs: Procs, app: App, records: Records) -> None:
    supervisor = procs.worker("--processes", "2", "--group", "work")
    await procs.ready(supervisor, workers=2)
    first = worker_children(supervisor.pid)
    assert len(first) == 2
    ids = await publish_ids(app, [Work(n=n) for n in range(50)])

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    now = await procs.wait(lambda: _replaced(supervisor.pid, first, victim), START_S, "a new child",
                           alive=[supervisor])
    assert isinstance(now, set)
    [new_child] = now - first
    ids += await publish_ids(app, [Work(n=n) for n in range(50, 100)])
    await procs.wait(lambda: _done_includes(records, set(ids)), START_S, "processing continues", alive=[supervisor])
    await procs.ready(supervisor, workers=3)
    assert f":{new_child}:" in procs.log_of(supervisor)  # the new child's consumer name (host:pid:suffix)

    sent = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert await exited(supervisor, GRACE_S + 10) == 0, procs.log_of(supervisor)
    assert time.monotonic() - sent < GRACE_S + 10
    assert "exited with -9; restarting" in procs.log_of(supervisor)
    assert not _alive(now)


def _replaced(supervisor_pid: int, before: set[int], victim: int) -> set[int] | None:
    now = worker_children(supervisor_pid)
    return now if len(now) == 2 and victim not in now and len(now - before) == 1 else None


# 8. Consumer names ---------------------------------------------------------------------------------------------------


async def test_consumer_names_identify_host_and_process(
        procs: Procs, app: App, redis: aioredis.Redis, ns: str) -> None:
    stream = stream_of(ns, "proc.work")
    await app.publish(Work(n=1))
    worker = procs.worker("--inline", "--group", "work")
    names = await procs.wait(lambda: consumers(redis, stream, "work"), START_S, "a consumer", alive=[worker])
    assert isinstance(names, list)
    [name] = names
    host, pid, suffix = name.split(":")
    assert host == socket.gethostname() and pid == str(worker.pid) and suffix
