"""HTTP load for scenario 4, from a process of its own: `wrk` when it is installed, else an aiohttp client.

Both keep `connections` keep-alive connections busy for `seconds`, POSTing the same JSON body, and report
requests/s and how many answers were not 2xx.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import call
from streamproc import eventloop

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
"""


@dataclass(frozen=True, slots=True)
class Load:
    url: str
    body_path: str
    connections: int
    seconds: float


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests_per_s: float
    failed: int  # answers that were not 2xx, and socket errors
    tool: str


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp client"


def shape() -> str:
    return "one thread" if shutil.which("wrk") else "one process, uvloop"


async def run_load(load: Load, work_dir: Path) -> LoadResult:
    if shutil.which("wrk"):
        return await asyncio.to_thread(_wrk, load, work_dir)
    return await call(client_main, load)


def _wrk(load: Load, work_dir: Path) -> LoadResult:
    script = work_dir / "post.lua"
    script.write_text(LUA.format(body=load.body_path))
    argv = ["wrk", "-t1", f"-c{load.connections}", f"-d{max(1, round(load.seconds))}s", "-s", str(script), load.url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=load.seconds + 60).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(non2xx.group(1)) if non2xx else 0
    failed += sum(int(x) for x in errors.groups()) if errors else 0
    return LoadResult(float(rate.group(1)), failed, "wrk")


def client_main(load: Load) -> LoadResult:
    return eventloop.run(_client(load))


async def _client(load: Load) -> LoadResult:
    body = await asyncio.to_thread(Path(load.body_path).read_bytes)
    headers = {"Content-Type": "application/json"}
    done = failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=load.connections)) as session:
        deadline = time.perf_counter() + load.seconds

        async def one() -> None:
            nonlocal done, failed
            while time.perf_counter() < deadline:
                async with session.post(load.url, data=body, headers=headers) as response:
                    await response.read()
                    done += 1
                    failed += response.status >= 300

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(load.connections):
                tg.create_task(one())
        return LoadResult(done / (time.perf_counter() - began), failed, "aiohttp client")
