"""Prometheus metrics. Counters and histograms are updated where things happen; stream state (lag, pending, oldest
pending age) is read from Redis at scrape time. With several worker processes, the supervisor serves one endpoint
that sums every child (prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..keys import PartitionKeys
from ..topology import Topology, is_declared

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
        self.ingest_requests = Counter("streamproc_ingest_requests", "Ingest HTTP requests", ["status"], registry=r)
        self.ingest_duration = Histogram("streamproc_ingest_request_duration_seconds", "Ingest request latency",
                                         ["status"], registry=r)
        self._groups: dict[tuple[str, str], GroupMetrics] = {}

    def group(self, event_type: str, group: str) -> GroupMetrics:
        key = (event_type, group)
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = GroupMetrics(
                self.processed.labels(*key), self.failed.labels(*key), self.retried.labels(*key),
                self.dead_lettered.labels(*key), self.handler_duration.labels(*key))
        return found


class StreamStateCollector(Collector):
    """Per stream and group, read at scrape time: lag (appended, not yet read), pending (read, not settled),
    scheduled retries, dead-lettered entries, and the age of the oldest pending entry."""

    def __init__(self, topology: Topology, redis_url: str) -> None:
        self.topology = topology
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2)

    def collect(self) -> Iterator[Metric]:
        labels = ["stream", "group"]
        lag = GaugeMetricFamily("streamproc_group_lag", "Entries not yet read by the group", labels=labels)
        pending = GaugeMetricFamily("streamproc_group_pending", "Entries read but not settled", labels=labels)
        oldest = GaugeMetricFamily("streamproc_group_oldest_pending_age_seconds",
                                   "Age of the oldest pending entry", labels=labels)
        retries = GaugeMetricFamily("streamproc_group_scheduled_retries", "Entries waiting for a retry", labels=labels)
        dead = GaugeMetricFamily("streamproc_group_dead_letters", "Entries in the dead-letter stream", labels=labels)
        orphans = GaugeMetricFamily("streamproc_orphan_groups", "Consumer groups on the stream that no app declares "
                                    "(renamed or removed handler groups: `streamproc groups list`)", labels=["stream"])
        try:
            for route in self.topology.by_tag.values():
                for keys in route.partitions:
                    for group in route.groups:
                        values = self._group_state(keys.stream, group, keys.retry(group), keys.deadletter(group))
                        for family, value in zip((lag, pending, oldest, retries, dead), values, strict=True):
                            family.add_metric([keys.stream, group], value)
                    orphans.add_metric([keys.stream], self._orphans(keys, route.all_groups()))
        except redis.RedisError:
            pass  # Redis unreachable: expose what we have; the up/scrape metrics show the failure
        yield from (lag, pending, oldest, retries, dead, orphans)

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
