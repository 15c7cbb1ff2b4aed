"""The supervisor: runs N worker processes, restarts the ones that die, and stops them all gracefully."""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess

from .. import eventloop
from ..app import App
from ..errors import ConfigError, StreamprocError
from ..observe.logs import configure_logging
from ..observe.metrics import Metrics, endpoint_registry
from ..observe.sdk import configure as configure_tracing
from .process import run_worker
from .restarts import CrashLoop, RestartPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker process needs, picklable so the spawned child can rebuild its app."""

    app_path: str
    groups: tuple[str, ...] = ()
    concurrency: int | None = None
    overrides: dict[str, object] = field(default_factory=dict)
    log_level: str = "INFO"
    log_format: str = "text"


def load_app(path: str) -> App:
    """Import `module:attribute` (as uvicorn and arq do), with the current directory importable."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected MODULE:ATTRIBUTE, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A module path that does not exist is a usage error (exit 2, one line); an import failing inside the
        # module is a bug there and keeps its traceback.
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise ConfigError(f"cannot import {module_name!r} (from {path!r}): {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise ConfigError(f"{path} is not a streamproc App (got {type(app).__name__})")
    return app


def prepared_app(spec: WorkerSpec) -> App:
    app = load_app(spec.app_path)
    if spec.overrides:
        app.settings = app.settings.replace(**spec.overrides)
    return app


def run_child(spec: WorkerSpec, serve_metrics: bool = False) -> None:
    """Entry point of one worker process: an event loop (eventloop.run) until SIGTERM/SIGINT, then a graceful drain.
    `serve_metrics`: this process serves /metrics itself (an --inline worker); children of a supervisor only
    record metrics (multiprocess files) and the supervisor serves them."""
    configure_logging(spec.log_level, spec.log_format)
    app = prepared_app(spec)
    instrument(app, "worker", serve_metrics)
    try:
        eventloop.run(_serve(app, spec))
    finally:
        app.instruments.tracing.shutdown()


def run_supervised_child(spec: WorkerSpec) -> None:
    """A supervisor's child: an error streamproc raises on purpose (a refused server, a fatal Redis error) ends it
    with its message and exit status 2, not a traceback. The supervisor restarts it with backoff."""
    try:
        run_child(spec)
    except StreamprocError as exc:
        log.error("worker process %d stopped: %s", os.getpid(), exc)
        sys.exit(2)


def instrument(app: App, role: str, serve_metrics: bool = False) -> None:
    """Turn on what the settings ask for: tracing (the OpenTelemetry SDK from the OTEL_* variables, unless a
    TracerProvider is set already: see observe/sdk.py) and metrics (a metrics port)."""
    shutdown = configure_tracing(app.settings, f"{app.name}-{role}", os.environ)
    if shutdown is not None:
        app.instruments.tracing.owned_shutdown = shutdown
    if app.settings.metrics_port and app.instruments.metrics is None:
        app.instruments.metrics = Metrics()
        if serve_metrics:  # the app's metrics (the default registry), stream state, redis_up and build_info
            start_http_server(app.settings.metrics_port,
                              registry=endpoint_registry(app.topology, app.settings.redis_url, [REGISTRY]))


async def _serve(app: App, spec: WorkerSpec) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    try:
        await run_worker(app, stopping, list(spec.groups) or None, spec.concurrency)
    finally:
        await app.aclose()
    log.info("worker %d stopped cleanly", os.getpid())


def dump_tasks() -> None:
    """SIGUSR1: log every asyncio task and where it waits, to diagnose a worker that seems stuck."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()} {task!r:.200}", file=out)
        task.print_stack(limit=12, file=out)
    log.warning("asyncio tasks of worker %d:\n%s", os.getpid(), out.getvalue())


@dataclass(slots=True)
class _Slot:
    process: multiprocessing.process.BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor:
    def __init__(self, spec: WorkerSpec, processes: int, grace_period_s: float,
                 restarts: RestartPolicy | None = None) -> None:
        self.spec = spec
        self.slots = [_Slot() for _ in range(processes)]
        self.grace_period_s = grace_period_s
        self.restarts = restarts or RestartPolicy()
        self.crash_loop = CrashLoop(self.restarts)
        self.stopping = False
        self._mp = multiprocessing.get_context("spawn")
        self._metrics_dir: str | None = None

    def serve_metrics(self, app: App) -> None:
        """One /metrics for all children: they write prometheus multiprocess files to a private directory
        (PROMETHEUS_MULTIPROC_DIR, inherited by spawned children), which this process sums at scrape time."""
        self._metrics_dir = tempfile.mkdtemp(prefix="streamproc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        children = prometheus_multiprocess.MultiProcessCollector(None, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        # Stream state, redis_up and build_info come from this process, once, not from each child.
        start_http_server(app.settings.metrics_port,
                          registry=endpoint_registry(app.topology, app.settings.redis_url, [children]))
        log.info("metrics on http://0.0.0.0:%d/metrics", app.settings.metrics_port)

    def _start(self, slot: _Slot) -> None:
        slot.process = self._mp.Process(target=run_supervised_child, args=(self.spec,), name="streamproc-worker")
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker process %s", slot.process.pid)

    def _check(self, slot: _Slot) -> None:
        """Start a slot's process, or restart it with backoff if it died."""
        now = time.monotonic()
        proc = slot.process
        if proc is not None and proc.is_alive():
            return
        if proc is not None and slot.restart_at == 0.0:
            self._died(slot, proc, now)
        if now >= slot.restart_at:
            slot.restart_at = 0.0
            self._start(slot)

    def _died(self, slot: _Slot, proc: multiprocessing.process.BaseProcess, now: float) -> None:
        """Schedule the restart of a slot whose child died (backoff: restarts.py), and warn of a crash loop."""
        ran = now - slot.started_at
        slot.failures, delay = self.restarts.after_death(slot.failures, ran)
        slot.restart_at = now + delay
        log.error("worker process %s exited with %s; restarting in %.2fs (it ran %.1fs; death %d in a row)",
                  proc.pid, proc.exitcode, delay, ran, slot.failures)
        deaths = self.crash_loop.died(now)
        if deaths is not None:
            log.warning("crash loop: %d worker process deaths in the last %gs; restart delays double up to %gs. "
                        "Each death hands the entries its process held to other workers with one more delivery "
                        "counted: find the cause in the errors above", deaths,
                        self.restarts.loop_window_s, self.restarts.max_delay_s)
        if self._metrics_dir is not None and proc.pid is not None:
            prometheus_multiprocess.mark_process_dead(proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _request_stop(self, signum: int, _frame: object) -> None:
        log.info("received %s; stopping workers (grace period %.1fs)", signal.Signals(signum).name,
                 self.grace_period_s)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        while not self.stopping:
            for slot in self.slots:
                self._check(slot)
            time.sleep(0.05)
        self._stop_all()
        return 0

    def _stop_all(self) -> None:
        alive = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for proc in alive:
            if proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        # Children need the grace period plus time to flush acks and close connections.
        deadline = time.monotonic() + self.grace_period_s + 5.0
        for proc in alive:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker process %s did not stop in time; killing it (its entries stay pending)", proc.pid)
                proc.kill()
                proc.join()
        log.info("all workers stopped")
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
