"""Unit tests (no Redis): key layout and cluster slots, partitioning, event ids, and declaration errors."""

from __future__ import annotations

import time
from typing import ClassVar

import pytest

from streamproc import App, ConfigError, Context, Event, PartitionKeys, Settings, key_slot, new_event_id, partition_of


class Followed(Event, tag="user.followed"):
    partitions: ClassVar[int] = 4
    partition_key: ClassVar[str | None] = "follower_id"
    follower_id: str
    followee_id: str


class Liked(Event, tag="card.liked"):
    partitions: ClassVar[int] = 16
    partition_key: ClassVar[str | None] = "card_id"
    card_id: str


class Single(Event, tag="single"):
    x: int


async def noop(event: Event, ctx: Context) -> None:
    return None


def offline_app(name: str = "ns") -> App:
    return App(name, settings=Settings(redis_url="redis://127.0.0.1:1/0"))


# Cluster slots ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "slot"), [
    # From the Redis Cluster spec and `CLUSTER KEYSLOT` on a real redis-server 7.0.
    ("foo", 12182),
    ("123456789", 12739),
    ("{user1000}.following", 3443),
    ("{user1000}.followers", 3443),
    ("foo{}{bar}", 8363),  # an empty tag: the whole key is hashed
    ("foo{{bar}}zap", 4015),  # the tag is "{bar"
    ("foo{bar}{zap}", 5061),  # only the first tag counts
    ("bar", 5061),
    ("ns:ev:{card.added:0}", 15368),
    ("ns:ev:{card.added:1}", 11305),
    ("ns:ev:{card.added:2}", 7242),
    ("ns:ev:{card.added:3}", 3179),
])
def test_key_slot_matches_redis(key: str, slot: int) -> None:
    assert key_slot(key) == slot
    assert key_slot(key.encode()) == slot


def test_keys_of_a_partition_share_one_slot() -> None:
    keys = PartitionKeys("ns", "card.added", 3)
    everything = [keys.stream, keys.retry("feeds"), keys.attempts("feeds"), keys.deadletter("feeds"),
                  keys.retry("notifications"), keys.deadletter("notifications"), keys.dedup("0" * 32),
                  keys.leases("feeds"), keys.retried("feeds"), keys.groups(), keys.declared(), keys.checkpoints(),
                  keys.trim_lock()]
    assert len(set(everything)) == len(everything)
    assert {key_slot(k) for k in everything} == {key_slot("{card.added:3}")}
    assert all(k.startswith("ns:") for k in everything)


def test_partition_keys_of_a_stream_key() -> None:
    keys = PartitionKeys("social", "card.added", 12)
    assert PartitionKeys.of_stream(keys.stream) == keys
    assert PartitionKeys.of_stream(keys.stream).groups() == "social:groups:{card.added:12}"
    for bad in ("social:ev:card.added:1", "social:dlq:{card.added:1}:g", "social:ev:{card.added}", "plain"):
        with pytest.raises(ValueError, match="not a streamproc stream key"):
            PartitionKeys.of_stream(bad)


def test_partitions_of_a_type_spread_over_slots() -> None:
    app = offline_app()
    app.register(Liked)
    streams = [k.stream for k in app.topology.route(Liked).partitions]
    assert len(streams) == 16
    assert len({key_slot(s) for s in streams}) == 16


# Partitioning -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [("u1", 2), ("u2", 0), ("alice", 3), ("bob", 0)])
def test_partition_of_is_stable(key: str, expected: int) -> None:
    # Hard-coded: crc32 of the key's text, so every process (any PYTHONHASHSEED, any host) agrees.
    assert partition_of(Followed(follower_id=key, followee_id="x")) == expected


def test_partition_of_uses_the_key_field_or_the_override() -> None:
    assert partition_of(Liked(card_id="card-42")) == 6
    assert partition_of(Followed(follower_id="u1", followee_id="bob"), override="alice") == 3
    assert partition_of(Single(x=5)) == 0
    same_follower = {partition_of(Followed(follower_id="u7", followee_id=f"f{i}")) for i in range(50)}
    assert len(same_follower) == 1, "order is kept per follower: one partition"


# Event ids --------------------------------------------------------------------------------------------------------


def test_event_ids_are_hex_unique_and_time_sortable() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(10_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for eid in ids[:100]:
        assert len(eid) == 32
        assert int(eid, 16) >= 0 and eid == eid.lower()
        assert eid[12] == "7", "UUIDv7 version nibble"
        assert eid[16] in "89ab", "RFC 4122 variant"
        assert before <= int(eid[:12], 16) <= after, "the first 48 bits are the time in ms"
    earlier = new_event_id()
    time.sleep(0.002)
    assert new_event_id() > earlier
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


# Declaration errors -----------------------------------------------------------------------------------------------


class ColonTag(Event, tag="card:added"):
    a: int


class BraceTag(Event, tag="{card}"):
    a: int


class SpaceTag(Event, tag="card added"):
    a: int


class IntTag(Event, tag=5):  # type: ignore[call-arg]
    a: int


class NoPartitions(Event, tag="no.partitions"):
    partitions: ClassVar[int] = 0
    a: int


class NoPartitionKey(Event, tag="no.partition.key"):
    partitions: ClassVar[int] = 4
    a: int


class WrongPartitionKey(Event, tag="wrong.partition.key"):
    partitions: ClassVar[int] = 4
    partition_key: ClassVar[str | None] = "missing"
    a: int


class Twin(Event, tag="user.followed"):
    a: int


@pytest.mark.parametrize("event_type", [ColonTag, BraceTag, SpaceTag, IntTag, NoPartitions, NoPartitionKey,
                                        WrongPartitionKey])
def test_bad_event_declarations_raise_config_error(event_type: type[Event]) -> None:
    with pytest.raises(ConfigError):
        offline_app().register(event_type)
    with pytest.raises(ConfigError):
        offline_app().handler(event_type, group="g")(noop)


def test_bad_app_and_handler_declarations_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        offline_app().register(int)  # type: ignore[arg-type]
    app = offline_app()
    app.register(Followed)
    with pytest.raises(ConfigError, match=r"user\.followed"):
        app.register(Twin)
    for bad_ns in ("", "a:b", "a{b}", "a b", "a*"):
        with pytest.raises(ConfigError):
            offline_app(bad_ns)
    with pytest.raises(ConfigError):
        app.handler(Followed, group="bad:group")
    with pytest.raises(ConfigError):
        app.handler(Followed, group="g", concurrency=0)
    with pytest.raises(ConfigError):
        app.handler(Followed, group="g", start="middle")  # type: ignore[arg-type]
    app.handler(Followed, group="g")(noop)
    with pytest.raises(ConfigError, match="already has a handler"):
        app.handler(Followed, group="g")(noop)
    with pytest.raises(ConfigError):
        Settings(lease_ms=-1)
