"""Prometheus metrics: the event counters and handler histogram as handlers succeed, fail, retry and dead-letter;
stream state read from Redis at scrape time; one scrape of a multi-process worker adding up every process; and
the ingest's own /metrics by status."""

from __future__ import annotations

import asyncio
import gzip
import os
import platform
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from streamproc import App, Backoff, Context, DeadLetter, Event, Retry, Settings
from streamproc.observe.metrics import Metrics, StreamStateCollector
from streamproc.version import __version__
from tests.helpers import wait_for
from tests.ingestserver import AUTH, ingest_app, serving
from tests.inproc import deadletters, fast_settings, open_app, partition, running, settled
from tests.metricsapp import Tick, make_app
from tests.redis_server import RedisServer, free_port
from tests.spawn import Spawned, spawning


class CardAdded(Event, tag="card.added"):
    card_id: str
    outcome: str = "ok"


async def noop(event: Event, ctx: Context) -> None:
    return None


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_event_counters_and_handler_durations(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async def fine(event: CardAdded, ctx: Context) -> None:
        return None

    async def flaky(event: CardAdded, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    async def doomed(event: CardAdded, ctx: Context) -> None:
        raise RuntimeError("always fails")

    registry = CollectorRegistry()
    async with open_app(ns, redis_url) as app:
        app.instruments.metrics = Metrics(registry)
        fast = Backoff(base=0.01, jitter=False)
        app.handler(CardAdded, group="fine")(fine)
        app.handler(CardAdded, group="flaky", backoff=fast)(flaky)
        app.handler(CardAdded, group="doomed", max_attempts=2, backoff=fast)(doomed)
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await app.publish_many([CardAdded(card_id=f"c{i}") for i in range(3)])

            async def all_done() -> bool:
                return (await settled(redis, keys, "fine") and await settled(redis, keys, "flaky")
                        and len(await deadletters(redis, keys, "doomed")) == 3)

            await worker.wait_for(all_done)

    t = {"type": "card.added"}
    assert value(registry, "streamproc_events_published_total", **t) == 3
    expected = {  # group: (processed, failed, retried, dead-lettered, handler runs)
        "fine": (3, 0, 0, 0, 3),
        "flaky": (3, 3, 3, 0, 6),
        "doomed": (0, 6, 3, 3, 6),
    }
    for group, (processed, failed, retried, dead, runs) in expected.items():
        labels = {**t, "group": group}
        assert value(registry, "streamproc_events_processed_total", **labels) == processed, group
        assert value(registry, "streamproc_events_failed_total", **labels) == failed, group
        assert value(registry, "streamproc_events_retried_total", **labels) == retried, group
        assert value(registry, "streamproc_events_dead_lettered_total", **labels) == dead, group
        assert value(registry, "streamproc_handler_duration_seconds_count", **labels) == runs, group
        assert value(registry, "streamproc_handler_duration_seconds_bucket", **labels, le="+Inf") == runs, group


async def test_handler_duration_histogram_measures_the_handler(ns: str, redis_url: str, redis: aioredis.Redis,
                                                               ) -> None:
    async def slow(event: CardAdded, ctx: Context) -> None:
        await asyncio.sleep(0.03)

    registry = CollectorRegistry()
    async with open_app(ns, redis_url) as app:
        app.instruments.metrics = Metrics(registry)
        app.handler(CardAdded, group="slow")(slow)
        async with running(app) as worker:
            await app.publish_many([CardAdded(card_id=f"c{i}") for i in range(4)])
            await worker.wait_for(lambda: value(registry, "streamproc_handler_duration_seconds_count",
                                                type="card.added", group="slow") == 4)
    labels = {"type": "card.added", "group": "slow"}
    assert 0.12 <= value(registry, "streamproc_handler_duration_seconds_sum", **labels) < 2.0
    assert value(registry, "streamproc_handler_duration_seconds_bucket", **labels, le="0.025") == 0
    assert value(registry, "streamproc_handler_duration_seconds_bucket", **labels, le="0.05") == 4


@pytest.fixture
def state_registry() -> Iterator[tuple[CollectorRegistry, list[StreamStateCollector]]]:
    made: list[StreamStateCollector] = []
    yield CollectorRegistry(), made
    for collector in made:
        collector.redis.close()


async def test_stream_state_per_group(ns: str, redis_url: str, redis: aioredis.Redis,
                                      state_registry: tuple[CollectorRegistry, list[StreamStateCollector]]) -> None:
    async def fragile(event: CardAdded, ctx: Context) -> None:
        if event.outcome == "retry":
            raise Retry(delay=60)
        if event.outcome == "dead":
            raise DeadLetter("bad card")

    async def backlogged(event: CardAdded, ctx: Context) -> None:
        raise AssertionError("no worker runs this group in this test")

    registry, made = state_registry
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="fragile")(fragile)
        app.handler(CardAdded, group="feeds")(backlogged)
        made.append(StreamStateCollector(app.topology, redis_url))
        registry.register(made[0])
        keys = partition(app, CardAdded)
        stream = keys.stream
        outcomes = ["retry", "ok", "dead", "retry", "ok"]
        async with running(app, groups=["fragile"]) as worker:
            await app.publish_many([CardAdded(card_id=f"c{i}", outcome=o) for i, o in enumerate(outcomes)])

            async def fragile_done() -> bool:
                return (await redis.zcard(keys.retry("fragile")) == 2
                        and await redis.xlen(keys.deadletter("fragile")) == 1
                        and (await redis.xpending(stream, "fragile"))["pending"] == 0)

            await worker.wait_for(fragile_done)
        # A consumer of "feeds" reads two entries and does not settle them.
        await redis.xreadgroup("feeds", "stuck", {stream: ">"}, count=2)
        await asyncio.sleep(0.05)  # let the oldest pending entry age a little

        def state(name: str, group: str) -> float | None:
            return registry.get_sample_value(name, {"stream": stream, "group": group})

        assert state("streamproc_group_lag", "fragile") == 0
        assert state("streamproc_group_pending", "fragile") == 0
        assert state("streamproc_group_scheduled_retries", "fragile") == 2
        assert state("streamproc_group_dead_letters", "fragile") == 1
        assert state("streamproc_group_oldest_pending_age_seconds", "fragile") == 0

        assert state("streamproc_group_lag", "feeds") == 3
        assert state("streamproc_group_pending", "feeds") == 2
        assert state("streamproc_group_scheduled_retries", "feeds") == 0
        assert state("streamproc_group_dead_letters", "feeds") == 0
        age = state("streamproc_group_oldest_pending_age_seconds", "feeds")
        assert age is not None and 0 < age < 30


def test_stream_state_when_redis_is_unreachable_is_redis_down_and_empty_families() -> None:
    app = App("tdown", settings=Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.handler(CardAdded, group="feeds")(noop)
    collector = StreamStateCollector(app.topology, app.settings.redis_url)
    try:
        families = {f.name: f.samples for f in collector.collect()}
    finally:
        collector.redis.close()
    up = families.pop("streamproc_redis_up")
    assert [(s.name, s.labels, s.value) for s in up] == [("streamproc_redis_up", {}, 0)]
    assert set(families) == {"streamproc_group_lag", "streamproc_group_pending",
                             "streamproc_group_oldest_pending_age_seconds", "streamproc_group_scheduled_retries",
                             "streamproc_group_dead_letters", "streamproc_orphan_groups",
                             "streamproc_delayed_dead_entries"}
    assert all(samples == [] for samples in families.values())


def scrape_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, sample_labels, v in samples if n == name and labels.items() <= sample_labels.items())


async def scrape(client: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, str], float]]:
    async with client.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return scrape_samples(await resp.text())


OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}


async def scrape_both(client: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, str], float]]:
    """Scrape an endpoint as Prometheus does (asking for OpenMetrics) and without an Accept header (the text
    format); check what every streamproc endpoint serves in both, and return the OpenMetrics samples."""
    async with client.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await resp.text()
    async with client.get(url, headers=OPENMETRICS) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        openmetrics = await resp.text()
    assert openmetrics.endswith("# EOF\n") and not text.endswith("# EOF\n")
    assert "_created" not in text and "_created" not in openmetrics
    samples = [(s.name, s.labels, s.value) for family in openmetrics_families(openmetrics) for s in family.samples]
    build = {"version": __version__, "python_version": platform.python_version(),
             "python_implementation": platform.python_implementation()}
    for found in (samples, scrape_samples(text)):
        assert [(labels, v) for name, labels, v in found if name == "streamproc_build_info"] == [(build, 1)]
        assert len([name for name, _, _ in found if name == "streamproc_redis_up"]) == 1
    return samples


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    yield from spawning()


@pytest.fixture
def worker_env(ns: str, redis_url: str) -> dict[str, str]:
    return {**os.environ, "METRICSAPP_NS": ns, "REDIS_URL": redis_url, "STREAMPROC_BATCH_SIZE": "2",
            "STREAMPROC_BLOCK_MS": "50", "STREAMPROC_GRACE_PERIOD_S": "2", "OTEL_TRACES_EXPORTER": "none"}


