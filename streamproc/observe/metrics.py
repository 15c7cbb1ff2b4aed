"""Prometheus metrics. Counters and histograms are updated where things happen; stream state (lag, pending, oldest
pending age) and whether Redis answers are read from Redis at scrape time. With several worker processes, the
supervisor serves one endpoint that sums every child (prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR).
Every endpoint (ingest, inline worker, supervisor) serves an endpoint_registry: see there."""

from __future__ import annotations

import platform
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..keys import PartitionKeys
from ..topology import Topology, is_declared
from ..version import __version__

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """The metric children of one (type, group), bound once so the per-event cost is one increment."""

    processed: Counter
    failed: Counter
    retried: Counter
    dead_lettered: Counter
    duration: Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r, tg = registry, ["type", "group"]
        self.registry = registry  # where these metrics are exposed from (the ingest serves it)
        self.published = Counter("streamproc_events_published", "Events appended to streams", ["type"], registry=r)
        self.processed = Counter("streamproc_events_processed", "Handler runs that succeeded", tg, registry=r)
        self.failed = Counter("streamproc_events_failed", "Handler runs that failed", tg, registry=r)
        self.retried = Counter("streamproc_events_retried", "Events scheduled for a retry", tg, registry=r)
        self.dead_lettered = Counter("streamproc_events_dead_lettered", "Events moved to the dead-letter stream",
                                     tg, registry=r)
        self.handler_duration = Histogram("streamproc_handler_duration_seconds", "Handler run time",
                                          tg, buckets=HANDLER_BUCKETS, registry=r)
        self.redis_errors = Counter("streamproc_redis_errors", "Failed Redis calls of the worker's loops, by kind "
                                    "(outage, memory, nogroup, fatal)", ["kind"], registry=r)
        self.lane_processed = Counter("streamproc_lane_events_processed", "Handler runs that succeeded, by "
                                      "priority lane (types with lanes only)", ["type", "group", "lane"], registry=r)
        self.ingest_requests = Counter("streamproc_ingest_requests", "Ingest HTTP requests", ["status"], registry=r)
        self.ingest_duration = Histogram("streamproc_ingest_request_duration_seconds", "Ingest request latency",
                                         ["status"], registry=r)
        self._groups: dict[tuple[str, str], GroupMetrics] = {}
        self._lanes: dict[tuple[str, str, int], Counter] = {}

    def group(self, event_type: str, group: str) -> GroupMetrics:
        key = (event_type, group)
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = GroupMetrics(
                self.processed.labels(*key), self.failed.labels(*key), self.retried.labels(*key),
                self.dead_lettered.labels(*key), self.handler_duration.labels(*key))
        return found

    def lane(self, event_type: str, group: str, lane: int) -> Counter:
        """The lane counter child of one (type, group, lane), bound once."""
        key = (event_type, group, lane)
        found = self._lanes.get(key)
        if found is None:
            found = self._lanes[key] = self.lane_processed.labels(event_type, group, str(lane))
        return found


