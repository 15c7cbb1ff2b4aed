"""Throwaway redis-server processes for the test suite.

Tests never touch a shared Redis (e.g. a system one on :6379): every server is
private, on a free loopback port, with its own temp dir, so tests can kill,
restart and flush it freely.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Locate redis-server: $REDIS_SERVER wins, else PATH."""
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            "redis-server not found: install it (apt-get install redis-server / brew install redis) "
            "or set REDIS_SERVER=/path/to/redis-server"
        )
    return path


def free_port() -> int:
    """Ask the kernel for an unused loopback port (tiny race window is acceptable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """Raw-socket PING so readiness checks don't depend on the client library."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private redis-server process. Port and dir survive restart()."""

    def __init__(self, *, appendonly: bool = False, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.appendonly = appendonly
        self.extra = list(extra)  # more redis-server arguments, e.g. ["--maxmemory", "20mb"]
        self.port = port if port is not None else free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="streamproc-redis-")
        self.dir = Path(self._tmp.name)
        self.logfile = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.logfile),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            # fsync every write so a SIGKILL right after an ack loses nothing.
            argv += ["--appendfsync", "always"]
        return argv + self.extra

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self._proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ping(self.port):
                return
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {self._diagnostics()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server not answering PING on {self.port} after {START_TIMEOUT}s")

    def _diagnostics(self) -> str:
        """stderr plus log tail: redis reports bind/config errors in one or the other."""
        err = b""
        if self._proc is not None and self._proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                err = self._proc.stderr.read()
        log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        return f"{err.decode(errors='replace').strip()} {log.strip()}".strip()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL if it does not exit in time."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no shutdown hooks, no final AOF rewrite."""
        self._terminate(signal.SIGKILL)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start on the same port and dir, so AOF data is reloaded."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its dir (data files, log)."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
