"""Publishing from synchronous code (Django and Flask views, Celery tasks, scripts) on a sync redis-py client.

The same append as `App.publish`: the same routing, event ids, entry fields and trace context, the same dedup
(redis/lua/publish_once.lua and its keys), the same group creation before a stream's first append
(redis/lua/ensure_group.lua), the same backlog check (redis/lua/backlog.lua) and the same hand-packed XADDs: both
publishers build them with the functions of publish/entries.py and publish/groups.py and only send them differently.

Safe across threads: redis-py's sync pool is thread-safe, and this publisher's caches (which streams have their
groups, their backlog estimates) change under a lock that is never held during a Redis call. Safe after fork:
redis-py's pool drops the parent's connections when it sees a new pid, and the lock is made anew in the child
(a thread of the parent may have held it at the fork); the caches stay true in the child, as they describe Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

import redis
from redis.exceptions import RedisError

from ..errors import PublishError
from ..event import Event
from ..observe.instruments import Instruments
from ..redis.connection import sync_redis_client
from ..redis.scripts import BACKLOG, CANCEL_DELAYED, DELAYED_TOUCH, ENSURE_GROUP, PUBLISH_ONCE, SCHEDULE_DELAYED
from ..settings import Settings
from ..topology import Topology
from .delayed import (
    Outcome,
    atomic_delayed_error,
    cancel_call,
    cancel_targets,
    due_of,
    read_scheduled,
    schedule_calls,
    touch_call,
    touch_failed,
)
from .entries import (
    exec_replies,
    in_transaction,
    not_confirmed,
    packed_xadd,
    publish_once_call,
    route_entry,
)
from .groups import ensure_call, read_ensured
from .publisher import (
    Outgoing,
    Prepared,
    Published,
    due_now,
    published_delayed,
    published_of,
)
from .state import PublisherState, count_by_stream, start_spans

log = logging.getLogger(__name__)


class PublishingApp(Protocol):
    """What a SyncPublisher takes from an App: its event types and groups, settings and instruments."""

    topology: Topology
    settings: Settings
    instruments: Instruments


_publishers: weakref.WeakSet[SyncPublisher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for publisher in list(_publishers):
        publisher._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncPublisher(PublisherState):
    """Publishes an App's events from sync code. One per process is enough (share it between threads):

        publisher = SyncPublisher(app)
        publisher.publish(CardAddedToLibrary(card_id="c1", curator_id="u1"), event_id="order-42")

    `redis` may be a sync redis-py client of your own (it must not decode responses); by default one is made from
    the app's settings and closed by `close()`."""

    def __init__(self, app: PublishingApp, *, redis_client: redis.Redis | None = None) -> None:
        super().__init__(app.settings)
        self._topology = app.topology
        self._instruments = app.instruments
        self._owns_client = redis_client is None
        self._redis = redis_client if redis_client is not None else sync_redis_client(app.settings)
        self._publish_once = self._redis.register_script(PUBLISH_ONCE)
        self._backlog_script = self._redis.register_script(BACKLOG)
        self._ensure_script = self._redis.register_script(ENSURE_GROUP)
        self._schedule_script = self._redis.register_script(SCHEDULE_DELAYED)
        self._touch_script = self._redis.register_script(DELAYED_TOUCH)
        self._cancel_script = self._redis.register_script(CANCEL_DELAYED)
        self._lock = threading.Lock()  # guards PublisherState's caches; never held during a Redis call
        _publishers.add(self)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def publish(self, event: Event, *, event_id: str | None = None, partition_key: str | None = None,
                priority: int | None = None, delay: float | timedelta | None = None,
                at: datetime | None = None) -> Published:
        """Append one event. Give `event_id` to make re-publishing it within the dedup window a no-op, `priority`
        to choose its lane (a type with priority lanes), `delay` or `at` to append it later (as App.publish)."""
        return self.publish_many([Outgoing(event, event_id, partition_key, priority, delay, at)])[0]

    def cancel_delayed(self, event_type: type[Event], event_id: str, partition_key: str | None = None) -> bool:
        """Take back a delayed event that still waits (as App.cancel_delayed): True if it did."""
        targets = cancel_targets(self._topology, event_type, event_id, partition_key)
        with self._redis.pipeline(transaction=False) as pipe:
            for keys in targets:
                names, args = cancel_call(keys, event_id)
                self._cancel_script(keys=names, args=args, client=pipe)
            return any(pipe.execute())

    def publish_many(self, items: Iterable[Event | Outgoing], *, atomic: bool = False) -> list[Published]:
        """Append many events in one pipelined round trip (plus one to create groups on a stream's first use).
        With `atomic`, in one MULTI/EXEC: all or none (on a single Redis); an atomic batch cannot hold delayed
        events (InvalidEvent: see atomic_delayed_error)."""
        prepared = [self._prepare(item if isinstance(item, Outgoing) else Outgoing(item)) for item in items]
        start_spans(self._instruments.tracing, prepared)  # once all are encoded: a failure leaves no span open
        if not prepared:
            return []
        refused = atomic_delayed_error(prepared, atomic)
        if refused is not None:
            self._observe(prepared, refused)
            raise refused
        try:
            self._ensure_ready(prepared)
            results = self._send(prepared, atomic)
        except RedisError as exc:
            with self._lock:
                self._ready.clear()  # Redis may have restarted empty: create groups again before the next append
            error = not_confirmed(exc)
            self._observe(prepared, error)
            raise error from exc
        except PublishError as exc:
            self._observe(prepared, exc)
            raise
        self._observe(prepared, None)
        return results

    def _send(self, prepared: list[Prepared], atomic: bool) -> list[Published]:
        """Append the events due now, then schedule the delayed ones (see Publisher._send_with_delayed)."""
        now = due_now(prepared)
        self._reserve(now)
        appended = iter(self._append_all(now, atomic) if now else [])
        later = [p for p in prepared if p.due is not None]
        outcomes = iter(self._schedule(later, atomic) if later else [])
        return [published_of(p, next(appended)) if p.due is None else published_delayed(p, next(outcomes))
                for p in prepared]

    def _schedule(self, later: list[Prepared], atomic: bool) -> list[Outcome]:
        """Schedule delayed events, one call per partition, then lower the index for them (publish/delayed.py)."""
        calls = schedule_calls(later, self._settings.dedup_window_ms, self._settings.max_delayed)
        with self._redis.pipeline(transaction=atomic) as pipe:
            for call in calls:
                self._schedule_script(keys=call.names, args=call.args, client=pipe)
            replies = pipe.execute()
        done = read_scheduled(calls, replies, len(later), self._settings.max_delayed)
        if done.touches:
            names, args = touch_call(later[0].keys.ns, done.touches)
            try:
                self._touch_script(keys=names, args=args)
            except RedisError as exc:  # they are scheduled: failing now would make a retry schedule them twice
                touch_failed(later[0].keys.ns, done.touches, exc)
        if done.full is not None:
            raise done.full
        return [o for o in done.outcomes if o is not None]

    def close(self) -> None:
        """Close the client this publisher made (a client given to it stays open)."""
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _prepare(self, out: Outgoing) -> Prepared:
        route, keys, event_id, fields = route_entry(self._topology, out.event, out.event_id, out.partition_key,
                                                    out.priority)
        p = Prepared(keys, route, event_id, fields, dedup=out.event_id is not None)
        if out.delay is not None or out.at is not None:
            p.due = due_of(out.delay, out.at)
        return p

    def _ensure_ready(self, prepared: list[Prepared]) -> None:
        """Create every group declared on a stream before its first append (see Publisher._ensure_ready). Two
        threads may both ensure a new stream: harmless, ensure_group.lua is idempotent."""
        with self._lock:
            streams, wanted = self._unready(prepared)
        if not wanted:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for w in wanted:
                names, args = ensure_call(w)
                self._ensure_script(keys=names, args=args, client=pipe)
            replies = pipe.execute()
        found = read_ensured(wanted, replies)
        with self._lock:
            self._made_ready(streams, found)

    def _reserve(self, prepared: list[Prepared]) -> None:
        """Raise BacklogFull if the events would take a stream's backlog past `max_backlog` (see Publisher.reserve:
        read from Redis at most every `backlog_check_ms`, this publisher's appends counted in between)."""
        limit = self._settings.max_backlog
        if not limit:
            return
        counts = count_by_stream(prepared)
        now = time.monotonic()
        with self._lock:
            stale = self._stale(counts, now)
        if stale:
            self._read_backlogs(stale, {p.keys.stream: p for p in prepared}, now)
        with self._lock:
            self._take(counts, limit)

    def _read_backlogs(self, streams: list[str], by_stream: dict[str, Prepared], now: float) -> None:
        with self._lock:
            calls = [self._backlog_call(by_stream[s]) for s in streams]
        with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                self._backlog_script(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        with self._lock:
            self._record_backlogs(streams, replies, now)

    def _append_all(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """Append; entries whose stream vanished since its groups were made (NOMKSTREAM: nil) get their groups made
        again first, then are appended (see Publisher._append_all)."""
        replies = self._append(prepared, atomic)
        with self._lock:
            missing = self._vanished(prepared, replies)
        if missing:
            again = [prepared[i] for i in missing]
            self._ensure_ready(again)
            for i, reply in zip(missing, self._append(again, atomic), strict=True):
                if reply is None:
                    raise PublishError(f"{prepared[i].keys.stream} vanished again while publishing; publish again")
                replies[i] = reply
        return replies

    def _append(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        # No lock here: a set membership test and the prefix cache's get and set are each atomic (two threads may
        # pack the same prefix once each, and store equal values).
        grouped = self._grouped  # NOMKSTREAM iff the stream has groups: a stream with groups is made with them
        if any(p.dedup for p in prepared):
            return self._append_scripted(prepared, atomic)
        commands = [packed_xadd(self._prefixes, p.keys.stream, p.fields, p.keys.stream in grouped) for p in prepared]
        if not atomic:
            return self._send_packed(commands)
        return exec_replies(self._send_packed(in_transaction(commands)))

    def _append_scripted(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """A batch with producer-given event ids: publish_once.lua for those, in one pipeline with the others."""
        window = self._settings.dedup_window_ms
        with self._redis.pipeline(transaction=atomic) as pipe:
            for p in prepared:
                nomkstream = p.keys.stream in self._grouped
                if p.dedup:
                    keys, args = publish_once_call(p.keys, p.event_id, p.fields, window, nomkstream)
                    self._publish_once(keys=keys, args=args, client=pipe)
                else:
                    pipe.xadd(p.keys.stream, p.fields, nomkstream=nomkstream)  # type: ignore[arg-type]
            replies: list[object] = pipe.execute(raise_on_error=True)
        return replies

    def _send_packed(self, commands: list[bytes]) -> list[object]:
        """Write packed commands at once on one pooled connection and read their replies (an error reply raises);
        each read has the pool's command deadline. A failure drops the connection (replies may be left unread)."""
        pool = self._redis.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)])  # type: ignore[no-untyped-call]  # a list of chunks
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
