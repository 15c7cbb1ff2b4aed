"""A worker process: one GroupWorker per chosen handler group, plus maintenance, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from ..app import App
from ..publish.groups import ensure_groups
from .group import GroupWorker
from .retention import maintain

log = logging.getLogger(__name__)


def consumer_name() -> str:
    """Names the host and process, plus a random suffix so a restarted process with a reused pid is distinct."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def run_worker(app: App, stopping: asyncio.Event, groups: list[str] | None = None,
                     concurrency: int | None = None) -> None:
    """Run the app's handler groups (all, or those named) in this process until `stopping` is set."""
    by_group = app.groups()
    chosen = groups or sorted(by_group)
    unknown = set(chosen) - set(by_group)
    if unknown:
        raise ValueError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(by_group)}")
    consumer = consumer_name()
    wanted = [(keys.stream, g, h.start) for g in chosen for h in by_group[g] for keys in h.route.partitions]
    await ensure_groups(app.redis, wanted)
    workers = [GroupWorker(app, g, by_group[g], consumer, concurrency) for g in chosen]
    log.info("worker %s running groups %s", consumer, chosen)
    async with contextlib.AsyncExitStack() as resources, asyncio.TaskGroup() as tg:
        for resource in app.worker_resources:
            await resources.enter_async_context(resource())
        for w in workers:
            tg.create_task(w.run())
        tg.create_task(maintain(app, consumer, stopping))
        await stopping.wait()
        for w in workers:
            w.stopping.set()
