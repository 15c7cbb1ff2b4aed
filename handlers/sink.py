"""A stand-in for a push-notification provider: a small aiohttp server that accepts and counts notifications.

    POST /notify   {"recipient": ..., "notification": {...}} -> 202; 400 if the body is not that
    GET  /stats    the counts so far, as JSON

It can be told to fail: a fraction of requests answered 503 (retryable) or 400 (permanent), from its settings
(SINK_FAIL_503, SINK_FAIL_400) or per request from the query (`/notify?fail_503=0.1&fail_400=0.01`), so a
notifier URL can carry its own faults. Tests also script faults per recipient (`Faults.fail_once`) and slow
answers (`Faults.delay_s`).

`streamproc dev handlers.app:app` runs one (`sink_service`) and gives the workers its URL as NOTIFIER_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from streamproc import ConfigError

log = logging.getLogger(__name__)

# Idempotency keys remembered to count duplicates; the oldest are forgotten first, so memory stays bounded.
KEYS_REMEMBERED = 200_000


@dataclass(frozen=True, slots=True)
class SinkSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    fail_503: float = 0.0  # fraction of requests answered 503
    fail_400: float = 0.0  # fraction of requests answered 400
    retry_after: str | None = None  # sent with every 503 when set
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.fail_503 <= 1.0 and 0.0 <= self.fail_400 <= 1.0):
            raise ConfigError("sink failure fractions must be between 0 and 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SinkSettings:
        """SINK_PORT, SINK_FAIL_503, SINK_FAIL_400, SINK_RETRY_AFTER."""
        try:
            return cls(port=int(environ.get("SINK_PORT") or 0),
                       fail_503=float(environ.get("SINK_FAIL_503") or 0.0),
                       fail_400=float(environ.get("SINK_FAIL_400") or 0.0),
                       retry_after=environ.get("SINK_RETRY_AFTER") or None)
        except ValueError as exc:
            raise ConfigError(f"bad SINK_* setting: {exc}") from None


@dataclass(slots=True)
class Faults:
    """What the sink does wrong on purpose. Mutable, so a test can change it while the sink runs."""

    fail_503: float = 0.0
    fail_400: float = 0.0
    retry_after: str | None = None
    fail_once: dict[str, int] = field(default_factory=dict)  # recipient -> status for their first request
    delay_s: float = 0.0  # answer this late (a notifier with a shorter timeout gives up)


class Delivery(msgspec.Struct, frozen=True):
    """The body of POST /notify."""

    recipient: str
    notification: dict[str, object]


@dataclass(slots=True)
class SinkStats:
    received: int = 0
    accepted: int = 0
    answered: Counter[int] = field(default_factory=Counter)  # by HTTP status
    by_recipient: Counter[str] = field(default_factory=Counter)  # accepted only
    duplicates: int = 0  # accepted with an Idempotency-Key accepted before
    seen_keys: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def accept(self, recipient: str, key: str | None) -> None:
        self.accepted += 1
        self.by_recipient[recipient] += 1
        if key is None:
            return
        if key in self.seen_keys:
            self.duplicates += 1
            return
        self.seen_keys[key] = None
        if len(self.seen_keys) > KEYS_REMEMBERED:
            self.seen_keys.popitem(last=False)

    def as_json(self) -> dict[str, object]:
        return {"received": self.received, "accepted": self.accepted, "duplicates": self.duplicates,
                "recipients": len(self.by_recipient),
                "answered": {str(status): n for status, n in sorted(self.answered.items())}}


class NotificationSink:
    def __init__(self, settings: SinkSettings | None = None) -> None:
        self.settings = settings or SinkSettings()
        self.faults = Faults(self.settings.fail_503, self.settings.fail_400, self.settings.retry_after)
        self.stats = SinkStats()
        self.rng = random.Random(self.settings.seed)

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/notify", self.notify)
        app.router.add_get("/stats", self.stats_json)
        return app

    async def notify(self, request: web.Request) -> web.Response:
        self.stats.received += 1
        try:
            delivery = msgspec.json.decode(await request.read(), type=Delivery)
        except msgspec.DecodeError as exc:
            return self._answer(400, f"bad notification: {exc}")
        status = self._planned_status(delivery.recipient, request.query)
        if self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if status == 202:
            self.stats.accept(delivery.recipient, request.headers.get("Idempotency-Key"))
            return self._answer(202, "")
        headers = {"Retry-After": self.faults.retry_after} if status == 503 and self.faults.retry_after else {}
        return self._answer(status, "failing on purpose", headers)

    def _planned_status(self, recipient: str, query: Mapping[str, str]) -> int:
        scripted = self.faults.fail_once.pop(recipient, None)
        if scripted is not None:
            return scripted
        fail_503 = _fraction(query.get("fail_503"), self.faults.fail_503)
        fail_400 = _fraction(query.get("fail_400"), self.faults.fail_400)
        roll = self.rng.random()
        if roll < fail_400:
            return 400
        if roll < fail_400 + fail_503:
            return 503
        return 202

    def _answer(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
        self.stats.answered[status] += 1
        return web.Response(status=status, text=text, headers=headers)

    async def stats_json(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on the configured host and port for the duration; yields the base URL."""
        runner = web.AppRunner(self.web_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()


def _fraction(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return min(1.0, max(0.0, float(text)))
    except ValueError:
        return default


@contextlib.asynccontextmanager
async def sink_service(settings: SinkSettings) -> AsyncIterator[Mapping[str, str]]:
    """A dev service (see `App.dev_services`): a sink for the workers to notify, and its URL for them."""
    sink = NotificationSink(settings)
    async with sink.serving() as url:
        log.info("notification sink on %s/notify (counts: %s/stats)", url, url)
        yield {"NOTIFIER_URL": f"{url}/notify"}
        log.info("notification sink stopping: %s", sink.stats.as_json())
