"""The App: declares events and handlers, owns the Redis client, and publishes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import redis.asyncio as aioredis

from .backoff import Backoff
from .codec import EventCodec
from .context import Context
from .errors import ConfigError
from .event import Event
from .keys import check_namespace
from .observe.instruments import Instruments
from .publish.coalesce import Coalescer
from .publish.delayed import cancel_delayed
from .publish.publisher import Outgoing, Published, Publisher
from .redis.connection import redis_client
from .schedule.declare import Misfire, Schedule, ScheduleFn, declare
from .settings import Settings
from .topology import StartAt, Topology, TypeRoute

E = TypeVar("E", bound=Event)
S = TypeVar("S", bound=ScheduleFn)
HandlerFn = Callable[[E, Context], Coroutine[Any, Any, None]]  # an `async def`
# Something handlers use in a worker process (an HTTP session, a client pool): opened when the worker starts and
# closed after its groups have drained, so handlers never see it closed under them.
WorkerResource = Callable[[], AbstractAsyncContextManager[object]]
# A service `streamproc dev` runs beside the app (e.g. a fake notification endpoint); it yields environment
# variables for the worker processes (e.g. the endpoint's URL).
DevService = Callable[[], AbstractAsyncContextManager[Mapping[str, str]]]


@dataclass(frozen=True, slots=True)
class Handler(Generic[E]):
    """One registered handler: what it consumes, in which group, with which limits."""

    fn: HandlerFn[E]
    route: TypeRoute
    codec: EventCodec[E]
    group: str
    concurrency: int
    max_attempts: int
    max_deliveries: int
    backoff: Backoff
    timeout: float | None
    start: StartAt
    eager: bool = False

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class App:
    """A namespace of event types and handler groups, bound to one Redis (from settings, REDIS_URL, or localhost)."""

    def __init__(self, name: str, *, redis_url: str | None = None, settings: Settings | None = None) -> None:
        self.name = check_namespace(name)
        settings = settings if settings is not None else Settings.from_env()
        self.settings = settings.replace(redis_url=redis_url) if redis_url else settings
        self.topology = Topology(self.name)
        self.handlers: list[Handler[Any]] = []
        self.instruments = Instruments()
        self.dev_services: list[DevService] = []
        self.worker_resources: list[WorkerResource] = []
        self.schedules: dict[str, Schedule] = {}
        self._redis: aioredis.Redis | None = None
        self._publisher: Publisher | None = None
        self._coalescer: Coalescer | None = None

    def register(self, *event_types: type[Event], groups: Iterable[str] | Mapping[str, StartAt] = ()) -> None:
        """Declare event types that this app publishes or accepts even without a handler here.

        `groups` names the consumer groups that read them elsewhere (another app's workers): a list of names (they
        start with `start="new"`) or a mapping {name: start}. The publisher creates them before its first append,
        so nothing published before their workers first run is missed, even after Redis lost its data.
        """
        if isinstance(groups, str):
            groups = [groups]  # one name, not its letters
        new: StartAt = "new"
        wanted: dict[str, StartAt] = dict(groups) if isinstance(groups, Mapping) else dict.fromkeys(groups, new)
        for group, start in wanted.items():
            check_namespace(group)
            if start not in ("new", "all"):
                raise ConfigError(f"start must be 'new' or 'all', not {start!r}")
        for event_type in event_types:
            self.topology.route(event_type).declared.update(wanted)

    def handler(
        self,
        event_type: type[E],
        *,
        group: str,
        concurrency: int = 10,
        max_attempts: int = 5,
        max_deliveries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = 60.0,
        start: StartAt = "new",
        eager: bool = False,
    ) -> Callable[[HandlerFn[E]], HandlerFn[E]]:
        """Register `fn(event, ctx)` for `event_type` in consumer group `group`.

        max_deliveries (default max_attempts + 2) bounds how often an entry may be started at all, counting
        redeliveries after crashes; `start` says where a group added to a stream with history begins. `eager`
        runs the handler's first step in the reading task, with no task of its own until it suspends (fast for
        handlers that rarely wait; they must not enter asyncio.timeout or a TaskGroup before their first await).
        """
        check_namespace(group)
        if concurrency < 1 or max_attempts < 1 or (max_deliveries is not None and max_deliveries < 1):
            raise ConfigError("concurrency, max_attempts and max_deliveries must be at least 1")
        if start not in ("new", "all"):
            raise ConfigError(f"start must be 'new' or 'all', not {start!r}")

        def register(fn: HandlerFn[E]) -> HandlerFn[E]:
            route = self.topology.route(event_type)
            if group in route.groups:
                raise ConfigError(f"group {group!r} already has a handler for {route.tag!r}")
            route.groups[group] = start
            self.handlers.append(Handler(
                fn=fn, route=route, codec=cast(EventCodec[E], route.codec), group=group, concurrency=concurrency,
                max_attempts=max_attempts, max_deliveries=max_deliveries or max_attempts + 2,
                backoff=backoff or Backoff(), timeout=timeout, start=start, eager=eager,
            ))
            return fn

        return register

    def cron(self, expression: str | None = None, *, name: str, every: timedelta | float | None = None,
             tz: str | tzinfo = "UTC", misfire: Misfire = "latest", max_catchup: int = 100,
             timeout: float | None = 60.0) -> Callable[[S], S]:
        """Register `fn(tick) -> event | [events]` to run at each tick of a cron `expression` (5 fields, or 6 with
        seconds first; read in time zone `tz`) or `every` interval (a timedelta or seconds, aligned to the epoch).

        Every worker process evaluates it; each tick's events are appended once (event ids cron:{name}:{tick}), so
        the function may run in several processes for one tick: keep it cheap and free of side effects, and let a
        handler of its event do the work. `name` is the schedule's identity in Redis and in event ids: keep it
        when renaming the function. Ticks missed while no worker ran: `misfire` "latest" (fire the most recent
        once), "skip", or "all" (up to `max_catchup`). A plain function runs in a thread, an `async def` in the
        worker's loop; either within `timeout` seconds (a tick that fails is retried at the next evaluation).
        """
        if name in self.schedules:
            raise ConfigError(f"a schedule named {name!r} is registered already")

        def register(fn: S) -> S:
            self.schedules[name] = declare(fn, expression, every, name, tz, misfire, max_catchup, timeout)
            return fn

        return register

    def groups(self) -> dict[str, list[Handler[Any]]]:
        """Handlers by group name."""
        out: dict[str, list[Handler[Any]]] = {}
        for h in self.handlers:
            out.setdefault(h.group, []).append(h)
        return out

    @property
    def redis(self) -> aioredis.Redis:
        """The app's Redis client, created on first use (bytes in, bytes out)."""
        if self._redis is None:
            self._redis = redis_client(self.settings)  # every call has a deadline: see redis/connection.py
        return self._redis

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.redis, self.topology, self.settings, self.instruments)
        return self._publisher

    async def publish(self, event: Event, *, event_id: str | None = None,
                      partition_key: str | None = None, priority: int | None = None,
                      delay: float | timedelta | None = None, at: datetime | None = None) -> Published:
        """Append one event. Give `event_id` to make re-publishing it within the dedup window a no-op, `priority`
        to choose its lane (a type with priority lanes: 0 is the most urgent; default: its `default_priority`).
        `delay` (seconds or a timedelta) or `at` (an aware datetime) append it later, at its due time: until then
        no group sees it (see publish/delayed.py; `cancel_delayed` takes it back).

        Concurrent calls share pipelined round trips: a call waits at most for the append in flight before it."""
        prepared = self.publisher.prepare([Outgoing(event, event_id, partition_key, priority=priority, delay=delay,
                                                    at=at)])
        if prepared[0].due is not None:  # alone: a full delayed store must fail this call, not a coalesced batch
            return (await self.publisher.send(prepared))[0]
        if self._coalescer is None:
            self._coalescer = Coalescer(self.publisher, self.settings.ingest_coalesce_max, atomic=False)
        return (await self._coalescer.submit(prepared))[0]

    async def publish_many(self, events: Iterable[Event | Outgoing], *, atomic: bool = False) -> list[Published]:
        """Append many events in one pipelined round trip. With `atomic`, in one MULTI/EXEC: all or none
        (on a single Redis; on a Cluster, atomicity holds per partition); an atomic batch cannot hold delayed events
        (`delay=`/`at=`: InvalidEvent, nothing sent)."""
        return await self.publisher.publish_many(events, atomic=atomic)

    async def cancel_delayed(self, event_type: type[Event], event_id: str, partition_key: str | None = None,
                             ) -> bool:
        """Take back a delayed event that is still waiting: True if it was (it will not be appended), False if it
        was appended already, cancelled, or never scheduled. `partition_key` as it was published with (a type with
        a partition key field: that field's value), to find its partition."""
        return await cancel_delayed(self.redis, self.topology, event_type, event_id, partition_key)

    async def aclose(self) -> None:
        if self._coalescer is not None:
            await self._coalescer.close()
            self._coalescer = None
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = None
        self._publisher = None

    async def __aenter__(self) -> App:
        await self.redis.ping()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
