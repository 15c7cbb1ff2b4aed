"""Plausible social traffic, posted over HTTP to a streamproc ingest endpoint, as the product's web servers would.

First a follow graph (in batches), then a steady rate of cards, shared links, new follows, collections and a few
removed cards. At each tick about half the events go as single POSTs (a web server reporting one user action) and
the rest as one batch (a backend flushing its buffer). Every event carries its own id, so a POST retried after a
429/503 or a lost answer appends nothing twice. Requests in flight are bounded; the rate is kept on average.

    python -m handlers.traffic --url http://127.0.0.1:8080 --rate 150 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from handlers.events import CardAddedToLibrary, CardRemoved, CollectionCreated, UrlShared, UserFollowed
from handlers.notifier import retry_after_seconds
from streamproc import Event, new_event_id

TICK_S = 0.05
GRAPH_BATCH = 500
MAX_IN_FLIGHT = 32
POST_ATTEMPTS = 5
SITES = ("https://arxiv.org/abs/", "https://github.com/", "https://en.wikipedia.org/wiki/", "https://lwn.net/",
         "https://www.nature.com/articles/", "https://blog.example.org/")
TOPICS = ("streams", "consensus", "caching", "rust", "postgres", "typography", "gardening", "jazz", "maps")


class Traffic:
    """A few users with many followers, many with few; everyone posts at about the same rate (so one card reaches
    a dozen followers on average, some a hundred or more). Mostly cards, then links, follows, collections and
    removals of recent cards. Deterministic for a given seed."""

    def __init__(self, users: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.users = [f"u{i:04d}" for i in range(users)]
        self.popularity = [1.0 / (rank + 1) for rank in range(users)]  # Zipf-like
        self.cards = 0
        self.recent_cards: deque[tuple[str, str]] = deque(maxlen=1000)  # (card id, curator id)

    def _user(self) -> str:
        return self.rng.choice(self.users)

    def _popular_user(self) -> str:
        return self.rng.choices(self.users, self.popularity)[0]

    def _url(self) -> str:
        return f"{self.rng.choice(SITES)}{self.rng.choice(TOPICS)}-{self.rng.randrange(10_000)}"

    def graph(self, follows_each: int) -> list[Event]:
        """Each user follows about `follows_each` others, popular ones more often."""
        out: list[Event] = []
        for follower in self.users:
            followees = {self._popular_user() for _ in range(follows_each)} - {follower}
            out.extend(UserFollowed(follower_id=follower, followee_id=f) for f in sorted(followees))
        return out

    def event(self) -> Event:
        roll = self.rng.random()
        if roll < 0.68:
            return self._card()
        if roll < 0.86:
            # One link in a few hundred is not a web address: the feeds group dead-letters it.
            url = "javascript:alert(1)" if self.rng.random() < 0.005 else self._url()
            return UrlShared(url=url, sharer_id=self._user())
        if roll < 0.93:
            follower, followee = self._user(), self._popular_user()
            if follower != followee:
                return UserFollowed(follower_id=follower, followee_id=followee)
        if roll < 0.97 and self.recent_cards:
            card_id, curator_id = self.recent_cards.popleft()
            return CardRemoved(card_id=card_id, curator_id=curator_id)
        return CollectionCreated(collection_id=f"col{self.rng.randrange(10**6)}", owner_id=self._user(),
                                 name=f"Best of {self.rng.choice(TOPICS)}")

    def _card(self) -> CardAddedToLibrary:
        self.cards += 1
        card = CardAddedToLibrary(card_id=f"c{self.cards}", curator_id=self._user(), url=self._url(),
                                  title=f"Notes on {self.rng.choice(TOPICS)}")
        self.recent_cards.append((card.card_id, card.curator_id))
        return card


def as_item(event: Event) -> dict[str, Any]:
    """The event's tagged JSON form, with a fresh event id (the ingest's dedup key)."""
    item: dict[str, Any] = msgspec.to_builtins(event)
    item["id"] = new_event_id()
    return item


@dataclass(slots=True)
class TrafficStats:
    accepted: int = 0  # events the ingest answered 202 for
    refused: int = 0  # events in requests answered 4xx (never retried)
    lost: int = 0  # events given up after POST_ATTEMPTS
    requests: int = 0
    retried: int = 0  # requests sent again after a 429/503 or a connection error
    problems: list[str] = field(default_factory=list)  # the first few refusals, for the report


class IngestClient:
    """POSTs events to `<url>/v1/events`, with at most MAX_IN_FLIGHT requests at once."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.endpoint = f"{url.rstrip('/')}/v1/events"
        self.stats = TrafficStats()
        self.gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def submit(self, tg: asyncio.TaskGroup, items: list[dict[str, Any]]) -> None:
        """Start posting `items` in the background; waits while MAX_IN_FLIGHT requests are in flight."""
        await self.gate.acquire()
        tg.create_task(self._post_released(items))

    async def _post_released(self, items: list[dict[str, Any]]) -> None:
        try:
            await self.post(items)
        finally:
            self.gate.release()

    async def post(self, items: list[dict[str, Any]]) -> None:
        """One POST (a single object, or an array), retried on 429/503 and connection errors."""
        body = msgspec.json.encode(items[0] if len(items) == 1 else items)
        for attempt in range(1, POST_ATTEMPTS + 1):
            self.stats.requests += 1
            wait = await self._attempt(body, len(items))
            if wait is None:
                return
            if attempt < POST_ATTEMPTS:
                self.stats.retried += 1
                await asyncio.sleep(wait)
        self.stats.lost += len(items)

    async def _attempt(self, body: bytes, events: int) -> float | None:
        """Seconds to wait before trying again, or None when the request is settled (accepted or refused)."""
        try:
            async with self.session.post(self.endpoint, data=body,
                                         headers={"Content-Type": "application/json"}) as response:
                if response.status == 202:
                    self.stats.accepted += events
                    return None
                if response.status in (429, 503):
                    return retry_after_seconds(response.headers.get("Retry-After")) or 1.0
                self.stats.refused += events
                if len(self.stats.problems) < 5:
                    self.stats.problems.append(f"{response.status}: {(await response.text())[:300]}")
                return None
        except (aiohttp.ClientError, TimeoutError):
            return 0.5


