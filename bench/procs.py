"""Running measured code in processes of its own (multiprocessing spawn), and starting them all at once.

    result = await call(fn, job)        fn(job) in a fresh spawned process; returns what it returns
    proc = start(fn, job)               a long-running child (a worker); stop(proc) sends SIGTERM, then SIGKILL
    await release(redis, n)             children that called wait_for_go() start together; returns that moment

The barrier lets several worker processes start reading at the same instant, after their imports and
connections are made, so a throughput window never includes a process's start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import redis
import redis.asyncio as aioredis

J = TypeVar("J")
R = TypeVar("R")

SPAWN = multiprocessing.get_context("spawn")
READY_KEY = "bench:barrier:ready"
GO_KEY = "bench:barrier:go"


async def call(fn: Callable[[J], R], job: J, limit_s: float = 600.0) -> R:
    """Run fn(job) in a new spawned process and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        future = pool.submit(fn, job)
        return await asyncio.wait_for(asyncio.wrap_future(future), limit_s)


def start(fn: Callable[[J], None], job: J) -> multiprocessing.process.BaseProcess:
    proc = SPAWN.Process(target=fn, args=(job,), daemon=True)
    proc.start()
    return proc


async def stop(proc: multiprocessing.process.BaseProcess, grace_s: float = 15.0) -> int | None:
    """SIGTERM (a graceful stop), then SIGKILL if it is still there after `grace_s`; returns its exit code."""
    if proc.pid is not None and proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    await asyncio.to_thread(proc.join, grace_s)
    if proc.is_alive():
        proc.kill()
        await asyncio.to_thread(proc.join)
    return proc.exitcode


def wait_for_go(redis_url: str, timeout_s: float = 120.0) -> None:
    """In a child: say we are ready, then block until the harness releases us."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.rpush(READY_KEY, os.getpid())
        if client.blpop([GO_KEY], timeout=timeout_s) is None:
            raise TimeoutError("the benchmark harness never released this process")
    finally:
        client.close()


async def release(client: aioredis.Redis, count: int, procs: list[multiprocessing.process.BaseProcess],
                  timeout_s: float = 60.0) -> float:
    """Wait until `count` children are ready, release them together; returns time.perf_counter() at release."""
    deadline = time.monotonic() + timeout_s
    while int(await client.llen(READY_KEY)) < count:
        dead = [p for p in procs if not p.is_alive()]
        if dead:
            raise RuntimeError(f"a measured process exited before it was ready (exit code {dead[0].exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {await client.llen(READY_KEY)} of {count} processes got ready")
        await asyncio.sleep(0.01)
    await client.delete(READY_KEY)
    started = time.perf_counter()
    await client.rpush(GO_KEY, *range(count))
    return started


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in KiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int, marker: bytes = b"") -> list[int]:
    """Direct children of a process whose command line contains `marker`, from /proc."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if (int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
                        and marker in (entry / "cmdline").read_bytes()):
                    found.append(int(entry.name))
    return found
