"""The `streamproc` command. Reads the environment once (Settings.from_env) and passes settings down."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import uvloop

from .app import App
from .devtools.dev import cmd_dev
from .errors import StreamprocError
from .http.auth import token_digest
from .http.ingest import serve_ingest
from .observe.logs import configure_logging
from .publish.inventory import GroupRow, delete_orphans, list_groups
from .redis.server import check_server
from .settings import Settings
from .topology import ORPHAN_AFTER_MS
from .worker.deadletter import DeadLettered, read_deadletters
from .worker.process import stop_budget_s
from .worker.supervisor import Supervisor, WorkerSpec, instrument, prepared_app, run_child


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="MODULE:ATTR", help="the streamproc App, e.g. handlers.app:app")
    p.add_argument("--redis-url", help="Redis to use (default: REDIS_URL, then the app's settings)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=("text", "json"), default="text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamproc", description="Event stream processing on Redis Streams")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run worker processes for the app's handler groups")
    _common(worker)
    worker.add_argument("--group", action="append", default=[], help="run only this group (repeatable)")
    worker.add_argument("--processes", type=int, default=None, help="worker processes (default: CPU count)")
    worker.add_argument("--concurrency", type=int, default=None, help="handlers running at once per group")
    worker.add_argument("--grace-period", type=float, default=None, help="seconds to finish in-flight work on stop")
    worker.add_argument("--inline", action="store_true", help="run one worker in this process, no supervisor")

    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")

    ingest = commands.add_parser("ingest", help="serve the HTTP ingest endpoint")
    _common(ingest)
    ingest.add_argument("--host", default="0.0.0.0")
    ingest.add_argument("--port", type=int, default=8080)
    ingest.add_argument("--no-auth", action="store_true", help="turn authentication off (local development only)")

    dev = commands.add_parser("dev", help="local Redis + ingest + workers (+ the app's dev services) in one command")
    _common(dev)
    dev.add_argument("--port", type=int, default=8080, help="ingest port")
    dev.add_argument("--processes", type=int, default=1)
    dev.add_argument("--metrics-port", type=int, default=9100)

    token = commands.add_parser("token-hash", help="print the SHA-256 digest of an ingest token for the settings")
    token.add_argument("token")

    dlq = commands.add_parser("dlq", help="inspect dead-lettered entries")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="list dead-lettered entries")
    _common(dlq_list)
    dlq_list.add_argument("--group", action="append", default=[], help="only this group (repeatable)")
    dlq_list.add_argument("--limit", type=int, default=1000, help="at most this many per dead-letter stream")
    dlq_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _groups_parser(commands)
    return parser


def _groups_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    groups = commands.add_parser("groups", help="list the consumer groups of the app's streams; delete orphans")
    groups_commands = groups.add_subparsers(dest="groups_command", required=True)
    for name, text in (("list", "list every group per stream, marking those no app declares (orphans)"),
                       ("delete-orphans", "delete the orphan groups and their retry bookkeeping (needs --yes)")):
        sub = groups_commands.add_parser(name, help=text)
        _common(sub)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sub.add_argument("--undeclared-for", type=float, default=ORPHAN_AFTER_MS / 1000, metavar="SECONDS",
                         help="a group no process declared for this long is an orphan (default: 7 days)")
        if name == "delete-orphans":
            sub.add_argument("--yes", action="store_true", help="really delete them")


def _spec(args: argparse.Namespace) -> WorkerSpec:
    overrides: dict[str, object] = {}
    # --redis-url, else REDIS_URL / STREAMPROC_REDIS_URL (Settings.from_env's precedence), else the app's own.
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    elif "REDIS_URL" in os.environ or "STREAMPROC_REDIS_URL" in os.environ:
        overrides["redis_url"] = Settings.from_env().redis_url
    if getattr(args, "grace_period", None) is not None:
        overrides["grace_period_s"] = args.grace_period
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics_port"] = args.metrics_port
    if getattr(args, "no_auth", False):
        overrides["ingest_auth_disabled"] = True
    return WorkerSpec(app_path=args.app, groups=tuple(getattr(args, "group", ())), overrides=overrides,
                      concurrency=getattr(args, "concurrency", None), log_level=args.log_level,
                      log_format=args.log_format)


def cmd_worker(args: argparse.Namespace) -> int:
    spec = _spec(args)
    # Fail fast here on a bad import path or unknown group (exit 2, one line), not in every child, and not with a
    # traceback from inside the worker under --inline.
    app = prepared_app(spec)
    unknown = set(spec.groups) - set(app.groups())
    if unknown:
        raise StreamprocError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(app.groups())}")
    if args.inline:
        run_child(spec, serve_metrics=True)
        return 0
    # Children check the server too, but there a refusal only gets them restarted: refuse once, here, with exit 2.
    asyncio.run(_check_server(app))
    processes = args.processes or app.settings.processes or os.cpu_count() or 1
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
    app = prepared_app(_spec(args))
    instrument(app, "ingest")
    try:
        uvloop.run(_until_signalled(lambda stop: serve_ingest(app, args.host, args.port, stop)))
    finally:
        app.instruments.tracing.shutdown()
    return 0


async def _until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await serve(stopping)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    app = prepared_app(_spec(args))
    keys = [keys.deadletter(h.group) for h in app.handlers if not args.group or h.group in args.group
            for keys in h.route.partitions]

    async def read() -> list[DeadLettered]:
        try:
            return await read_deadletters(app.redis, keys, args.limit)
        finally:
            await app.aclose()

    entries = asyncio.run(read())
    if args.json:
        rows = [{**msgspec.structs.asdict(d), "fields": {k.decode(errors="replace"): _json_value(v)
                                                          for k, v in d.fields.items()}} for d in entries]
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        _print_table(entries)
    return 0


def _json_value(value: bytes) -> str | dict[str, str]:
    """Text as text; anything else (msgpack event data, garbage) losslessly as {"base64": ...}."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def cmd_groups(args: argparse.Namespace) -> int:
    """`groups list` and `groups delete-orphans`: without --yes, deleting only says what it would delete (exit 2)."""
    app = prepared_app(_spec(args))
    window_ms = int(args.undeclared_for * 1000)
    if window_ms < 0:
        raise StreamprocError("--undeclared-for must not be negative")
    deleting = args.groups_command == "delete-orphans" and args.yes

    async def run() -> list[GroupRow]:
        try:
            if deleting:
                return await delete_orphans(app.redis, app.topology, window_ms)
            return await list_groups(app.redis, app.topology, window_ms)
        finally:
            await app.aclose()

    rows = asyncio.run(run())
    if args.groups_command == "delete-orphans" and not deleting:
        rows = [r for r in rows if r.status == "orphan"]
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        _print_groups(rows, args.groups_command, deleting)
    if args.groups_command == "delete-orphans" and not deleting and rows:
        raise StreamprocError(f"{len(rows)} orphan group(s) listed, none deleted: add --yes to delete them")
    return 0


