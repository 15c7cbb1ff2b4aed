"""The app's cron schedules in a worker process (schedule/runner.py), with the outage handling of every worker
loop (loops.py): Redis down or full is waited out, a fatal error stops the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..app import App
from ..redis.errors import FatalRedisError
from ..schedule.runner import ScheduleRunner, Step
from .loops import Recovery, repeat


async def run_schedules(app: App, stopping: asyncio.Event, on_fatal: Callable[[FatalRedisError], None]) -> None:
    """Evaluate the app's schedules until stopped (at once, if it has none)."""
    if not app.schedules:
        return

    async def nothing() -> None:  # schedules read no consumer group: nothing to recreate
        return None

    async def evaluate(step: Step) -> None:
        await repeat("schedules", step, stopping, Recovery(nothing, on_fatal))

    await ScheduleRunner(app).run(evaluate)
