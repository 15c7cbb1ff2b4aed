"""A throwaway local redis-server: free loopback port, temp dir, no persistence. For the demo and `streamproc dev`.

    with LocalRedis() as server:
        app.settings = app.settings.replace(redis_url=server.url)
        ...

Nothing it starts outlives it: stopping sends SIGTERM (SIGKILL if that is not enough) and deletes the temp dir.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import StreamprocError

INSTALL_HINT = (
    "redis-server (version 7 or newer) was not found on PATH. Install it:\n"
    "  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y redis-server   (or run `make install`)\n"
    "  macOS:          brew install redis\n"
    "or pass the path of an existing binary."
)


class LocalRedisError(StreamprocError):
    """redis-server is missing, or would not start or answer."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """One private, non-persistent redis-server process, started on a free 127.0.0.1 port."""

    def __init__(self, *, binary: str | None = None, start_timeout_s: float = 10.0, stop_timeout_s: float = 10.0,
                 attempts: int = 3) -> None:
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.attempts = attempts  # a free port can be taken by someone else before redis binds it: try another
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self._proc is None:
            raise LocalRedisError("LocalRedis is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path | None:
        """The server's temp dir (its log is `redis.log` there), while it exists."""
        return self._dir

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise LocalRedisError("LocalRedis is already started")
        binary = self.binary or shutil.which("redis-server")
        if binary is None:
            raise LocalRedisError(INSTALL_HINT)
        self._dir = Path(tempfile.mkdtemp(prefix="streamproc-redis-"))
        failure = ""
        for _ in range(self.attempts):
            self.port = _free_port()
            self._proc = self._spawn(binary, self._dir)
            failure = self._wait_ready()
            if not failure:
                return
            self._terminate()
        self._remove_dir()
        raise LocalRedisError(f"redis-server did not start: {failure}")

    def _spawn(self, binary: str, directory: Path) -> subprocess.Popen[bytes]:
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--logfile", str(directory / "redis.log"), "--save", "", "--appendonly", "no",
                "--daemonize", "no"]
        # Its own session: a Ctrl-C meant for our program must not stop Redis before our workers have drained.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self) -> str:
        """'' once PING answers, else why not."""
        assert self._proc is not None and self._dir is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if _answers_ping(self.port):
                return ""
            if self._proc.poll() is not None:
                return f"exited with {self._proc.returncode}: {self._log_tail()}"
            time.sleep(0.02)
        return f"no answer to PING on port {self.port} after {self.start_timeout_s}s: {self._log_tail()}"

    def _log_tail(self) -> str:
        log = self._dir / "redis.log" if self._dir else None
        return log.read_text(errors="replace")[-1000:].strip() if log and log.exists() else "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Then delete the temp dir. Safe to call twice."""
        self._terminate()
        self._remove_dir()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
