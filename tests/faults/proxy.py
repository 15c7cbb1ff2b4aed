"""A TCP fault proxy between clients and Redis, on a free loopback port, in a thread of its own (so it serves
in-process workers and worker subprocesses alike).

    pass        bytes flow both ways (optionally each chunk `delay` seconds late)
    blackhole   every connection open now goes dark: bytes are read and dropped, nothing is closed, no FIN, no RST
                (a partition, a NAT/load-balancer idle drop, a host gone without a word); new connections are
                accepted and go dark too
    reset       every open connection is closed with a RST (SO_LINGER 0)
    heal        new connections pass again; connections that went dark stay dark, as they would after a real
                partition whose dropped bytes never arrive (the client must notice and reconnect)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tests.redis_server import free_port


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    dark: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.delay = 0.0
        self._dark = False
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    # Faults ------------------------------------------------------------------------------------------------------

    def blackhole(self) -> None:
        def go() -> None:
            self._dark = True
            for link in self._links:
                link.dark = True

        self._call(go)

    def heal(self) -> None:
        def go() -> None:
            self._dark = False

        self._call(go)

    def reset(self) -> None:
        def go() -> None:
            for link in list(self._links):
                for writer in (link.client, link.upstream):
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                self._links.discard(link)

        self._call(go)

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    @property
    def connections(self) -> int:
        return len(self._links)

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                for writer in (link.client, link.upstream):
                    writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # Forwarding --------------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer, dark=self._dark)
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(link, reader, up_writer)),
                      asyncio.create_task(self._pump(link, up_reader, writer))]

    async def _pump(self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if link.dark:
                    continue  # read and dropped: the sender sees its writes succeed and never hears back
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.dark:
                sink.close()
                self._links.discard(link)


@contextlib.contextmanager
def fault_proxy(upstream_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
