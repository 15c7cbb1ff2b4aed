"""The long-running commands: `streamproc worker` and `streamproc ingest`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from .. import eventloop
from ..app import App
from ..http.ingest import serve_ingest
from ..redis.server import check_server
from ..worker.process import stop_budget_s
from ..worker.supervisor import Supervisor, WorkerSpec, instrument, prepared_app, run_child
from .failures import UsageError, listening

log = logging.getLogger("streamproc.cli")


def worker_spec(args: argparse.Namespace) -> WorkerSpec:
    """The app and the settings its flags (or their variables) override; what no flag gives stays the app's."""
    overrides: dict[str, object] = {}
    for dest, setting in (("redis_url", "redis_url"), ("grace_period", "grace_period_s"),
                          ("metrics_port", "metrics_port"), ("no_auth", "ingest_auth_disabled")):
        value = getattr(args, dest, None)
        if value is not None:
            overrides[setting] = value
    return WorkerSpec(app_path=args.app, groups=tuple(getattr(args, "group", None) or ()), overrides=overrides,
                      concurrency=getattr(args, "concurrency", None), log_level=args.log_level,
                      log_format=args.log_format)


def cmd_worker(args: argparse.Namespace) -> int:
    spec = worker_spec(args)
    # Fail fast here on a bad import path or unknown group (exit 2, one line), not in every child, and not with a
    # traceback from inside the worker under --inline.
    app = prepared_app(spec)
    unknown = set(spec.groups) - set(app.groups())
    if unknown:
        raise UsageError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(app.groups())}")
    if args.inline:
        run_child(spec, serve_metrics=True)
        return 0
    # Children check the server too, but there a refusal only gets them restarted: refuse once, here, with exit 2.
    # A Redis that is down is not refused: workers wait out outages, at start as later, and never exit for one.
    asyncio.run(_check_server(app))
    # 0 means one per CPU, given by the flag as by the setting (a flag's 0 does not fall back to the setting).
    processes = (app.settings.processes if args.processes is None else args.processes) or os.cpu_count() or 1
    supervisor = Supervisor(spec, processes, stop_budget_s(app.settings))  # children's stop, Redis deadlines included
    if app.settings.metrics_port:
        supervisor.serve_metrics(app)
    return supervisor.run()


async def _check_server(app: App) -> None:
    """Refuse a Redis streamproc cannot run on (UnsupportedServer); one that is down is the children's to wait for."""
    try:
        await check_server(app.redis, app.settings, unreachable_ok=True)
    finally:
        await app.aclose()


def cmd_ingest(args: argparse.Namespace) -> int:
    app = prepared_app(worker_spec(args))
    host = args.host
    if host is None:
        # Without authentication anyone who can reach the port can publish: reachable from this machine only,
        # unless --host (or STREAMPROC_HOST) deliberately says otherwise.
        host = "127.0.0.1" if app.settings.ingest_auth_disabled else "0.0.0.0"
        if app.settings.ingest_auth_disabled:
            log.warning("authentication is off: listening on 127.0.0.1 only (--host 0.0.0.0 listens on every "
                        "interface)")
    instrument(app, "ingest")
    try:
        with listening(host, args.port):
            eventloop.run(_until_signalled(lambda stop: serve_ingest(app, host, args.port, stop)))
    finally:
        app.instruments.tracing.shutdown()
    return 0


async def _until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await serve(stopping)