async def post_graph(client: IngestClient, events: list[Event]) -> None:
    """Post the follow graph in batches, all at once (bounded by the client's in-flight limit)."""
    async with asyncio.TaskGroup() as tg:
        for start in range(0, len(events), GRAPH_BATCH):
            await client.submit(tg, [as_item(e) for e in events[start:start + GRAPH_BATCH]])


async def post_steadily(client: IngestClient, traffic: Traffic, rate: float, stop: asyncio.Event) -> None:
    """Post `rate` events a second until `stop` is set; returns once every request has been answered."""
    next_at, owed = time.monotonic(), 0.0
    async with asyncio.TaskGroup() as tg:
        while not stop.is_set():
            owed += rate * TICK_S
            count = int(owed)
            owed -= count
            items = [as_item(traffic.event()) for _ in range(count)]
            singles = len(items) // 2
            for item in items[:singles]:
                await client.submit(tg, [item])
            if items[singles:]:
                await client.submit(tg, items[singles:])
            next_at = max(next_at + TICK_S, time.monotonic() - 1.0)  # catch up on short stalls, not long ones
            await sleep_unless(stop, next_at - time.monotonic())


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep for `seconds`, but wake up at once when `stop` is set; True if it is."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stop.wait()
    return stop.is_set()


async def _main(args: argparse.Namespace) -> TrafficStats:
    traffic, stop = Traffic(args.users), asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        client = IngestClient(session, args.url)
        await post_graph(client, traffic.graph(args.follows))
        asyncio.get_running_loop().call_later(args.seconds, stop.set)
        await post_steadily(client, traffic, args.rate, stop)
    return client.stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the ingest's base URL")
    parser.add_argument("--rate", type=float, default=150.0, help="events per second (default 150)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post (default 10)")
    parser.add_argument("--users", type=int, default=200, help="users in the graph (default 200)")
    parser.add_argument("--follows", type=int, default=15, help="follows per user in the graph (default 15)")
    stats = asyncio.run(_main(parser.parse_args(argv)))
    print(stats)
    return 0 if stats.accepted and not stats.lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