async def test_one_scrape_adds_up_every_worker_process(ns: str, redis_url: str, redis: aioredis.Redis,
                                                       worker_env: dict[str, str], spawned: Spawned) -> None:
    port = free_port()
    proc = spawned.streamproc("worker", "tests.metricsapp:app", "--processes", "2", "--metrics-port", str(port),
                              env=worker_env)
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as client:
        app = make_app(ns, fast_settings(redis_url))
        try:
            stream = partition(app, Tick).stream

            async def metrics_up() -> bool:
                try:
                    await scrape(client, url)
                except aiohttp.ClientConnectionError:
                    return False
                return True

            await wait_for(metrics_up, timeout=20)
            # Publish in waves until both processes have taken some (each holds at most concurrency + batch size,
            # so a second process that is reading gets its share).
            n = 0

            async def both_processes_worked() -> bool:
                nonlocal n
                await app.publish_many([Tick(n=n + i, pause=0.02) for i in range(10)])
                n += 10
                return await redis.scard(f"{ns}:pids") == 2

            await wait_for(both_processes_worked, timeout=20, interval=0.1)

            async def all_counted() -> list[tuple[str, dict[str, str], float]] | None:
                samples = await scrape(client, url)
                return samples if total(samples, "streamproc_events_processed_total") == n else None

            samples = await wait_for(all_counted, timeout=20)
        finally:
            await app.aclose()
        assert isinstance(samples, list)
        labels = {"type": "metrics.tick", "group": "count"}
        assert total(samples, "streamproc_events_processed_total", **labels) == n
        assert total(samples, "streamproc_handler_duration_seconds_count", **labels) == n
        assert total(samples, "streamproc_events_failed_total") == 0
        # Stream state comes from Redis, once, not once per process.
        assert [v for name, lab, v in samples if name == "streamproc_group_lag" and lab["stream"] == stream] == [0]
        assert total(samples, "streamproc_group_pending", stream=stream, group="count") == 0
        # The supervisor's endpoint (prometheus_client's HTTP server over the children's files) negotiates too.
        negotiated = await scrape_both(client, url)
        assert total(negotiated, "streamproc_events_processed_total", **labels) == n
        assert total(negotiated, "streamproc_redis_up") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, spawned.output(proc)


async def test_ingest_metrics_by_status(ns: str, redis_url: str) -> None:
    app = ingest_app(ns, redis_url)
    app.handler(CardAdded, group="feeds")(noop)
    card: dict[str, Any] = {"type": "card.added", "card_id": "c1"}
    json = {"Content-Type": "application/json"}
    async with serving(app) as server, aiohttp.ClientSession() as client:
        for body, headers in ((card, AUTH), ([card, card], AUTH), (card, {}), ({"type": "nope"}, AUTH)):
            async with client.post(server.events_url, data=msgspec.json.encode(body), headers={**json, **headers}):
                pass
        samples = await scrape(client, f"{server.url}/metrics")
    assert total(samples, "streamproc_ingest_requests_total", status="202") == 2
    assert total(samples, "streamproc_ingest_requests_total", status="401") == 1
    assert total(samples, "streamproc_ingest_requests_total", status="422") == 1
    assert total(samples, "streamproc_ingest_request_duration_seconds_count", status="202") == 2
    assert total(samples, "streamproc_events_published_total", type="card.added") == 3
    stream = partition(app, CardAdded).stream
    assert total(samples, "streamproc_group_lag", stream=stream, group="feeds") == 3


