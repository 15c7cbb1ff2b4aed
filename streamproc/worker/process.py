"""A worker process: one GroupWorker per chosen handler group, plus maintenance, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from ..app import App
from ..publish.groups import ensure_app_groups
from ..redis.connection import command_deadline_s, read_deadline_s
from ..redis.errors import FatalRedisError
from ..redis.server import check_server
from ..settings import Settings
from .group import GroupWorker
from .loops import Recovery, until_done
from .promote import promote
from .retention import maintain
from .schedules import run_schedules

log = logging.getLogger(__name__)


def consumer_name() -> str:
    """Names the host and process, plus a random suffix so a restarted process with a reused pid is distinct."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def run_worker(app: App, stopping: asyncio.Event, groups: list[str] | None = None,
                     concurrency: int | None = None) -> None:
    """Run the app's handler groups (all, or those named) in this process until `stopping` is set.

    A fatal Redis error (redis/errors.py) in any loop stops the whole process gracefully, and is raised here once
    the groups have drained. The stop takes at most the grace period plus a read deadline and a command deadline;
    what is still running then is cancelled (its entries stay pending, for reclaim)."""
    by_group = app.groups()
    chosen = groups or sorted(by_group)
    unknown = set(chosen) - set(by_group)
    if unknown:
        raise ValueError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(by_group)}")
    consumer = consumer_name()
    fatal: list[FatalRedisError] = []

    def on_fatal(error: FatalRedisError) -> None:
        log.error("%s", error)
        fatal.append(error)
        stopping.set()

    # A server streamproc cannot run on safely (too old, evicting keys) ends the start with UnsupportedServer.
    await until_done("checking the Redis server", lambda: check_server(app.redis, app.settings), stopping,
                     Recovery(_nothing, on_fatal))
    # Every group the app declares, also those this process does not run (--group): a group whose worker is down
    # must exist before the next event is appended. Redis may be down, loading or full right now: wait it out
    # (until stopped) rather than fail the start.
    await until_done("creating consumer groups", lambda: ensure_app_groups(app.redis, app.topology), stopping,
                     Recovery(_nothing, on_fatal))
    workers = [GroupWorker(app, g, by_group[g], consumer, concurrency, on_fatal) for g in chosen]
    log.info("worker %s running groups %s", consumer, chosen)
    async with contextlib.AsyncExitStack() as resources, asyncio.TaskGroup() as tg:
        for resource in app.worker_resources:
            await resources.enter_async_context(resource())
        tasks = [tg.create_task(w.run()) for w in workers]
        tasks.append(tg.create_task(maintain(app, consumer, stopping, on_fatal)))
        tasks.append(tg.create_task(run_schedules(app, stopping, on_fatal)))  # cron: every process evaluates
        tasks.append(tg.create_task(promote(app, stopping, on_fatal)))  # delayed events: every process moves them
        await stopping.wait()
        for w in workers:
            w.stopping.set()
        await _within_stop_deadline(app, tasks)
    if fatal:
        raise fatal[0]


def stop_budget_s(settings: Settings) -> float:
    """How long a worker process's graceful stop may take: the grace period, plus one read deadline (the
    readers' last XREADGROUP) and one command deadline (the last flush), whatever Redis does."""
    return settings.grace_period_s + read_deadline_s(settings, settings.block_ms) + command_deadline_s(settings)


async def _within_stop_deadline(app: App, tasks: list[asyncio.Task[None]]) -> None:
    deadline = stop_budget_s(app.settings)
    _, late = await asyncio.wait(tasks, timeout=deadline)
    if late:
        log.error("the stop took longer than %.1fs (grace period plus Redis deadlines); cancelling what is left "
                  "(its entries stay pending and are reclaimed)", deadline)
        for task in late:
            task.cancel()


async def _nothing() -> None:
    return None
