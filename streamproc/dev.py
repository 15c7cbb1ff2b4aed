"""`streamproc dev`: a local Redis, the ingest server, the workers and the app's dev services in one command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

import uvloop

from .app import App
from .ingest import serve_ingest
from .localredis import LocalRedis
from .supervisor import WorkerSpec, instrument, prepared_app

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    """The given Redis, or a throwaway local one for the duration."""
    if url:
        yield url
        return
    with LocalRedis() as server:
        yield server.url


def worker_command(app_path: str, redis_url: str, processes: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "streamproc", "worker", app_path, "--processes", str(processes),
            "--redis-url", redis_url, "--metrics-port", str(metrics_port)]


async def _run(app: App, args: argparse.Namespace, redis_url: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with contextlib.AsyncExitStack() as stack:
        env = dict(os.environ)
        for service in app.dev_services:
            env.update(await stack.enter_async_context(service()))
        command = worker_command(args.app, redis_url, args.processes, args.metrics_port)
        # A session of its own: the terminal's Ctrl-C reaches only us, and we forward it once, as SIGTERM.
        worker = await asyncio.create_subprocess_exec(*command, env=env, start_new_session=True)
        try:
            print(f"redis    {redis_url}\ningest   http://127.0.0.1:{args.port}/v1/events  (auth off)\n"
                  f"metrics  http://127.0.0.1:{args.metrics_port}/metrics (workers), "
                  f"http://127.0.0.1:{args.port}/metrics (ingest)\nCtrl-C stops everything.", flush=True)
            await serve_ingest(app, "127.0.0.1", args.port, stopping)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(app.settings.grace_period_s + 10):
                    await worker.wait()
            except TimeoutError:
                worker.kill()


def cmd_dev(args: argparse.Namespace) -> int:
    spec = WorkerSpec(app_path=args.app)
    with _redis(args.redis_url) as redis_url:
        app = prepared_app(spec)
        app.settings = app.settings.replace(redis_url=redis_url, ingest_auth_disabled=True)
        instrument(app, "ingest")
        uvloop.run(_run(app, args, redis_url))
    log.info("dev stopped")
    return 0
