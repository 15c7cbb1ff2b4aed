"""Server processes some scenarios run beside the measured ones: `python -m ...` in a session of its own, with its
output in a log file, waited for until its port answers, and stopped with SIGTERM (SIGKILL if it lingers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no output)"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def wait_port(port: int, proc: Process, log: Path, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"a server process exited with {proc.returncode}: {_tail(log)}")
        if _answers(port):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing answered on port {port}: {_tail(log)}")


@contextlib.asynccontextmanager
async def python_process(args: list[str], log: Path, env: dict[str, str] | None = None,
                         port: int | None = None) -> AsyncIterator[Process]:
    """`python ARGS...` for the duration; waits for `port` to answer when given."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        if port is not None:
            await wait_port(port, proc, log)
        yield proc
    finally:
        await terminate(proc)


async def terminate(proc: Process, grace_s: float = 20.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
