"""A streamproc worker process under measurement: `streamproc.run_worker` on uvloop, started by bench.procs.

It loads an app by path, points it at the benchmark's Redis, waits at the barrier, runs until SIGTERM (then
drains gracefully, as `streamproc worker` does), and finally writes what the `timed` handler recorded.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import wait_for_go
from streamproc import App, eventloop, run_worker


@dataclass(frozen=True, slots=True)
class WorkerJob:
    app_path: str  # "bench.apps:noop"
    redis_url: str
    concurrency: int | None = None
    settings: dict[str, object] = field(default_factory=dict)  # Settings overrides
    latencies_out: str = ""  # where to write bench.apps.LATENCIES_US at stop (int64 array bytes)


def load_app(path: str) -> App:
    module_name, _, attr = path.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    if not isinstance(app, App):
        raise TypeError(f"{path} is not a streamproc App")
    return app


def worker_main(job: WorkerJob) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    app = load_app(job.app_path)
    app.settings = app.settings.replace(redis_url=job.redis_url, **job.settings)
    wait_for_go(job.redis_url)
    eventloop.run(_serve(app, job.concurrency))
    if job.latencies_out:
        from bench.apps import LATENCIES_US

        Path(job.latencies_out).write_bytes(LATENCIES_US.tobytes())


async def _serve(app: App, concurrency: int | None) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await run_worker(app, stopping, concurrency=concurrency)
    finally:
        await app.aclose()
