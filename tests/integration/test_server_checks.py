"""Workers and the ingest check the Redis server at start: they refuse an evicting maxmemory-policy unless the
settings allow it, and carry on (with a warning) when CONFIG is renamed away, reading the policy from INFO.

Each test starts a redis-server of its own, configured as the test needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streamproc import App, Context, Event, Settings, run_worker
from streamproc.errors import UnsupportedServer
from streamproc.http.ingest import serve_ingest
from streamproc.redis.server import check_server
from tests.inproc import fast_settings, running
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
EVICTING = ["--maxmemory-policy", "allkeys-lru"]
NO_CONFIG = ["--rename-command", "CONFIG", ""]


class Checked(Event, tag="checked"):
    n: int = 0


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A private redis-server started with the test's parameter as its extra arguments."""
    with RedisServer(extra=request.param) as s:
        yield s


def make_app(ns: str, url: str, **overrides: object) -> tuple[App, list[str]]:
    app = App(ns, settings=fast_settings(url, **overrides))
    seen: list[str] = []

    @app.handler(Checked, group="g")
    async def handle(event: Checked, ctx: Context) -> None:
        seen.append(ctx.event_id)

    return app, seen


async def keys_of(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


@pytest.mark.parametrize("server", [EVICTING, ["--maxmemory-policy", "volatile-ttl"]], indirect=True)
async def test_a_worker_refuses_an_evicting_memory_policy(server: RedisServer, ns: str) -> None:
    app, _ = make_app(ns, server.url)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(UnsupportedServer, match="needs maxmemory-policy noeviction") as refused:
                await run_worker(app, asyncio.Event())
    finally:
        await app.aclose()
    assert "STREAMPROC_ALLOW_EVICTING_MEMORY_POLICY=1" in str(refused.value)
    assert await keys_of(server.url) == 0, "refused before it created any group or stream"


@pytest.mark.parametrize("server", [EVICTING], indirect=True)
async def test_a_worker_runs_on_an_evicting_policy_when_the_settings_allow_it(
        server: RedisServer, ns: str, caplog: pytest.LogCaptureFixture) -> None:
    app, seen = make_app(ns, server.url, allow_evicting_memory_policy=True)
    try:
        with caplog.at_level(logging.WARNING, logger="streamproc.redis.server"):
            async with running(app) as worker:
                published = await app.publish(Checked())
                await worker.wait_for(lambda: published.event_id in seen)
    finally:
        await app.aclose()
    assert "maxmemory-policy is allkeys-lru" in caplog.text and "running anyway" in caplog.text


@pytest.mark.parametrize("server", [NO_CONFIG], indirect=True)
async def test_without_config_a_worker_reads_the_policy_from_info_warns_and_runs(
        server: RedisServer, ns: str, caplog: pytest.LogCaptureFixture) -> None:
    app, seen = make_app(ns, server.url)
    try:
        with caplog.at_level(logging.INFO, logger="streamproc.redis.server"):
            facts = await check_server(app.redis, app.settings)
            async with running(app) as worker:
                published = await app.publish(Checked())
                await worker.wait_for(lambda: published.event_id in seen)
    finally:
        await app.aclose()
    assert facts is not None and facts.memory_policy == "noeviction" and facts.policy_source == "INFO memory"
    assert "CONFIG GET is not available" in caplog.text
    assert "Redis 7." in caplog.text and "maxmemory-policy noeviction" in caplog.text


@pytest.mark.parametrize("server", [[*NO_CONFIG, *EVICTING]], indirect=True)
async def test_without_config_an_evicting_policy_is_still_refused(server: RedisServer, ns: str) -> None:
    app, _ = make_app(ns, server.url)
    try:
        with pytest.raises(UnsupportedServer, match=r"allkeys-lru \(INFO memory\)"):
            await run_worker(app, asyncio.Event())
    finally:
        await app.aclose()


@pytest.mark.parametrize("server", [[*NO_CONFIG, "--rename-command", "INFO", "", *EVICTING]], indirect=True)
async def test_a_server_that_shows_nothing_is_warned_about_and_used(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="streamproc.redis.server"):
            facts = await check_server(client, Settings(redis_url=server.url))
    finally:
        await client.aclose()
    assert facts is not None and facts.version is None and facts.memory_policy is None
    assert "could not read Redis's maxmemory-policy" in caplog.text


async def test_an_unreachable_server_is_skipped_only_when_the_caller_copes(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = aioredis.Redis.from_url(url)
    try:
        with caplog.at_level(logging.WARNING, logger="streamproc.redis.server"):
            assert await check_server(client, Settings(redis_url=url), unreachable_ok=True) is None
        assert "could not check the Redis server at start" in caplog.text
        with pytest.raises(aioredis.ConnectionError):
            await check_server(client, Settings(redis_url=url))
    finally:
        await client.aclose()


@pytest.mark.parametrize("server", [EVICTING], indirect=True)
async def test_the_ingest_refuses_an_evicting_memory_policy(server: RedisServer, ns: str) -> None:
    app, _ = make_app(ns, server.url, ingest_auth_disabled=True)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(UnsupportedServer, match="needs maxmemory-policy noeviction"):
                await serve_ingest(app, "127.0.0.1", 0, asyncio.Event())
    finally:
        await app.aclose()


def streamproc_cli(url: str, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(REDIS_URL=url, PROCAPP_NS=ns)
    return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("server", [EVICTING], indirect=True)
@pytest.mark.parametrize("command", [
    ["worker", "tests.procapp:app", "--processes", "1"],  # refused by the supervisor, before any child starts
    ["worker", "tests.procapp:app", "--inline"],
    ["ingest", "tests.procapp:app", "--no-auth", "--host", "127.0.0.1", "--port", "0"],
], ids=["worker", "inline-worker", "ingest"])
def test_the_command_line_refuses_with_a_message_and_exit_status_2(
        server: RedisServer, ns: str, command: list[str]) -> None:
    done = streamproc_cli(server.url, ns, *command)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "streamproc: error: Redis's maxmemory-policy is allkeys-lru" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "started worker process" not in done.stderr
