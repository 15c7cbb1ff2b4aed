"""Publishing the events of one tick, with event ids derived from the schedule and the tick, so that every process
that fires the same tick appends its events once: the dedup of producer-given event ids (publish_once.lua) is
atomic with the append.

    cron:{name}:{tick}                 the event of a tick (tick in UTC, e.g. 2026-03-30T07:00:00Z)
    cron:{name}:{tick}:{i}             the i-th event of a tick whose function returned a list
    cron:{name}:trigger:{moment}       an event of `streamproc schedules trigger` (moment to the microsecond):
                                       never deduplicated against a tick, nor against another trigger
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..publish.publisher import Outgoing, Published
from .declare import TickEvents

if TYPE_CHECKING:
    from ..app import App


@dataclass(frozen=True, slots=True)
class Fired:
    """What firing a tick did: its event ids, and how many of them this call appended (the others were appended
    before, by this or another process)."""

    event_ids: list[str]
    appended: int

    @property
    def first_id(self) -> str:
        return self.event_ids[0] if self.event_ids else ""


def event_ids(name: str, label: str, batch: TickEvents) -> list[str]:
    base = f"cron:{name}:{label}"
    return [f"{base}:{i}" for i in range(len(batch.events))] if batch.listed else [base]


def trigger_label(seconds: int, micros: int) -> str:
    """The label of a manual trigger at Redis time (seconds, microseconds)."""
    moment = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"trigger:{moment}.{micros:06d}Z"


async def publish_tick(app: App, name: str, label: str, batch: TickEvents, marker_ms: int) -> Fired:
    """Publish a tick's events with their derived ids; each id's dedup marker lives `marker_ms`."""
    ids = event_ids(name, label, batch)
    if not batch.events:
        return Fired([], 0)
    publisher = app.publisher
    prepared = publisher.prepare([Outgoing(e, event_id=i) for e, i in zip(batch.events, ids, strict=True)])
    for p in prepared:
        p.dedup_ms = marker_ms
    published: list[Published] = await publisher.send(prepared)
    return Fired(ids, sum(p.appended for p in published))
