"""What both publishers (publish/publisher.py's async one, publish/sync.py's) know and decide, apart from sending.

Starting the publish spans of a prepared batch, and `PublisherState`: which streams have their groups (ready),
which groups are declared on each, which streams have groups at all (appended with NOMKSTREAM), each stream's
backlog estimate, and the packed-command prefixes. The publishers differ only in how they talk to Redis (awaited
calls, or blocking ones under a lock in SyncPublisher, which this state does not take itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..observe.telemetry import Tracing, start_send

if TYPE_CHECKING:
    from .publisher import Prepared


def start_spans(tracing: Tracing, prepared: list[Prepared]) -> None:
    """Start the PRODUCER span of each prepared event, in the caller's trace context. Called once the whole batch is
    encoded and routed, so an event that fails to (a bad event id, an integer too wide) leaves no span open."""
    tracer = tracing.tracer()  # None while no TracerProvider is set: one cheap check
    if tracer is None:
        return
    for p in prepared:
        p.span = start_send(tracer, p.fields, p.keys, p.event_id)
