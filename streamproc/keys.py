"""Redis key layout. Every key of one (type, partition) shares one Cluster hash tag, so no command crosses slots.

    {ns}:ev:{card.added:3}                     the stream
    {ns}:retry:{card.added:3}:{group}          sorted set: entry id -> when its next attempt is due (ms)
    {ns}:attempts:{card.added:3}:{group}       hash: entry id -> attempts started, for entries in retry
    {ns}:leases:{card.added:3}:{group}         hash: entry id -> consumer that holds a due retry's lease now
    {ns}:retried:{card.added:3}:{group}        sorted set: entry id -> its ms time, for entries in retry, so that
                                               trimming reads the oldest one in O(log n)
    {ns}:starts:{card.added:3}:{group}         hash: entry id -> starts of a reclaimed entry, recorded before each
                                               (a first read's start is not: reads pay nothing), for max_deliveries
    {ns}:dlq:{card.added:3}:{group}            the group's dead-letter stream for this partition
    {ns}:dedup:{card.added:3}:{event id}       marker of a producer-given event id (expires after the window)
    {ns}:groups:{card.added:3}                 hash: group -> start option ("new"/"all"), every group an app declared
                                               on the stream, so every publisher and worker creates all of them
    {ns}:declared:{card.added:3}               sorted set: group -> when a process last declared it (ms, Redis
                                               time); a group nobody declared for a week is an orphan
    {ns}:checkpoints:{card.added:3}            hash: group -> the id it is recreated at if it vanishes while the
                                               stream does not (refreshed by maintenance)
    {ns}:trimlock:{card.added:3}               the consumer trimming the stream now (expires after one interval)

Keys of no partition: {ns}:once:{group}:{event id}:{scope} (Context.once markers) and, at the ingest,
{ns}:idem:{caller}:{sha256 of an Idempotency-Key} (the body fingerprint the key was first used with).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError


def check_namespace(ns: str) -> str:
    if not ns or any(c in ns for c in "{}: \n*"):
        raise ConfigError(f"namespace {ns!r} must be non-empty and free of braces, colons, spaces and '*'")
    return ns


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one (event type, partition). The stream key is computed once: it is on every hot path."""

    ns: str
    tag: str
    partition: int
    hash_tag: str = field(init=False, repr=False, compare=False)
    stream: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash_tag", f"{{{self.tag}:{self.partition}}}")
        object.__setattr__(self, "stream", f"{self.ns}:ev:{self.hash_tag}")

    def retry(self, group: str) -> str:
        return f"{self.ns}:retry:{self.hash_tag}:{group}"

    def attempts(self, group: str) -> str:
        return f"{self.ns}:attempts:{self.hash_tag}:{group}"

    def leases(self, group: str) -> str:
        return f"{self.ns}:leases:{self.hash_tag}:{group}"

    def retried(self, group: str) -> str:
        return f"{self.ns}:retried:{self.hash_tag}:{group}"

    def starts(self, group: str) -> str:
        return f"{self.ns}:starts:{self.hash_tag}:{group}"

    def deadletter(self, group: str) -> str:
        return f"{self.ns}:dlq:{self.hash_tag}:{group}"

    def dedup(self, event_id: str) -> str:
        return f"{self.ns}:dedup:{self.hash_tag}:{event_id}"

    def groups(self) -> str:
        return f"{self.ns}:groups:{self.hash_tag}"

    def declared(self) -> str:
        return f"{self.ns}:declared:{self.hash_tag}"

    def checkpoints(self) -> str:
        return f"{self.ns}:checkpoints:{self.hash_tag}"

    def trim_lock(self) -> str:
        return f"{self.ns}:trimlock:{self.hash_tag}"

    @classmethod
    def of_stream(cls, stream: str) -> PartitionKeys:
        """The keys of the partition whose stream key is `stream` (namespaces and tags hold no colons or braces)."""
        ns, sep, rest = stream.partition(":ev:{")
        tag, colon, partition = rest.removesuffix("}").rpartition(":")
        if not (sep and colon and rest.endswith("}") and partition.isdigit()):
            raise ValueError(f"{stream!r} is not a streamproc stream key")
        return cls(ns, tag, int(partition))


def partition_keys(ns: str, tag: str, partitions: int) -> list[PartitionKeys]:
    return [PartitionKeys(ns, tag, p) for p in range(partitions)]


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of a key, honouring {hash tags} exactly as the server does."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % 16384
