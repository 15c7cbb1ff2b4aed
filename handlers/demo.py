"""`python -m handlers.demo` (`make demo`): the social example running end to end, over HTTP, on free ports.

It runs `streamproc dev handlers.app:app` as a child process (a throwaway redis-server, the ingest server, the
workers and the notification sink they push to), posts a follow graph and then a steady stream of cards, links,
follows and collections to the ingest endpoint, and prints every second, per handler group, what the workers
processed, retried and dead-lettered (from their /metrics endpoint). Ctrl-C (or `--seconds N`) stops the traffic,
lets the groups catch up for a moment, prints the final counts, stops `streamproc dev` with SIGINT and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from handlers.app import app as social_app
from handlers.traffic import IngestClient, Traffic, post_graph, post_steadily, sleep_unless
from streamproc.devtools import LocalRedis, LocalRedisError

READY_TIMEOUT_S = 60.0
GRAPH_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 10.0
DEV_STOP_TIMEOUT_S = 90.0
# Per group, summed over event types (counters) or streams (gauges).
METRICS = {
    "streamproc_events_processed_total": "processed",
    "streamproc_events_retried_total": "retried",
    "streamproc_events_dead_lettered_total": "dead",
    "streamproc_group_lag": "unread",
    "streamproc_group_pending": "pending",
}


@dataclass(slots=True)
class GroupCounts:
    processed: float = 0  # handler runs that succeeded
    retried: float = 0  # events scheduled for another attempt
    dead: float = 0  # events given up on
    unread: float = 0  # appended, not yet read by the group
    pending: float = 0  # read, not yet settled


def group_counts(exposition: str) -> dict[str, GroupCounts]:
    """Per group, from the workers' Prometheus text exposition."""
    out: dict[str, GroupCounts] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            attribute = METRICS.get(sample.name)
            group = sample.labels.get("group")
            if attribute is None or group is None:
                continue
            counts = out.setdefault(group, GroupCounts())
            setattr(counts, attribute, getattr(counts, attribute) + sample.value)
    return out