async def test_ingest_metrics_when_the_app_already_has_metrics(ns: str, redis_url: str) -> None:
    """`streamproc ingest` with STREAMPROC_METRICS_PORT set: instrument() gives the app Metrics on the default
    registry before the ingest starts; its /metrics must still show the request counts."""
    app = ingest_app(ns, redis_url)
    app.register(CardAdded)
    app.instruments.metrics = Metrics(CollectorRegistry())
    async with serving(app) as server, aiohttp.ClientSession() as client:
        async with client.post(server.events_url, data=b'{"type": "card.added", "card_id": "c1"}',
                               headers={**AUTH, "Content-Type": "application/json"}) as resp:
            assert resp.status == 202
        samples = await scrape(client, f"{server.url}/metrics")
    assert total(samples, "streamproc_ingest_requests_total", status="202") == 1
    assert total(samples, "streamproc_events_published_total", type="card.added") == 1


async def test_inline_worker_endpoint_negotiates_and_has_no_created_series(
        ns: str, redis_url: str, redis: aioredis.Redis, worker_env: dict[str, str], spawned: Spawned) -> None:
    """`worker --inline` serves the default registry itself (prometheus_client's HTTP server in the worker)."""
    port = free_port()
    proc = spawned.streamproc("worker", "tests.metricsapp:app", "--inline", "--metrics-port", str(port),
                              env=worker_env)
    url = f"http://127.0.0.1:{port}/metrics"
    app = make_app(ns, fast_settings(redis_url))
    async with aiohttp.ClientSession() as client:
        try:
            await app.publish_many([Tick(n=i) for i in range(5)])

            async def all_counted() -> bool:
                try:
                    samples = await scrape(client, url)
                except aiohttp.ClientConnectionError:
                    return False
                return total(samples, "streamproc_events_processed_total") == 5

            await wait_for(all_counted, timeout=20)
            samples = await scrape_both(client, url)
        finally:
            await app.aclose()
    assert total(samples, "streamproc_events_processed_total", type="metrics.tick", group="count") == 5
    assert total(samples, "streamproc_redis_up") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, spawned.output(proc)


async def test_ingest_metrics_negotiate_and_report_redis_up_or_down(ns: str, fresh_redis: RedisServer) -> None:
    app = ingest_app(ns, fresh_redis.url)
    app.handler(CardAdded, group="feeds")(noop)
    async with serving(app) as server, aiohttp.ClientSession() as client:
        async with client.post(server.events_url, data=b'{"type": "card.added", "card_id": "c1"}',
                               headers={**AUTH, "Content-Type": "application/json"}) as resp:
            assert resp.status == 202  # so the counters have children, whose _created series would show
        url = f"{server.url}/metrics"
        samples = await scrape_both(client, url)
        assert total(samples, "streamproc_events_published_total", type="card.added") == 1
        assert total(samples, "streamproc_redis_up") == 1
        async with aiohttp.ClientSession(auto_decompress=False) as raw, \
                raw.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"  # as prometheus_client's own server does
            assert b"streamproc_build_info" in gzip.decompress(await resp.read())
        fresh_redis.stop()
        samples = await scrape_both(client, url)
        assert total(samples, "streamproc_redis_up") == 0
        assert total(samples, "streamproc_ingest_requests_total", status="202") == 1  # the rest is still served
        fresh_redis.start()
        assert total(await scrape_both(client, url), "streamproc_redis_up") == 1
