"""The notification sink as a process of its own, for scenario 5: `python -m bench.sinkproc --port 8787`.

It is handlers.sink.NotificationSink (POST /notify -> 202, GET /stats), with no faults, until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from handlers.sink import NotificationSink, SinkSettings
from streamproc import eventloop


async def serve(port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with NotificationSink(SinkSettings(port=port)).serving():
        await stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sinkproc")
    parser.add_argument("--port", type=int, required=True)
    eventloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
