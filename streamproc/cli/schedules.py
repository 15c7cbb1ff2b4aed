"""`streamproc schedules list|pause|resume|trigger`: the app's cron schedules as Redis records them, and operating
them. Pause and resume reach every worker process within `schedule_poll_ms` (a second by default); a trigger fires
a schedule once now, with event ids of its own (cron:{name}:trigger:{moment}), so it is never deduplicated against
a tick and leaves the schedule's regular ticks as they were."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import msgspec

from ..schedule.ops import ScheduleRow, list_schedules, set_paused, trigger
from ..worker.supervisor import prepared_app
from .failures import UsageError
from .inspect import _with_redis
from .serve import worker_spec


def cmd_schedules(args: argparse.Namespace) -> int:
    app = prepared_app(worker_spec(args))
    command = args.schedules_command
    if command == "list":
        rows = _with_redis(app, lambda: list_schedules(app))
        _print(args, rows, lambda: _print_rows(rows))
        return 0
    name = args.name
    if name not in app.schedules:  # before Redis: a typo is a usage error whatever Redis does
        known = ", ".join(sorted(app.schedules)) or "none"
        raise UsageError(f"the app has no schedule {name!r} (its schedules: {known})")
    if command == "trigger":
        done = _with_redis(app, lambda: trigger(app, name))
        _print(args, done, lambda: print(f"triggered {name} at {done.tick}: {len(done.event_ids)} event(s) "
                                         f"{', '.join(done.event_ids) or '(none returned)'}"))
        return 0
    pausing = command == "pause"
    changed = _with_redis(app, lambda: set_paused(app, name, pausing))
    state = "paused" if pausing else "resumed"
    _print(args, {"name": name, "paused": pausing, "changed": changed},
           lambda: print(f"{name} {state}" if changed else f"{name} was {state} already"))
    return 0


def _print(args: argparse.Namespace, data: object, table: Callable[[], None]) -> None:
    if args.json:
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
    else:
        table()


def _print_rows(rows: list[ScheduleRow]) -> None:
    print(f"{'name':20} {'schedule':18} {'tz':16} {'next fire':26} {'last fired tick':26} {'paused':6} event id")
    for r in rows:
        schedule = r.expression if r.expression is not None else f"every {r.every_s:g}s"
        paused = "yes" if r.paused else "no"
        print(f"{r.name:20} {schedule:18} {r.tz:16} {r.next_fire or '-':26} {r.last_fired_tick or 'never':26} "
              f"{paused:6} {r.last_fired_event_id or '-'}")
    print(f"{len(rows)} schedule(s), {sum(r.paused for r in rows)} paused")
