"""The HTTP ceiling for scenario 4: a bare aiohttp server on uvloop that reads the body and answers 202.

    python -m bench.http_ceiling --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from streamproc import eventloop

BODY = b'{"events": []}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=BODY, content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/events", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_ceiling")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    eventloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
