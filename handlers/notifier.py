"""Delivering notifications outside Redis: the `Notifier` interface and its default, `HttpNotifier`.

A notifier's errors speak the worker's language, so a handler can let them propagate:

    2xx                                    delivered
    5xx, 408, 429, timeout, connection     `Retry`: the endpoint may recover (its Retry-After is honoured)
    any other answer (4xx, 3xx)            `DeadLetter`: sending the same request again cannot succeed

`HttpNotifier` keeps one aiohttp session per process, created on the first send (in the worker's own event loop),
and a token bucket that caps its sends per second across every handler of that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp
import msgspec

from streamproc import ConfigError, DeadLetter, Retry

DEFAULT_URL = "http://127.0.0.1:8787/notify"
# 408 and 429 are client errors that say "later", not "never".
RETRYABLE_STATUSES = frozenset({408, 429})
# A Retry-After further out than this is clamped: the worker's own backoff never waits longer either.
MAX_RETRY_AFTER_S = 300.0


class Notifier(Protocol):
    """Delivers one notification to one recipient; raises `Retry` or `DeadLetter` when it cannot."""

    async def send(self, recipient: str, payload: Mapping[str, object]) -> None: ...


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    """Where and how fast `HttpNotifier` sends. `rate` and `burst` are per process."""

    url: str = DEFAULT_URL
    rate: float = 1000.0  # sends per second, sustained
    burst: int = 100  # sends allowed at once after a quiet spell
    timeout_s: float = 5.0  # per request, connecting included
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.timeout_s <= 0 or self.max_connections < 1:
            raise ConfigError("notifier needs rate > 0, burst >= 1, timeout_s > 0 and max_connections >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> NotifierSettings:
        """NOTIFIER_URL, NOTIFIER_RATE, NOTIFIER_BURST, NOTIFIER_TIMEOUT_S; unset ones keep their defaults."""
        defaults = cls()
        try:
            return cls(url=environ.get("NOTIFIER_URL") or defaults.url,
                       rate=float(environ.get("NOTIFIER_RATE") or defaults.rate),
                       burst=int(environ.get("NOTIFIER_BURST") or defaults.burst),
                       timeout_s=float(environ.get("NOTIFIER_TIMEOUT_S") or defaults.timeout_s))
        except ValueError as exc:
            raise ConfigError(f"bad NOTIFIER_* setting: {exc}") from None


class TokenBucket:
    """At most `rate` acquisitions per second on average, and `burst` at once.

    Each caller takes its token at once, letting the balance go below zero, then sleeps until that token has
    accrued: waiters are served in arrival order without a lock or a polling loop. A caller cancelled while
    sleeping forfeits its token, which errs on the slow side.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it (0 if it was there)."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return max(0.0, -self.tokens / self.rate)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now (it is either seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def refusal(status: int, retry_after: str | None, detail: str) -> Retry | DeadLetter:
    """What a non-2xx answer means for the event."""
    what = f"notifier answered {status}: {detail[:200]}" if detail else f"notifier answered {status}"
    if status >= 500 or status in RETRYABLE_STATUSES:
        return Retry(delay=retry_after_seconds(retry_after), reason=what)
    return DeadLetter(what)


class HttpNotifier:
    """POSTs `{"recipient": ..., "notification": payload}` as JSON to `settings.url`.

    When the payload carries an `event_id`, the request carries `Idempotency-Key: <event id>:<recipient>`: a send
    whose answer was lost (a timeout after the endpoint acted) is retried, and this lets the endpoint drop the copy.
    """

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.bucket = TokenBucket(settings.rate, settings.burst)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, not at import: a session belongs to the event loop it was made in, and the
        # worker's loop only exists inside the worker process.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections))
        return self._session

    async def send(self, recipient: str, payload: Mapping[str, object]) -> None:
        await self.bucket.acquire()
        headers = {"Content-Type": "application/json"}
        event_id = payload.get("event_id")
        if isinstance(event_id, str):
            headers["Idempotency-Key"] = f"{event_id}:{recipient}"
        body = msgspec.json.encode({"recipient": recipient, "notification": payload})
        try:
            async with self._client().post(self.settings.url, data=body, headers=headers,
                                           allow_redirects=False) as response:
                if response.status < 300:
                    return
                detail = await response.text(errors="replace")
                raise refusal(response.status, response.headers.get("Retry-After"), detail.strip())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Retry(reason=f"notifier unreachable: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[HttpNotifier]:
        """For `app.worker_resources`: the session is closed when the worker has drained."""
        try:
            yield self
        finally:
            await self.aclose()
