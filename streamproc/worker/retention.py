"""Stream retention and consumer-group hygiene, run periodically by every worker process.

Trimming never removes an entry some declared group still needs: the Lua script finds, in one atomic step, the
oldest entry that any declared group has pending, not yet read, or scheduled for retry, and trims only below it and
below the retention policy (age, then length) for fully acknowledged history. The same call records each group's
checkpoint (where it is recreated if it vanishes) and refreshes this app's declarations. One process trims a stream
at a time (a lock for one interval); groups that no app declares any more (orphans) are reported, and hold nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from ..app import App
from ..keys import PartitionKeys
from ..publish.groups import ensure_app_groups
from ..redis.errors import FatalRedisError
from ..redis.resp import text
from ..redis.scripts import DELETE_IDLE_CONSUMERS, TRIM
from ..topology import ORPHAN_AFTER_MS
from .loops import Recovery, repeat

log = logging.getLogger(__name__)

# The length policy inspects at most this many entries per stream and pass, to keep each call short.
TRIM_INSPECT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class TrimPass:
    """One trim call: this app's groups on the stream, the other groups it knows are declared there, and the lock
    (owner '' for a one-off trim that takes none)."""

    keys: PartitionKeys
    retention_ms: int
    max_length: int
    own: tuple[str, ...] = ()
    others: frozenset[str] = frozenset()
    owner: str = ""
    lock_ms: int = 0


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What a trim call did: entries removed; state 'trimmed', 'locked' (another process trims the stream now) or
    'missing' (no stream); the orphan groups it saw (when trimmed); the declared groups it had not been told of."""

    removed: int
    state: str
    orphans: tuple[str, ...] = ()
    learned: frozenset[str] = frozenset()


async def trim_partition(redis: aioredis.Redis, trim: TrimPass) -> Trimmed:
    """Trim one stream by the safe min id and the policy (see redis/lua/trim.lua)."""
    script = redis.register_script(TRIM)
    others = trim.others - set(trim.own)
    learned: frozenset[str] = frozenset()
    while True:
        names = [*trim.own, *sorted(others)]
        keys = [trim.keys.stream, trim.keys.groups(), trim.keys.declared(), trim.keys.checkpoints(),
                trim.keys.trim_lock(), *(trim.keys.retried(g) for g in names)]
        args: list[str | int] = [trim.retention_ms, trim.max_length, TRIM_INSPECT_LIMIT, trim.owner, trim.lock_ms,
                                 ORPHAN_AFTER_MS, len(trim.own), *names]
        removed, _, state, *found = await script(keys=keys, args=args)
        names_found = [text(n) for n in found]
        if text(state) != "unknown":
            return Trimmed(int(removed), text(state), tuple(names_found), learned)
        learned = learned | set(names_found)  # declared since the caller last looked: pass their retry sets too
        others |= learned


async def trim_stream(redis: aioredis.Redis, keys: PartitionKeys, retention_ms: int, max_length: int,
                      groups: Iterable[str] = ()) -> int:
    """Trim one stream now (no lock); returns how many entries were removed."""
    return (await trim_partition(redis, TrimPass(keys, retention_ms, max_length, tuple(groups)))).removed


async def remove_idle_consumers(redis: aioredis.Redis, stream: str, group: str, me: str, idle_ms: int) -> list[str]:
    """Remove consumers of `group` idle for `idle_ms` that own no pending entries (check and delete are atomic)."""
    script = redis.register_script(DELETE_IDLE_CONSUMERS)
    removed = await script(keys=[stream], args=[group, me, idle_ms])
    return [r.decode() if isinstance(r, bytes) else str(r) for r in removed]


@dataclass(slots=True)
class Maintenance:
    """What maintenance remembers between passes: the other groups declared on each stream, and the orphans it
    already reported (each set is logged once, not every pass)."""

    known: dict[str, frozenset[str]] = field(default_factory=dict)
    reported: dict[str, tuple[str, ...]] = field(default_factory=dict)
    declared: bool = False


async def maintain_once(app: App, me: str, state: Maintenance | None = None) -> None:
    state = state if state is not None else Maintenance()
    if not state.declared:  # every group of the app, also those this process does not run (--group)
        await ensure_app_groups(app.redis, app.topology)
        state.declared = True
    settings = app.settings
    for route in app.topology.by_tag.values():
        own = tuple(route.all_groups())
        for keys in route.partitions:
            trim = TrimPass(keys, settings.retention_ms, settings.retention_max_length, own,
                            state.known.get(keys.stream, frozenset()), me, settings.trim_interval_ms)
            done = await trim_partition(app.redis, trim)
            state.known[keys.stream] = trim.others | done.learned
            if done.removed:
                log.info("trimmed %d fully processed entries from %s", done.removed, keys.stream)
            if done.state == "trimmed":
                _report_orphans(state, keys.stream, done.orphans)
            for group in route.groups:
                gone = await remove_idle_consumers(app.redis, keys.stream, group, me, settings.consumer_gc_idle_ms)
                if gone:
                    log.info("removed idle consumers %s from %s on %s", gone, group, keys.stream)


def _report_orphans(state: Maintenance, stream: str, orphans: tuple[str, ...]) -> None:
    if orphans and state.reported.get(stream) != orphans:
        log.warning("%s has consumer group(s) %s that no app declares (renamed or removed handler groups?); they "
                    "no longer hold back trimming or backpressure. List them with `streamproc groups list APP`, "
                    "delete them with `streamproc groups delete-orphans APP --yes`", stream, ", ".join(orphans))
    state.reported[stream] = orphans


async def maintain(app: App, me: str, stopping: asyncio.Event, on_fatal: Callable[[FatalRedisError], None]) -> None:
    """Trim and tidy every `trim_interval_ms` until stopped."""
    state = Maintenance()

    async def step() -> float:
        await maintain_once(app, me, state)
        return app.settings.trim_interval_ms / 1000

    async def nothing() -> None:  # a missing group is recreated by the group's own worker loops
        return None

    await repeat("maintenance", step, stopping, Recovery(nothing, on_fatal))
