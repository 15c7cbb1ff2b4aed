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

from .. import eventloop
from ..app import App
from ..http.ingest import serve_ingest
from ..worker.supervisor import WorkerSpec, instrument, prepared_app
from .localredis import LocalRedis

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    """The given Redis, or a throwaway local one for the duration."""
    if url:
        yield url
        return
    with LocalRedis() as server:
        yield server.url


def worker_command(args: argparse.Namespace, redis_url: str) -> list[str]:
    return [sys.executable, "-m", "streamproc", "worker", args.app, "--processes", str(args.processes),
            "--redis-url", redis_url, "--metrics-port", str(args.metrics_port), "--log-level", args.log_level,
            "--log-format", args.log_format, *(["--debug"] if args.debug else [])]


async def _run(app: App, args: argparse.Namespace, redis_url: str) -> int:
    """Serve until Ctrl-C/SIGTERM; returns the workers' exit status (0 when they stopped cleanly)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with contextlib.AsyncExitStack() as stack:
        env = dict(os.environ)
        for service in app.dev_services:
            env.update(await stack.enter_async_context(service()))
        command = worker_command(args, redis_url)
        # A session of its own: the terminal's Ctrl-C reaches only us, and we forward it once, as SIGTERM.
        worker = await asyncio.create_subprocess_exec(*command, env=env, start_new_session=True)
        def listening(port: int) -> None:
            print(f"redis    {redis_url}\ningest   http://127.0.0.1:{port}/v1/events  (auth off)\n"
                  f"metrics  http://127.0.0.1:{args.metrics_port}/metrics (workers), "
                  f"http://127.0.0.1:{port}/metrics (ingest)\nCtrl-C stops everything.", flush=True)

        try:
            await serve_ingest(app, "127.0.0.1", args.port, stopping, started=listening)
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(app.settings.grace_period_s + 10):
                    await worker.wait()
            except TimeoutError:
                worker.kill()
        if worker.returncode != 0:
            log.error("workers exited with status %s", worker.returncode)
        return 0 if worker.returncode == 0 else 1


def cmd_dev(args: argparse.Namespace) -> int:
    spec = WorkerSpec(app_path=args.app)
    with _redis(args.redis_url) as redis_url:
        app = prepared_app(spec)
        app.settings = app.settings.replace(redis_url=redis_url, ingest_auth_disabled=True)
        instrument(app, "ingest")
        try:
            status = eventloop.run(_run(app, args, redis_url))
        finally:
            app.instruments.tracing.shutdown()  # flushes the exporters, as the worker and ingest commands do
    log.info("dev stopped")
    return status
