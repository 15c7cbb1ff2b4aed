"""The one-shot commands that print data: `dlq list`, `groups list|delete-orphans` and `token-hash`. Each prints
a table (or a bare value) for people, and JSON with --json."""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from ..app import App
from ..publish.inventory import GroupRow, delete_orphans, list_groups
from ..worker.deadletter import DeadLettered, read_deadletters
from ..worker.supervisor import prepared_app
from .failures import UsageError, reaching_redis
from .serve import worker_spec

T = TypeVar("T")


def _with_redis(app: App, work: Callable[[], Awaitable[T]]) -> T:
    """Run one exchange with the app's Redis; a Redis that cannot be reached ends the command (exit 1)."""
    async def run() -> T:
        try:
            return await work()
        finally:
            await app.aclose()

    with reaching_redis(app.settings.redis_url):
        return asyncio.run(run())


def cmd_dlq_list(args: argparse.Namespace) -> int:
    app = prepared_app(worker_spec(args))
    unknown = set(args.group or ()) - set(app.groups())
    if unknown:
        raise UsageError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(app.groups())}")
    keys = [keys.deadletter(h.group) for h in app.handlers if not args.group or h.group in args.group
            for keys in h.route.partitions]
    entries = _with_redis(app, lambda: read_deadletters(app.redis, keys, args.limit))
    if args.json:
        rows = [{**msgspec.structs.asdict(d), "fields": {k.decode(errors="replace"): _json_value(v)
                                                          for k, v in d.fields.items()}} for d in entries]
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        _print_deadletters(entries)
    return 0


def _json_value(value: bytes) -> str | dict[str, str]:
    """Text as text; anything else (msgpack event data, garbage) losslessly as {"base64": ...}."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def cmd_groups(args: argparse.Namespace) -> int:
    """`groups list` and `groups delete-orphans`: without --yes, deleting only says what it would delete (exit 2)."""
    app = prepared_app(worker_spec(args))
    window_ms = int(args.undeclared_for * 1000)
    deleting = args.groups_command == "delete-orphans" and args.yes
    if deleting:
        rows = _with_redis(app, lambda: delete_orphans(app.redis, app.topology, window_ms))
    else:
        rows = _with_redis(app, lambda: list_groups(app.redis, app.topology, window_ms))
    if args.groups_command == "delete-orphans" and not deleting:
        rows = [r for r in rows if r.status == "orphan"]
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        _print_groups(rows, args.groups_command, deleting)
    if args.groups_command == "delete-orphans" and not deleting and rows:
        raise UsageError(f"{len(rows)} orphan group(s) listed, none deleted: add --yes to delete them")
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


def _print_deadletters(entries: list[DeadLettered]) -> None:
    print(f"{'dead at (UTC)':20} {'group':14} {'type':18} {'event id':33} {'att':>3}  reason / last error")
    for d in entries:
        when = datetime.fromtimestamp(d.dead_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = f" [{d.error_type}: {d.error_message[:80]}]" if d.error_type not in ("", "DeadLetter") else ""
        print(f"{when:20} {d.group:14} {d.type:18} {d.event_id:33} {d.attempts:>3}  {d.reason}{error}")
    print(f"{len(entries)} dead-lettered entr{'y' if len(entries) == 1 else 'ies'}")
