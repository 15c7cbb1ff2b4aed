"""Starting `python -m streamproc ...` in a subprocess of its own session, with its output kept in a file for the
failure message, and never leaving it behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


class Spawned:
    """The processes one test started; `cleanup` kills (by process group) any that still runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def streamproc(self, *args: str, env: dict[str, str], prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """`python -m streamproc ARGS`, run through `prefix` if given (e.g. faketime)."""
        log = self.directory / f"proc{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "streamproc", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((proc, log))
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        log = next(path for p, path in self.procs if p is proc)
        return log.read_text(errors="replace")[-5000:]

    def cleanup(self) -> None:
        """Kill what still runs: each process, its process group, and its descendants (which may have sessions of
        their own, e.g. the redis-server and workers of `streamproc dev`)."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                pids = [proc.pid, *descendants(proc.pid)]
                os.killpg(proc.pid, signal.SIGKILL)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the command name (field 2) may hold spaces and parentheses: split after its closing one
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    parents = _parents()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def spawning() -> Iterator[Spawned]:
    """For a fixture: `yield from spawning()`. Logs go to a temp dir of its own, not pytest's tmp_path, whose
    base directory a concurrent pytest session may prune."""
    directory = Path(tempfile.mkdtemp(prefix="streamproc-spawned-"))
    spawner = Spawned(directory)
    try:
        yield spawner
    finally:
        spawner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