class StreamStateCollector(Collector):
    """Read at scrape time: whether Redis answers (streamproc_redis_up), and per stream and group, lag (appended,
    not yet read), pending (read, not settled), scheduled retries, dead-lettered entries, and the age of the oldest
    pending entry. One try per scrape, 2 s at most per call: a scrape says how Redis is now, and a Redis that is
    down costs it a refused connection or a timeout, not retries."""

    def __init__(self, topology: Topology, redis_url: str) -> None:
        self.topology = topology
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, retry=Retry(NoBackoff(), 0))

    def close(self) -> None:
        """Close its connection (from_url: the client owns its pool), when the endpoint stops serving."""
        self.redis.close()

    def collect(self) -> Iterator[Metric]:
        labels = ["stream", "group"]
        families = (
            GaugeMetricFamily("streamproc_group_lag", "Entries not yet read by the group", labels=labels),
            GaugeMetricFamily("streamproc_group_pending", "Entries read but not settled", labels=labels),
            GaugeMetricFamily("streamproc_group_oldest_pending_age_seconds", "Age of the oldest pending entry",
                              labels=labels),
            GaugeMetricFamily("streamproc_group_scheduled_retries", "Entries waiting for a retry", labels=labels),
            GaugeMetricFamily("streamproc_group_dead_letters", "Entries in the dead-letter stream", labels=labels),
        )
        # Types with priority lanes: one series per lane stream, to join the families above on `stream`
        # (`streamproc_group_lag * on(stream) group_left(lane) streamproc_stream_lane`); their label sets stay
        # the same for every stream, with lanes or without.
        lanes = GaugeMetricFamily("streamproc_stream_lane", "1 for each priority-lane stream, with its type, "
                                  "partition and lane", labels=["stream", "type", "partition", "lane"])
        orphans = GaugeMetricFamily("streamproc_orphan_groups", "Consumer groups on the stream that no app declares "
                                    "(renamed or removed handler groups: `streamproc groups list`)", labels=["stream"])
        dead = GaugeMetricFamily("streamproc_delayed_dead_entries", "Delayed events the mover could not append "
                                 "(unreadable, another slot's stream, XADD refused), set aside in the partition's "
                                 "delayeddead stream", labels=["type", "partition"])
        up = GaugeMetricFamily("streamproc_redis_up", "1 if Redis answered every call of this scrape, 0 if not")
        try:
            self.redis.ping()  # first, alone: when Redis is down, the one call that fails
            self._read_state(families, orphans)
            self._read_delayed_dead(dead)
        except redis.RedisError:
            up.add_metric([], 0)  # expose what was read; the group families may be empty or partial
        else:
            up.add_metric([], 1)
        yield up
        yield from (*families, orphans, dead)
        if self._add_lanes(lanes):
            yield lanes

    def _add_lanes(self, family: GaugeMetricFamily) -> bool:
        """Fill streamproc_stream_lane from the topology (no Redis call); False when no type has lanes."""
        for route in self.topology.by_tag.values():
            for keys in route.partitions:
                if keys.lane is not None:
                    family.add_metric([keys.stream, route.tag, str(keys.partition), str(keys.lane)], 1)
        return bool(family.samples)

    def _read_state(self, families: tuple[GaugeMetricFamily, ...], orphans: GaugeMetricFamily) -> None:
        for route in self.topology.by_tag.values():
            for keys in route.partitions:
                for group in route.groups:
                    values = self._group_state(keys.stream, group, keys.retry(group), keys.deadletter(group))
                    for family, value in zip(families, values, strict=True):
                        family.add_metric([keys.stream, group], value)
                orphans.add_metric([keys.stream], self._orphans(keys, route.all_groups()))

    def _read_delayed_dead(self, family: GaugeMetricFamily) -> None:
        """One XLEN per partition (its lanes share its delayed store), in one round trip."""
        parts = {keys.member: keys for route in self.topology.by_tag.values() for keys in route.partitions}
        pipe = self.redis.pipeline(transaction=False)
        for keys in parts.values():
            pipe.xlen(keys.delayed_dead())
        for keys, count in zip(parts.values(), pipe.execute(), strict=True):
            family.add_metric([keys.tag, str(keys.partition)], count)

    def _orphans(self, keys: PartitionKeys, own: Collection[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(keys.stream)
        pipe.hkeys(keys.groups())
        pipe.zrange(keys.declared(), 0, -1, withscores=True)
        infos, registry, declared = pipe.execute(raise_on_error=False)
        if not isinstance(infos, list):
            return 0  # no stream yet
        names = {_text(name) for name in registry}
        at = {_text(name): score for name, score in declared}
        now_ms = time.time() * 1000
        return sum(1 for info in infos
                   if not is_declared(name := _text(info.get("name")), own, names, at.get(name), now_ms))

    def _group_state(self, stream: str, group: str, retry_key: str, dlq_key: str) -> tuple[float, ...]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, group)
        pipe.zcard(retry_key)
        pipe.xlen(dlq_key)
        pipe.xlen(stream)
        infos, summary, scheduled, dead, length = pipe.execute(raise_on_error=False)
        info: dict[str, object] = {}
        if isinstance(infos, list):
            info = next((g for g in infos if _text(g.get("name")) == group), {})
        lag = info.get("lag")
        age = 0.0
        if isinstance(summary, dict) and summary.get("pending"):
            oldest_ms = int(_text(summary["min"]).split("-")[0])
            age = max(0.0, time.time() - oldest_ms / 1000)
        pending = float(summary.get("pending", 0)) if isinstance(summary, dict) else 0.0
        return (float(lag if isinstance(lag, int) else length if isinstance(length, int) else 0), pending, age,
                float(scheduled) if isinstance(scheduled, int) else 0.0, float(dead) if isinstance(dead, int) else 0.0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BuildInfo(Collector):
    """streamproc_build_info{version, python_version, python_implementation} 1: which streamproc serves this."""

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("streamproc_build", "The streamproc version, and the Python that runs it", value={
            "version": __version__, "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation()})


class _Chain(Collector):
    """The metrics of several collectors or registries, as one collector (describing none, so that registering it
    does not collect them)."""

    def __init__(self, sources: Iterable[Collector | CollectorRegistry]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()

    def describe(self) -> list[Metric]:
        return []


def endpoint_registry(topology: Topology, redis_url: str, sources: Iterable[Collector | CollectorRegistry],
                      state: StreamStateCollector | None = None) -> CollectorRegistry:
    """What one /metrics endpoint serves: `sources` (the registry the app's counters live in, or a supervisor's
    MultiProcessCollector summing its children), the state read from Redis at scrape time (StreamStateCollector)
    and streamproc_build_info; each endpoint has one, so none of these is exposed twice.

    No `_created` series: prometheus_client has only a process-wide switch (disable_created_metrics(), or the
    PROMETHEUS_DISABLE_CREATED_SERIES variable, which it reads once, at import, so it must be set before anything
    imports it), so the process that serves an endpoint turns them off here, for every registry it serves. A
    supervisor's children need nothing: multiprocess files hold values only, and MultiProcessCollector yields no
    `_created` samples. Pass `state` to close its client when the endpoint stops (the ingest does)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    state = state or StreamStateCollector(topology, redis_url)
    registry.register(_Chain([*sources, state, BuildInfo()]))
    return registry
