"""streamproc.eventloop: uvloop's loop where uvloop imports, asyncio's own where it does not (Windows, PyPy: the
dependency's marker leaves it out there). Each case runs in a fresh interpreter, so that blocking the import is
real: nothing imported uvloop before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, importlib, importlib.abc, pathlib, sys
if sys.argv[1] == "blocked":
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "uvloop" or name.startswith("uvloop."):
                raise ImportError("no uvloop on this platform")
    sys.meta_path.insert(0, Block())

# Every module of the package imports without uvloop (none may import it but streamproc.eventloop).
package = pathlib.Path(sys.argv[2])
for path in sorted(package.rglob("*.py")):
    if path.name != "__main__.py":
        importlib.import_module(".".join(("streamproc", *path.relative_to(package).with_suffix("").parts)))
from streamproc import eventloop

async def echo_once():
    # Real I/O on the loop: a loopback server, a client, one line each way.
    async def serve(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\\n")
    answer = await reader.readline()
    writer.close()
    server.close()
    await server.wait_closed()
    return type(asyncio.get_running_loop()).__module__.split(".")[0], answer.decode().strip()

loop_module, answer = eventloop.run(echo_once())
print(eventloop.LOOP, loop_module, answer, "uvloop" in sys.modules)
"""


def run_script(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(ROOT / "streamproc")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_uvloop_runs_where_it_is_installed() -> None:
    assert run_script("installed") == ["uvloop", "uvloop", "ping", "True"]


def test_asyncio_loop_runs_where_uvloop_cannot_be_imported() -> None:
    assert run_script("blocked") == ["asyncio", "asyncio", "ping", "False"]


def test_run_returns_the_result_and_raises_the_error_of_main() -> None:
    from streamproc import eventloop

    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise LookupError("from main")

    assert eventloop.run(answer()) == 42
    with pytest.raises(LookupError, match="from main"):
        eventloop.run(fail())