class SinkCounts(msgspec.Struct):
    """The part of the sink's GET /stats that the report shows."""

    accepted: int = 0
    duplicates: int = 0
    answered: dict[str, int] = msgspec.field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Endpoints:
    ingest_port: int
    metrics_port: int
    sink_port: int

    @property
    def ingest(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def sink_stats(self) -> str:
        return f"http://127.0.0.1:{self.sink_port}/stats"


def dev_command(args: argparse.Namespace, endpoints: Endpoints) -> list[str]:
    command = [sys.executable, "-m", "streamproc", "dev", "handlers.app:app", "--port", str(endpoints.ingest_port),
               "--metrics-port", str(endpoints.metrics_port), "--processes", str(args.processes)]
    return command + (["--redis-url", args.redis_url] if args.redis_url else [])


def dev_environment(args: argparse.Namespace, endpoints: Endpoints) -> dict[str, str]:
    """The dev process's environment: ours, plus where its sink listens, how often it fails on purpose, and unread
    reminders a second after a notification (not an hour), so that the demo shows delayed events too."""
    return {**os.environ, "SINK_PORT": str(endpoints.sink_port), "SINK_FAIL_503": str(args.fail_503),
            "SINK_FAIL_400": str(args.fail_400), "REMIND_AFTER_S": os.environ.get("REMIND_AFTER_S", "1")}


class Demo:
    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.endpoints = Endpoints(free_port(), free_port(), free_port())
        self.groups = sorted(social_app.groups())
        self.traffic = Traffic(args.users)
        self.stop = asyncio.Event()
        self.failed = False
        self.started = time.monotonic()
        self.last: dict[str, GroupCounts] = {}
        self.dev: asyncio.subprocess.Process | None = None
        self.client: IngestClient | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        with self.log_path.open("wb") as log_file:
            # A session of its own: the terminal's Ctrl-C reaches only us, and we pass it on once the counts are in.
            self.dev = await asyncio.create_subprocess_exec(
                *dev_command(self.args, self.endpoints), env=dev_environment(self.args, self.endpoints),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                await self._main(session)
        finally:
            await self._stop_dev()
        return 1 if self.failed else 0

    async def _main(self, session: aiohttp.ClientSession) -> None:
        if not await self._wait_ready(session):
            return
        e = self.endpoints
        print(f"streamproc dev is up (its log: {self.log_path})\n  ingest   {e.ingest}/v1/events\n"
              f"  metrics  {e.metrics}\n  sink     {e.sink_stats}", flush=True)
        self.client = IngestClient(session, e.ingest)
        follows = self.traffic.graph(self.args.follows)
        await post_graph(self.client, follows)
        print(f"posted a graph of {len(follows)} follows among {self.args.users} users; waiting for the "
              "social-graph group to process it", flush=True)
        if not await self._wait_for_graph(session, len(follows)):
            return
        print(f"posting ~{self.args.rate:.0f} events/s to the ingest; Ctrl-C stops", flush=True)
        self.started, self.last = time.monotonic(), await self._counts(session)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(post_steadily(self.client, self.traffic, self.args.rate, self.stop))
            tg.create_task(self._watch_loop(session))
            if self.args.seconds is not None:
                tg.create_task(self._stop_after(self.args.seconds))
        await self._drain(session)
        print(await self._report(session, final=True), flush=True)
        for problem in self.client.stats.problems:  # the ingest refused a request: the generator has a bug
            print(f"the ingest refused a request: {problem}", flush=True)

    async def _wait_ready(self, session: aiohttp.ClientSession) -> bool:
        """Until the ingest is ready, the workers' metrics answer and the sink answers."""
        urls = [f"{self.endpoints.ingest}/readyz", self.endpoints.metrics, self.endpoints.sink_stats]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.stop.is_set() and not self._dev_died():
            if all([await _answers(session, url) for url in urls]):
                return True
            if time.monotonic() > deadline:
                return self._fail(f"streamproc dev was not ready within {READY_TIMEOUT_S:.0f}s")
            await sleep_unless(self.stop, 0.1)
        return False

    async def _wait_for_graph(self, session: aiohttp.ClientSession, follows: int) -> bool:
        deadline = time.monotonic() + GRAPH_TIMEOUT_S
        while not self.stop.is_set() and not self._dev_died():
            graph = (await self._counts(session)).get("social-graph", GroupCounts())
            if graph.processed + graph.dead >= follows:
                return True
            if time.monotonic() > deadline:
                return self._fail(f"the workers did not process the graph within {GRAPH_TIMEOUT_S:.0f}s")
            await sleep_unless(self.stop, 0.1)
        return False

    async def _watch_loop(self, session: aiohttp.ClientSession) -> None:
        while not await sleep_unless(self.stop, 1.0):
            print(await self._report(session), flush=True)
            if self._dev_died():
                return

    async def _stop_after(self, seconds: float) -> None:
        await sleep_unless(self.stop, seconds)
        self.stop.set()

    async def _drain(self, session: aiohttp.ClientSession) -> None:
        """Give the groups a moment to read and settle what was posted, so the final counts are nearly whole.
        (Events waiting for a retry keep waiting: their backoff can be minutes.)"""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and not self._dev_died():
            counts = await self._counts(session)
            if counts and all(c.unread == 0 and c.pending == 0 for c in counts.values()):
                return
            await asyncio.sleep(0.2)

    async def _counts(self, session: aiohttp.ClientSession) -> dict[str, GroupCounts]:
        text = await _get_text(session, self.endpoints.metrics)
        return group_counts(text) if text is not None else {}

    async def _report(self, session: aiohttp.ClientSession, final: bool = False) -> str:
        """A block of lines: what was posted and what the sink got, then one line per group."""
        counts = await self._counts(session)
        stats = self.client.stats if self.client is not None else None
        posted = stats.accepted if stats is not None else 0
        refused = f" refused={stats.refused}" if stats is not None and stats.refused else ""
        sink = await self._sink_line(session)
        lines = [f"{'final' if final else f'{time.monotonic() - self.started:5.0f}s'}  posted={posted}{refused}"
                 f"  sink: {sink}"]
        for group in self.groups:
            now, before = counts.get(group, GroupCounts()), self.last.get(group, GroupCounts())
            rate = "" if final else f" (+{now.processed - before.processed:.0f}/s)"
            lines.append(f"    {group:14} processed={now.processed:.0f}{rate} retried={now.retried:.0f} "
                         f"dead-lettered={now.dead:.0f} unread={now.unread:.0f} pending={now.pending:.0f}")
        self.last = counts
        return "\n".join(lines)

    async def _sink_line(self, session: aiohttp.ClientSession) -> str:
        text = await _get_text(session, self.endpoints.sink_stats)
        if text is None:
            return "?"
        stats = msgspec.json.decode(text, type=SinkCounts)
        answers = " ".join(f"{status}={n}" for status, n in stats.answered.items() if status != "202")
        return f"accepted={stats.accepted} {answers} duplicates={stats.duplicates}".replace("  ", " ")

    def _fail(self, message: str) -> bool:
        print(f"{message}; stopping", flush=True)
        self.failed = True
        self.stop.set()
        return False

    def _dev_died(self) -> bool:
        if self.dev is None or self.dev.returncode is None:
            return False
        return not self._fail(f"streamproc dev exited unexpectedly with {self.dev.returncode}")

    async def _stop_dev(self) -> None:
        dev = self.dev
        if dev is None:
            return
        if dev.returncode is None:
            print("stopping streamproc dev (SIGINT): ingest, workers, sink and Redis", flush=True)
            dev.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(DEV_STOP_TIMEOUT_S):
                code = await dev.wait()
        except TimeoutError:
            print("streamproc dev did not stop in time; killing it", flush=True)
            dev.kill()
            code = await dev.wait()
        if code != 0:
            self.failed = True
            print(f"streamproc dev exited with {code}; the end of its log ({self.log_path}):", flush=True)
            print(_tail(self.log_path), flush=True)
        else:
            print("streamproc dev stopped cleanly; bye", flush=True)


async def _get_text(session: aiohttp.ClientSession, url: str) -> str | None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url) as response:
            if response.status == 200:
                return await response.text()
    return None


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    return await _get_text(session, url) is not None


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m handlers.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--rate", type=float, default=100.0, help="events posted per second (default 100)")
    parser.add_argument("--users", type=int, default=200, help="users in the sample graph (default 200)")
    parser.add_argument("--follows", type=int, default=15, help="follows per user in the graph (default 15)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--fail-503", type=float, default=0.005,
                        help="fraction of notifications the sink answers 503, retried (default 0.005)")
    parser.add_argument("--fail-400", type=float, default=0.0001,
                        help="fraction of notifications the sink answers 400, dead-lettered (default 0.0001)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of a throwaway one")
    # The demo is an entry point: like the CLI, it may read the environment (REDIS_SERVER, as bootstrap.sh does).
    parser.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER") or None,
                        help="redis-server binary for the throwaway Redis (default: $REDIS_SERVER, then PATH)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    fd, name = tempfile.mkstemp(prefix="streamproc-demo-", suffix=".log")
    os.close(fd)
    try:
        with contextlib.ExitStack() as stack:
            if args.redis_server and not args.redis_url:
                # `streamproc dev` finds redis-server on PATH only; a binary named elsewhere is started here.
                args.redis_url = stack.enter_context(LocalRedis(binary=args.redis_server)).url
            return asyncio.run(Demo(args, Path(name)).run())
    except LocalRedisError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
