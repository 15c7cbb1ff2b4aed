"""What both publishers (publish/publisher.py's async one, publish/sync.py's) know and decide, apart from sending.

`start_spans` starts a prepared batch's publish spans, and `PublisherState`, the base class of both, holds and
updates what a publisher remembers: which streams have their groups (`_ready`), which groups are declared on each
(`_declared`), which streams have groups at all (`_grouped`: appended with NOMKSTREAM), each stream's backlog
estimate (`_backlogs`) and the packed-command prefixes. The publishers differ only in how they talk to Redis (awaited
calls; blocking ones in SyncPublisher, which calls these methods under its lock and never holds it during a call).
Plain attributes on the publisher itself: the hot path reads them with no indirection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BacklogFull
from ..observe.instruments import Instruments
from ..observe.telemetry import Tracing, end_span, start_send
from ..settings import Settings
from ..topology import StartAt
from .entries import Prefixes, backlog_call, learned_groups
from .groups import Wanted

if TYPE_CHECKING:
    from ..keys import PartitionKeys
    from .publisher import Prepared

log = logging.getLogger(__name__)

# How often a publisher ensures its streams' groups again (which refreshes its declarations in the registry).
REDECLARE_S = 86_400.0


def start_spans(tracing: Tracing, prepared: list[Prepared]) -> None:
    """Start the PRODUCER span of each prepared event, in the caller's trace context. Called once the whole batch is
    encoded and routed, so an event that fails to (a bad event id, an integer too wide) leaves no span open."""
    tracer = tracing.tracer()  # None while no TracerProvider is set: one cheap check
    if tracer is None:
        return
    for p in prepared:
        p.span = start_send(tracer, p.fields, p.keys, p.event_id)


@dataclass(slots=True)
class Backlog:
    """A stream's backlog as Redis reported it at `read_at`, plus what this publisher appended since."""

    read_at: float
    estimate: int


_NOTHING: tuple[tuple[str, ...], tuple[Wanted, ...]] = ((), ())


def count_by_stream(prepared: list[Prepared]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in prepared:
        counts[p.keys.stream] = counts.get(p.keys.stream, 0) + 1
    return counts


class PublisherState:
    """A publisher's memory of Redis, and the decisions made from it (see the module docstring)."""

    _instruments: Instruments  # set by the publisher

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ready: set[str] = set()
        self._redeclare_at = time.monotonic() + REDECLARE_S
        self._declared: dict[str, dict[str, StartAt]] = {}
        self._grouped: set[str] = set()  # streams with declared groups: appended with NOMKSTREAM
        self._backlogs: dict[str, Backlog] = {}
        self._backlog_interval = settings.backlog_check_ms / 1000
        self._prefixes: Prefixes = {}

    def _observe(self, prepared: list[Prepared], error: Exception | None) -> None:
        """End the publish spans (with the error, if the send failed) and count what was appended."""
        metrics = self._instruments.metrics
        for p in prepared:
            if p.span is not None:
                end_span(p.span, error)
            if metrics is not None and error is None:
                metrics.published.labels(p.route.tag).inc()

    def _unready(self, prepared: list[Prepared]) -> tuple[tuple[str, ...], tuple[Wanted, ...]]:
        """The streams of a batch whose groups must be made before it is appended (all again once a day: that keeps
        this app's declarations fresh in the registry, so they never look orphaned), and what to make: this app's
        groups, and those learned before (from the registry, which Redis may have lost too)."""
        if time.monotonic() >= self._redeclare_at:
            self._ready.clear()
            self._redeclare_at = time.monotonic() + REDECLARE_S
        todo = {p.keys.stream: p for p in prepared if p.keys.stream not in self._ready}
        if not todo:
            return _NOTHING  # the hot path: every stream ready
        wanted = [Wanted(p.keys, p.route.all_groups(), dict(self._declared.get(s, {}))) for s, p in todo.items()]
        return tuple(todo), tuple(wanted)

    def _made_ready(self, streams: tuple[str, ...], found: dict[PartitionKeys, dict[str, StartAt]]) -> None:
        """The groups of `streams` exist now; `found`: what each stream's registry declares."""
        for keys, declared in found.items():
            self._learn(keys.stream, declared)
        self._ready.update(streams)

    def _learn(self, stream: str, declared: dict[str, StartAt]) -> None:
        self._declared.setdefault(stream, {}).update(declared)
        if self._declared[stream]:
            self._grouped.add(stream)

    def _vanished(self, prepared: list[Prepared], replies: list[object]) -> list[int]:
        """The entries not appended because their stream vanished after its groups were made (NOMKSTREAM: nil, when
        Redis lost its data while this publisher kept `_ready`); their streams are no longer ready. A plain XADD
        would have made the stream without groups, and a group made later at '$' (start="new") would miss them."""
        missing = [i for i, reply in enumerate(replies) if reply is None]
        if missing:
            streams = {prepared[i].keys.stream for i in missing}
            log.warning("stream(s) %s vanished (did Redis lose its data?); creating their groups again first",
                        ", ".join(sorted(streams)))
            self._ready.difference_update(streams)
        return missing

    def _stale(self, streams: dict[str, int], now: float) -> list[str]:
        """The streams whose backlog is to be read from Redis again (never read, or longer ago than
        `backlog_check_ms`)."""
        backlogs, interval = self._backlogs, self._backlog_interval
        return [s for s in streams if s not in backlogs or now - backlogs[s].read_at >= interval]

    def _backlog_call(self, p: Prepared) -> tuple[list[str], list[str | int]]:
        """backlog.lua's keys and arguments for p's stream: every group declared on it, the limit."""
        groups = sorted({**self._declared.get(p.keys.stream, {}), **p.route.all_groups()})
        return backlog_call(p.keys, groups, self._settings.max_backlog)

    def _record_backlogs(self, streams: list[str], replies: list[Any], now: float) -> None:
        """What backlog.lua answered for each stream: its backlog, and groups declared by another app since this
        publisher looked (counted from now on)."""
        for stream, (backlog, learned) in zip(streams, replies, strict=True):
            self._backlogs[stream] = Backlog(now, int(backlog))
            if learned:
                self._learn(stream, learned_groups(learned))

    def _take(self, counts: dict[str, int], limit: int) -> None:
        """Count a batch into its streams' backlog estimates, or raise BacklogFull (counting nothing) if it would
        take one past `limit`."""
        backlogs = self._backlogs
        for stream, n in counts.items():
            if backlogs[stream].estimate + n > limit:
                raise BacklogFull(stream, backlogs[stream].estimate, limit, n)
        for stream, n in counts.items():
            backlogs[stream].estimate += n
