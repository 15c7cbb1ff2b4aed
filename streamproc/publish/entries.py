"""What an append is made of, built the same way for the async Publisher and the SyncPublisher: the entry of an event
(its route, partition, event id and fields), the packed XADD, the dedup script's call, the backlog script's call
and reading their replies. Pure functions, no I/O: each publisher sends them on its own kind of client."""

from __future__ import annotations

import time
from typing import cast

from redis.exceptions import RedisError

from ..codec import encode_event, entry_fields
from ..errors import PublishError
from ..event import Event, check_event_id, lane_of, new_event_id, partition_of
from ..keys import PartitionKeys
from ..redis.resp import EXEC, MULTI, pack_fields, text, xadd_prefix
from ..topology import ORPHAN_AFTER_MS, StartAt, Topology, TypeRoute

Fields = dict[bytes, bytes | str | int]
# A publisher's packed `XADD <stream> [NOMKSTREAM] *` prefixes, by (stream, field count, nomkstream).
Prefixes = dict[tuple[str, int, bool], bytes]
# When Redis does not know a group's lag, the backlog check counts its unread entries up to this many (beyond, it
# takes an upper bound from the group's read counter): the cost of one check stays bounded whatever the limit.
BACKLOG_COUNT_MAX = 10_000


def route_entry(topology: Topology, event: Event, event_id: str | None, partition_key: str | None,
                priority: int | None = None) -> tuple[TypeRoute, PartitionKeys, str, Fields]:
    """The route, stream (its partition's, or its lane's), event id (checked, or a new one) and entry fields of
    one event to publish."""
    route = topology.route(type(event))
    partition = partition_of(event, partition_key)
    if route.lanes == 1 and priority is None:  # no lanes: today's path, with no call more
        keys = route.partitions[partition]
    else:
        keys = route.keys_for(partition, lane_of(event, priority))
    event_id = check_event_id(event_id) if event_id is not None else new_event_id()
    return route, keys, event_id, entry_fields(event_id, route.tag, time.time_ns() // 1_000_000, encode_event(event))


def packed_xadd(prefixes: Prefixes, stream: str, fields: Fields, nomkstream: bool) -> bytes:
    """One XADD packed by hand (redis/resp.py); its constant prefix is packed once per stream and field count."""
    key = (stream, len(fields), nomkstream)
    prefix = prefixes.get(key)
    if prefix is None:
        prefix = prefixes[key] = xadd_prefix(*key)
    return prefix + pack_fields(fields)


def in_transaction(commands: list[bytes]) -> list[bytes]:
    return [MULTI, *commands, EXEC]


def exec_replies(replies: list[object]) -> list[object]:
    """The replies of the commands inside MULTI/EXEC (`in_transaction`), from the replies of all of them."""
    inner = replies[-1]
    if not isinstance(inner, list):  # nil: the transaction was aborted
        raise PublishError("Redis aborted the transaction; nothing was appended")
    return inner


def publish_once_call(keys: PartitionKeys, event_id: str, fields: Fields, window_ms: int, nomkstream: bool,
                      ) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and ARGV of redis/lua/publish_once.lua: append unless the event id was appended within the window."""
    return ([keys.stream, keys.dedup(event_id)],
            [window_ms, int(nomkstream), *(x for kv in fields.items() for x in kv)])


def backlog_call(keys: PartitionKeys, groups: list[str], max_backlog: int) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of redis/lua/backlog.lua for one stream and the groups (sorted) the publisher knows on it."""
    names = [keys.stream, keys.groups(), keys.declared(), *(keys.retry(g) for g in groups)]
    return names, [ORPHAN_AFTER_MS, max_backlog, BACKLOG_COUNT_MAX, *groups]


def learned_groups(learned: list[object]) -> dict[str, StartAt]:
    """The groups backlog.lua found declared by another app: {group: start}, from its flat reply."""
    return {text(learned[i]): cast(StartAt, text(learned[i + 1])) for i in range(0, len(learned), 2)}


def not_confirmed(exc: RedisError) -> PublishError:
    """The error a publish raises when Redis failed it: nothing is confirmed, the caller publishes again."""
    return PublishError(f"Redis did not accept the events ({type(exc).__name__}: {exc}); nothing "
                        "is confirmed appended, publish again with the same event ids")
