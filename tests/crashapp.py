"""A crash-looping app for supervisor tests: every worker process of it dies (exit status 3) CRASHAPP_AFTER_S
seconds after it starts running its groups, whatever it is doing.

    python -m tests.crashapp    a real supervisor of one child, with restart timings small enough for a test
                                (env: REDIS_URL, CRASHAPP_NS, CRASHAPP_AFTER_S; SIGTERM stops it)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

from streamproc import App, Context, Event
from streamproc.observe.logs import configure_logging
from streamproc.worker.restarts import RestartPolicy
from streamproc.worker.supervisor import Supervisor, WorkerSpec

EXIT_STATUS = 3
# Doubling from 0.2 s to at most 1.6 s; never healthy within a test; a crash loop is 3 deaths within a minute.
POLICY = RestartPolicy(first_delay_s=0.2, max_delay_s=1.6, healthy_after_s=60.0, loop_deaths=3, loop_window_s=60.0)


class Tick(Event, tag="crash.tick"):
    n: int = 0


app = App(os.environ.get("CRASHAPP_NS", "crashapp"))


@app.handler(Tick, group="ticks")
async def tick(event: Tick, ctx: Context) -> None:
    return None


@contextlib.asynccontextmanager
async def die_soon() -> AsyncIterator[None]:
    """Entered as the worker starts its groups: schedules the process's own sudden death."""
    after = float(os.environ.get("CRASHAPP_AFTER_S", "1.0"))
    asyncio.get_running_loop().call_later(after, os._exit, EXIT_STATUS)
    yield


app.worker_resources.append(die_soon)


def main() -> int:
    configure_logging("INFO")
    return Supervisor(WorkerSpec(app_path="tests.crashapp:app"), 1, grace_period_s=2.0, restarts=POLICY).run()


if __name__ == "__main__":
    sys.exit(main())