def _print_groups(rows: list[GroupRow], command: str, deleted: bool) -> None:
    print(f"{'stream':40} {'group':20} {'status':9} {'lag':>8} {'pending':>8}  last declared")
    for r in rows:
        ago = "never recorded" if r.declared_ago_s is None else f"{r.declared_ago_s:,.0f}s ago"
        lag = "-" if r.lag is None else str(r.lag)
        state = r.status if r.exists else f"{r.status} (not on the stream)"
        print(f"{r.stream:40} {r.group:20} {state:9} {lag:>8} {r.pending:>8}  {ago}")
    if command == "delete-orphans":
        print(f"{len(rows)} orphan group(s) {'deleted' if deleted else 'would be deleted'}")
    else:
        print(f"{len(rows)} group(s), {sum(r.status == 'orphan' for r in rows)} orphan(s)")


def _print_table(entries: list[DeadLettered]) -> None:
    print(f"{'dead at (UTC)':20} {'group':14} {'type':18} {'event id':33} {'att':>3}  reason / last error")
    for d in entries:
        when = datetime.fromtimestamp(d.dead_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = f" [{d.error_type}: {d.error_message[:80]}]" if d.error_type not in ("", "DeadLetter") else ""
        print(f"{when:20} {d.group:14} {d.type:18} {d.event_id:33} {d.attempts:>3}  {d.reason}{error}")
    print(f"{len(entries)} dead-lettered entr{'y' if len(entries) == 1 else 'ies'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token-hash":
        print(token_digest(args.token))
        return 0
    configure_logging(args.log_level, args.log_format)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "worker": cmd_worker, "ingest": cmd_ingest, "dev": cmd_dev, "dlq": cmd_dlq_list, "groups": cmd_groups}
    try:
        return commands[args.command](args)
    except StreamprocError as exc:
        print(f"streamproc: error: {exc}", file=sys.stderr)
        return 2
