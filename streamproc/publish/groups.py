"""Creating consumer groups where they must start, so that no event is lost to start-up order or to a lost group.

Each app records the groups it declares on a stream in a registry beside it (`PartitionKeys.groups()`, same hash
tag), so every publisher and worker creates every declared group, also those of other apps, before appending.
Maintenance records each group's position (`checkpoints()`), so a group that vanished while its stream did not is
recreated where it was, not at the stream's start. See redis/lua/ensure_group.lua.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from ..keys import PartitionKeys
from ..redis.resp import text
from ..redis.scripts import ENSURE_GROUP
from ..topology import ORPHAN_AFTER_MS, StartAt, Topology

log = logging.getLogger(__name__)

# At most this many entries are counted for the log line of a group recreated from its checkpoint.
COUNT_LIMIT = 10_000
# An ensure call refreshes this app's declarations that are older than this (workers refresh theirs at every
# maintenance pass; publishers ensure again once a day), so a running app's groups never become orphans.
REFRESH_AFTER_MS = 86_400_000

Mode = Literal["declare", "recover"]


@dataclass(frozen=True, slots=True)
class Created:
    """A group one call created: how ('fresh', 'checkpoint', 'lost', 'new', 'all'; see ensure_group.lua), at which
    id, and how many entries lay after that id then (counted up to COUNT_LIMIT)."""

    keys: PartitionKeys
    group: str
    how: str
    at: str
    after: int


@dataclass(frozen=True, slots=True)
class Wanted:
    """The groups to ensure on one stream: this app's declarations, and groups learned from the registry earlier
    (recreated only if the stream itself is gone, since the registry went with it)."""

    keys: PartitionKeys
    groups: Mapping[str, StartAt]
    remembered: Mapping[str, StartAt] = field(default_factory=dict)


async def ensure_declared(redis: aioredis.Redis, wanted: Sequence[Wanted], mode: Mode = "declare",
                          ) -> dict[PartitionKeys, dict[str, StartAt]]:
    """Register and create the declared groups of each stream in one pipelined round trip; returns, per stream, every
    group declared on it (this app's, and the registry's that are not orphans) with its start option."""
    if not wanted:
        return {}
    script = redis.register_script(ENSURE_GROUP)
    async with redis.pipeline(transaction=False) as pipe:
        for w in wanted:
            keys, args = ensure_call(w, mode)
            await script(keys=keys, args=args, client=pipe)
        replies = await pipe.execute()
    return read_ensured(wanted, replies, mode)


def ensure_call(w: Wanted, mode: Mode = "declare") -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of redis/lua/ensure_group.lua for one stream (shared by the async and the sync publisher)."""
    args: list[str | int] = [ORPHAN_AFTER_MS, REFRESH_AFTER_MS, COUNT_LIMIT, mode, len(w.groups), *_pairs(w.groups),
                             *_pairs(w.remembered)]
    return [w.keys.stream, w.keys.groups(), w.keys.declared(), w.keys.checkpoints()], args


def read_ensured(wanted: Sequence[Wanted], replies: Sequence[Any], mode: Mode = "declare",
                 ) -> dict[PartitionKeys, dict[str, StartAt]]:
    """Log the groups ensure_group.lua created and return, per stream, every group declared on it."""
    out: dict[PartitionKeys, dict[str, StartAt]] = {}
    for w, (created, declared) in zip(wanted, replies, strict=True):
        for i in range(0, len(created), 4):
            group, how, at, after = (text(x) for x in created[i : i + 4])
            _log_created(Created(w.keys, group, how, at, int(after)), mode)
        found = out[w.keys] = {text(declared[i]): cast(StartAt, text(declared[i + 1]))
                               for i in range(0, len(declared), 2)}
        for group, start in w.groups.items():
            if found.get(group, start) != start:
                log.warning("group %s on %s was declared with start=%s before; that stays (a start option only "
                            "matters when a group is created)", group, w.keys.stream, found[group])
    return out


async def ensure_app_groups(redis: aioredis.Redis, topology: Topology) -> None:
    """Declare and create every group an app declares on every stream of its types (handler groups and those
    `register(..., groups=...)` names), also those this process does not run: what workers and ingest do at start."""
    await ensure_declared(redis, [Wanted(keys, route.all_groups()) for route in topology.by_tag.values()
                                  if route.all_groups() for keys in route.partitions])


async def ensure_groups(redis: aioredis.Redis, wanted: list[tuple[str, str, StartAt]]) -> None:
    """Declare and create each (stream, group), and every other group declared on those streams. A stream that does
    not exist yet is created with its groups at its start; a group new to a stream with history starts where its
    `start` says (only new events, or everything retained)."""
    by_stream: dict[str, dict[str, StartAt]] = {}
    for stream, group, start in wanted:
        by_stream.setdefault(stream, {})[group] = start
    await ensure_declared(redis, [Wanted(PartitionKeys.of_stream(s), g) for s, g in by_stream.items()])


async def recreate_group(redis: aioredis.Redis, stream: str, group: str, start: StartAt = "new") -> None:
    """Recreate a group that vanished (NOGROUP): at its checkpoint if its stream survived (an XGROUP DESTROY, a
    replica promoted without it, a restore), at the stream's start if the stream went too (everything in it now was
    appended after the loss). Logged as an error either way."""
    await ensure_declared(redis, [Wanted(PartitionKeys.of_stream(stream), {group: start})], mode="recover")


def _log_created(c: Created, mode: Mode) -> None:
    where = f"consumer group {c.group} on {c.keys.stream}"
    if c.how == "checkpoint":
        log.error("%s was gone while its stream was not (XGROUP DESTROY, a failover, a restore?); recreated at its "
                  "checkpoint %s: up to %s%d entries after it may run a second time in this group", where, c.at,
                  "at least " if c.after >= COUNT_LIMIT else "", c.after)
    elif mode == "recover":
        log.error("%s was gone (did Redis lose its data?); recreated at the stream's start (%s): %s", where, c.how,
                  "the stream was gone too" if c.how == "fresh" else "no checkpoint was left either")
    else:
        log.info("created %s (start=%s, at %s)", where, c.how, c.at)


def _pairs(groups: Mapping[str, StartAt]) -> list[str]:
    return [x for kv in groups.items() for x in kv]
