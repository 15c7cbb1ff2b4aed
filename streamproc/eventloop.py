"""The event loop every streamproc process runs on: uvloop's where it is installed, asyncio's own elsewhere.

uvloop is a dependency only where it exists (CPython on Linux and macOS: see the marker in pyproject.toml), so on
Windows or PyPy the import fails and the standard loop does the same work, slower. One function, so that the CLI,
the supervisor's children and the dev command all choose the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not installed on this platform: asyncio's default loop
        return None
    return uvloop.new_event_loop


LOOP_FACTORY = _uvloop_factory()
LOOP = "uvloop" if LOOP_FACTORY is not None else "asyncio"  # which one run() uses, for logs and bench reports


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop and close it, as asyncio.run (and uvloop.run) do.

    asyncio.Runner rather than asyncio.run: Python 3.11's asyncio.run takes no loop factory."""
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        return runner.run(main)
