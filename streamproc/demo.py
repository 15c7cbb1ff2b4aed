"""`python -m streamproc.demo` (`make demo`): the social example running end to end on a throwaway Redis.

It starts a private redis-server, starts `streamproc worker handlers.app:app` as a child process, publishes a
social graph (users following each other) and then a steady stream of cards and shared links, and prints every
second, per handler group, what was processed, what is pending, retrying and dead-lettered. Ctrl-C (or
`--seconds N`) stops the publishing, stops the worker gracefully (SIGTERM), stops Redis and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from handlers.app import app as social_app
from handlers.events import CardAddedToLibrary, CollectionCreated, UrlShared, UserFollowed

from .app import App
from .errors import BacklogFull, PublishError
from .event import Event
from .keys import PartitionKeys
from .localredis import LocalRedis, LocalRedisError
from .logs import configure_logging

TICK_S = 0.05
WORKER_STOP_TIMEOUT_S = 60.0
GRAPH_TIMEOUT_S = 60.0
SITES = ("https://arxiv.org/abs/", "https://github.com/", "https://en.wikipedia.org/wiki/", "https://lwn.net/",
         "https://www.nature.com/articles/", "https://blog.example.org/")
TOPICS = ("streams", "consensus", "caching", "rust", "postgres", "typography", "gardening", "jazz", "maps")


def worker_command(redis_url: str, processes: int) -> list[str]:
    return [sys.executable, "-m", "streamproc", "worker", "handlers.app:app", "--processes", str(processes),
            "--redis-url", redis_url]


class Traffic:
    """Plausible social traffic: a few users with many followers, many with few; everyone posts at about the same
    rate (so one card reaches a dozen followers on average, some cards a hundred or more). Mostly cards, some
    links, new follows and collections."""

    def __init__(self, users: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.users = [f"u{i:04d}" for i in range(users)]
        self.popularity = [1.0 / (rank + 1) for rank in range(users)]  # Zipf-like
        self.cards = 0

    def _user(self) -> str:
        return self.rng.choice(self.users)

    def _popular_user(self) -> str:
        return self.rng.choices(self.users, self.popularity)[0]

    def graph(self, follows_each: int) -> list[Event]:
        """Each user follows about `follows_each` others, popular ones more often."""
        out: list[Event] = []
        for follower in self.users:
            followees = {self._popular_user() for _ in range(follows_each)} - {follower}
            out.extend(UserFollowed(follower_id=follower, followee_id=f) for f in sorted(followees))
        return out

    def _url(self) -> str:
        return f"{self.rng.choice(SITES)}{self.rng.choice(TOPICS)}-{self.rng.randrange(10_000)}"

    def event(self) -> Event:
        roll = self.rng.random()
        if roll < 0.70:
            self.cards += 1
            topic = self.rng.choice(TOPICS)
            return CardAddedToLibrary(card_id=f"c{self.cards}", curator_id=self._user(), url=self._url(),
                                      title=f"Notes on {topic}")
        if roll < 0.90:
            # One link in a few hundred is not a web address: the feeds group dead-letters it.
            url = "javascript:alert(1)" if self.rng.random() < 0.005 else self._url()
            return UrlShared(url=url, sharer_id=self._user())
        if roll < 0.97:
            follower, followee = self._user(), self._popular_user()
            if follower != followee:
                return UserFollowed(follower_id=follower, followee_id=followee)
        return CollectionCreated(collection_id=f"col{self.rng.randrange(10**6)}", owner_id=self._user(),
                                 name=f"Best of {self.rng.choice(TOPICS)}")


@dataclass(slots=True)
class GroupProgress:
    processed: int = 0  # read and settled for good: acked after success, or dead-lettered
    pending: int = 0  # read, not settled yet (running, or its consumer died and it awaits reclaim)
    retrying: int = 0  # failed, waiting for its next attempt
    dead: int = 0  # in the group's dead-letter streams
    unread: int = 0  # appended, not yet read by the group (lag)


def streams_by_group(app: App) -> dict[str, list[PartitionKeys]]:
    out: dict[str, list[PartitionKeys]] = {}
    for h in app.handlers:
        out.setdefault(h.group, []).extend(h.route.partitions)
    return out


async def read_progress(app: App) -> dict[str, GroupProgress]:
    """Per group, summed over its streams: XINFO GROUPS (entries-read, pending, lag), retry sets, dead letters."""
    by_group = sorted(streams_by_group(app).items())
    async with app.redis.pipeline(transaction=False) as pipe:
        for group, partitions in by_group:
            for keys in partitions:
                pipe.xinfo_groups(keys.stream)
                pipe.zcard(keys.retry(group))
                pipe.xlen(keys.deadletter(group))
        replies = iter(await pipe.execute(raise_on_error=False))
    out: dict[str, GroupProgress] = {}
    for group, partitions in by_group:
        progress = out[group] = GroupProgress()
        for _ in partitions:
            infos, retrying, dead = next(replies), next(replies), next(replies)
            _add_group_info(progress, group, infos)
            progress.retrying += retrying if isinstance(retrying, int) else 0
            progress.dead += dead if isinstance(dead, int) else 0
        progress.processed -= progress.retrying
    return out


def _add_group_info(progress: GroupProgress, group: str, infos: object) -> None:
    if not isinstance(infos, list):  # the stream does not exist yet
        return
    for info in infos:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) != group:
            continue
        read, pending, lag = info.get("entries-read"), info.get("pending"), info.get("lag")
        pending = pending if isinstance(pending, int) else 0
        progress.pending += pending
        progress.processed += (read if isinstance(read, int) else 0) - pending
        progress.unread += lag if isinstance(lag, int) else 0


class Demo:
    def __init__(self, app: App, args: argparse.Namespace) -> None:
        self.app = app
        self.args = args
        self.traffic = Traffic(args.users)
        self.stop = asyncio.Event()
        self.published = 0
        self.started = time.monotonic()
        self.failed = False
        self.last_report: dict[str, GroupProgress] = {}
        self.worker: asyncio.subprocess.Process | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        self.worker = await asyncio.create_subprocess_exec(
            *worker_command(self.app.settings.redis_url, self.args.processes),
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)  # our Ctrl-C is not the worker's: we stop it
        try:
            await self._main()
        finally:
            await self._stop_worker()
            print(self._report(await read_progress(self.app), final=True), flush=True)
            await self.app.aclose()
        return 1 if self.failed else 0

    async def _main(self) -> None:
        follows = self.traffic.graph(self.args.follows)
        await self.app.publish_many(follows)
        self.published += len(follows)
        print(f"published a graph of {len(follows)} follows among {self.args.users} users; waiting for the "
              "social-graph group to process it", flush=True)
        if not await self._wait_for_graph(len(follows)):
            return
        print(f"publishing ~{self.args.rate} events/s; Ctrl-C stops", flush=True)
        self.started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publish_loop())
            tg.create_task(self._watch_loop())
            if self.args.seconds is not None:
                tg.create_task(self._stop_after(self.args.seconds))

    async def _wait_for_graph(self, follows: int) -> bool:
        deadline = time.monotonic() + GRAPH_TIMEOUT_S
        while not self.stop.is_set() and not self._worker_died():
            if (await read_progress(self.app))["social-graph"].processed >= follows:
                return True
            if time.monotonic() > deadline:
                print(f"the worker did not process the graph within {GRAPH_TIMEOUT_S:.0f}s; stopping", flush=True)
                self.failed = True
                return False
            await self._sleep(0.1)
        return False

    async def _publish_loop(self) -> None:
        next_at, owed = time.monotonic(), 0.0
        while not self.stop.is_set():
            owed += self.args.rate * TICK_S
            count, owed = int(owed), owed - int(owed)
            try:
                await self.app.publish_many(self.traffic.event() for _ in range(count))
                self.published += count
            except BacklogFull as exc:  # the workers are far behind: back off instead of growing Redis
                print(f"backpressure: {exc}; pausing publishing for a second", flush=True)
                await self._sleep(1.0)
            except PublishError as exc:
                print(f"publish failed: {exc}", flush=True)
                await self._sleep(1.0)
            next_at = max(next_at + TICK_S, time.monotonic() - 1.0)  # catch up on short stalls, not long ones
            await self._sleep(next_at - time.monotonic())

    async def _watch_loop(self) -> None:
        while not await self._sleep(1.0):
            print(self._report(await read_progress(self.app)), flush=True)
            if self._worker_died():
                return

    async def _stop_after(self, seconds: float) -> None:
        await self._sleep(seconds)
        self.stop.set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, but wake up at once on stop; True if stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self.stop.wait()
        return self.stop.is_set()

    def _worker_died(self) -> bool:
        if self.worker is None or self.worker.returncode is None:
            return False
        print(f"the worker exited unexpectedly with {self.worker.returncode}; stopping", flush=True)
        self.failed = True
        self.stop.set()
        return True

    async def _stop_worker(self) -> None:
        worker = self.worker
        if worker is None or worker.returncode is not None:
            return
        print("stopping the worker (SIGTERM): in-flight events finish, acks are flushed", flush=True)
        worker.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(WORKER_STOP_TIMEOUT_S):
                code = await worker.wait()
        except TimeoutError:
            print("the worker did not stop in time; killing it", flush=True)
            worker.kill()
            code = await worker.wait()
        if code != 0:
            print(f"the worker exited with {code}", flush=True)
            self.failed = True

    def _report(self, progress: dict[str, GroupProgress], final: bool = False) -> str:
        """A block of lines: what was published, then one line per group (with its rate since the last report)."""
        elapsed = time.monotonic() - self.started
        lines = [f"{'final' if final else f'{elapsed:5.0f}s'}  published={self.published}"]
        for group, p in progress.items():
            before = self.last_report.get(group, GroupProgress())
            rate = "" if final else f" (+{p.processed - before.processed}/s)"
            lines.append(f"    {group:14} processed={p.processed}{rate} pending={p.pending} retrying={p.retrying} "
                         f"dead-lettered={p.dead} unread={p.unread}")
        self.last_report = progress
        return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streamproc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--rate", type=float, default=200.0, help="events published per second (default 200)")
    parser.add_argument("--users", type=int, default=200, help="users in the sample graph (default 200)")
    parser.add_argument("--follows", type=int, default=15, help="follows per user in the graph (default 15)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    # The demo is an entry point: like the CLI, it may read the environment (REDIS_SERVER, as bootstrap.sh does).
    parser.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER") or None,
                        help="redis-server binary (default: $REDIS_SERVER, then PATH)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING")
    try:
        with LocalRedis(binary=args.redis_server) as server:
            print(f"started a throwaway redis-server at {server.url}", flush=True)
            social_app.settings = social_app.settings.replace(redis_url=server.url)
            code = asyncio.run(Demo(social_app, args).run())
        print("stopped redis-server; bye", flush=True)
        return code
    except LocalRedisError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
