"""Scenario 7, peers (only with `--scenario peers`): the same publish and drain measurements for faststream
(Redis Streams), taskiq (taskiq-redis stream broker), streaq and saq, beside streamproc, in one run.

The peers live in their own virtualenv, bench/.peers-venv (gitignored), created here on first use with the
latest releases from PyPI. Each peer runs as `python -m bench.peerlibs.NAME ...` in that virtualenv against a
fresh redis-server: publish (one await per event, and 100 concurrent tasks), then a preload and a drain with
concurrency 100 and a no-op handler. Each step is time-boxed; a peer that does not install or run is reported
as such, with its error, and the scenario moves on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.context import Bench
from bench.drain import Case
from bench.drain import measure as drain_measure
from bench.procs import call
from bench.publish import PUBLISH, PUBLISH_TASKS, PublishJob, Sizes, publish_main
from bench.redis_server import fresh_redis
from bench.report import Runs, Section, spread, table

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers-venv"
PYTHON = VENV / "bin" / "python"
# pip requirement -> the program that drives it (bench/peerlibs/NAME.py)
PEERS = {"faststream[redis]": "faststream_run", "taskiq-redis": "taskiq_run", "streaq": "streaq_run",
         "saq": "saq_run"}
SUPPORT = ["uvloop", "hiredis"]
INSTALL_LIMIT_S = 600.0
STEP_LIMIT_S = 300.0


@dataclass(frozen=True, slots=True)
class PeerSizes:
    events: int  # publish from 100 tasks, and drain; one-await publish uses a tenth


FULL = PeerSizes(events=20_000)
SMOKE = PeerSizes(events=1_000)


@dataclass(slots=True)
class Peer:
    requirement: str
    program: str
    version: str = ""
    error: str = ""
    runs: Runs = field(default_factory=Runs)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=INSTALL_LIMIT_S)


def _version(requirement: str) -> str:
    name = requirement.split("[")[0]
    out = subprocess.run([str(PYTHON), "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def install(peers: list[Peer]) -> None:
    """Create the virtualenv if needed and install each peer on its own, so that one failure spares the rest."""
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=INSTALL_LIMIT_S)
        _pip(*SUPPORT)
    for peer in peers:
        try:
            done = _pip(peer.requirement)
        except subprocess.TimeoutExpired:
            peer.error = f"pip install {peer.requirement} took over {INSTALL_LIMIT_S:.0f}s"
            continue
        if done.returncode:
            peer.error = f"pip install {peer.requirement} failed: {done.stderr.strip()[-500:]}"
        else:
            peer.version = _version(peer.requirement)


def _step(peer: Peer, mode: str, url: str, events: int) -> dict[str, float]:
    argv = [str(PYTHON), "-m", f"bench.peerlibs.{peer.program}", mode, "--redis-url", url, "--events", str(events),
            "--concurrency", "100"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_LIMIT_S, cwd=HERE.parent)
    if done.returncode:
        raise RuntimeError(f"{mode} exited with {done.returncode}: {done.stderr.strip()[-600:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def _run_peer(bench: Bench, peer: Peer, sizes: PeerSizes) -> None:
    async with fresh_redis(bench.redis_binary) as server:
        for _ in range(bench.runs):
            try:
                await server.client.flushall()
                published = await asyncio.to_thread(_step, peer, "publish", server.url, sizes.events)
                await server.client.flushall()
                await asyncio.to_thread(_step, peer, "preload", server.url, sizes.events)
                drained = await asyncio.to_thread(_step, peer, "drain", server.url, sizes.events)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                peer.error = f"{type(exc).__name__}: {exc}"[-700:]
                return
            for key, value in {**published, **drained}.items():
                peer.runs.add(key, value)


async def _streamproc(bench: Bench, sizes: PeerSizes) -> Runs:
    runs = Runs()
    publish_sizes = Sizes(awaited=sizes.events // 10, concurrent=sizes.events, batched=1000)
    case = Case("no-op, concurrency 100", "noop", "bench.apps:noop", concurrency=100)
    async with fresh_redis(bench.redis_binary) as server:
        for _ in range(bench.runs):
            published = await call(publish_main, PublishJob(server.url, publish_sizes))
            runs.add("publish", published[PUBLISH])
            runs.add("publish_tasks", published[PUBLISH_TASKS])
            runs.add("drain", await drain_measure(server, case, sizes.events, 300.0))
    return runs


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    peers = [Peer(requirement, program) for requirement, program in PEERS.items()]
    began = time.monotonic()
    await asyncio.to_thread(install, peers)
    installed = time.monotonic() - began
    ours = await _streamproc(bench, sizes)
    for peer in peers:
        if not peer.error:
            await _run_peer(bench, peer, sizes)
    return _section(bench, sizes, ours, peers, installed)


def _section(bench: Bench, sizes: PeerSizes, ours: Runs, peers: list[Peer], installed: float) -> Section:
    section = Section("peers", "7. Peers")
    rows = [["streamproc (this commit)", spread(ours.get("publish")), spread(ours.get("publish_tasks")),
             spread(ours.get("drain")), ""]]
    for p in peers:
        name = f"{p.requirement.split('[')[0]} {p.version}".strip()
        if p.runs.values:
            rows.append([name, spread(p.runs.get("publish")), spread(p.runs.get("publish_tasks")),
                         spread(p.runs.get("drain")), p.error.replace("|", "/").replace("\n", " ")[:300]])
        else:
            rows.append([name, "—", "—", "—", p.error.replace("|", "/").replace("\n", " ")[:300] or "not run"])
    section.lines += [
        f"{bench.runs} run(s); {sizes.events // 10:,} events published one await at a time, {sizes.events:,} from "
        f"100 concurrent tasks, {sizes.events:,} drained by one consumer process with concurrency 100 and a no-op "
        "handler (each library's own serialization and defaults otherwise). Peers drain-timed from their first to "
        "their last handler start inside the consumer; streamproc from release to all acknowledged (as in the "
        f"drain scenario). Peers installed into bench/.peers-venv in {installed:.0f} s.", "",
        *table(["library", "publish, one await (events/s)", "publish, 100 tasks (events/s)",
                "drain, concurrency 100 (events/s)", "notes"], rows), ""]
    return section
