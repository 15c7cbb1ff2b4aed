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
    {ns}:delayed:{card.added:3}                sorted set: event id -> when its delayed event is due (ms, Redis time)
    {ns}:delayedentries:{card.added:3}         hash: event id -> its entry packed (publish/delayed.py: the stream it
                                               goes to, then its fields), appended to that stream when due
    {ns}:delayeddead:{card.added:3}            stream of delayed entries the mover could not append (unreadable,
                                               naming another slot's stream, or the XADD failed: WRONGTYPE...),
                                               each with event_id, due (ms), reason and the packed entry

A type with priority lanes (`Event.priorities` > 1) has one stream per lane of each partition, with the
partition's hash tag (so every lane of a partition is in one slot, on Cluster too), and every key above except
the dedup marker belongs to one lane: the lane's own retry set, attempts, leases, dead-letter stream, group
registry and checkpoints, as for any stream. A type without lanes keeps the keys above exactly.

    {ns}:ev:{notify.reset:3}:lane0             the stream of lane 0 (most urgent) of partition 3
    {ns}:retry:{notify.reset:3}:lane0:{group}  its retry set; likewise attempts, leases, retried, starts, dlq
    {ns}:groups:{notify.reset:3}:lane0         its group registry; likewise declared, checkpoints, trimlock
    {ns}:dedup:{notify.reset:3}:{event id}     one marker per partition: an event id is published once, whatever
                                               its lane

Keys of no partition: {ns}:once:{group}:{event id}:{scope} (Context.once markers) and, at the ingest,
{ns}:idem:{caller}:{sha256 of an Idempotency-Key} (the body fingerprint the key was first used with).
Cron schedules (schedule/) keep one hash for the whole namespace, with a hash tag of its own; each schedule's
fields are prefixed with its name (schedule names hold no colons):
    {ns}:schedules:{schedules:{ns}}  hash: {name}:fired_tick (ms), {name}:fired_event_id (the tick's first event
                                     id), {name}:fired_events (how many), {name}:fired_at (ms, Redis time),
                                     {name}:paused_at (ms, while paused), {name}:resumed_at (ms, the last resume)
A tick's events are deduplicated by their stream's {ns}:dedup:... markers, as any producer-given event id.
A delayed event waits per partition, whatever its lane (the entry names its lane's stream). The namespace's index
of delayed events, a hint the movers poll (worker/promote.py), has a hash tag of its own, {ns}:
    {ns}:delayedindex:{ns}     sorted set: partition ("card.added:3") -> at most its earliest due (ms)
    {ns}:delayedversions:{ns}  hash: partition -> how often publishers touched its index entry (compare-and-set)
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
    lane: int | None = None  # the priority lane (0: most urgent), None for a type without lanes
    hash_tag: str = field(init=False, repr=False, compare=False)
    # What names this stream in its keys: the hash tag, plus ":lane<n>" for a lane (see the module docstring).
    scope: str = field(init=False, repr=False, compare=False)
    stream: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash_tag", f"{{{self.tag}:{self.partition}}}")
        scope = self.hash_tag if self.lane is None else f"{self.hash_tag}:lane{self.lane}"
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "stream", f"{self.ns}:ev:{scope}")

    def retry(self, group: str) -> str:
        return f"{self.ns}:retry:{self.scope}:{group}"

    def attempts(self, group: str) -> str:
        return f"{self.ns}:attempts:{self.scope}:{group}"

    def leases(self, group: str) -> str:
        return f"{self.ns}:leases:{self.scope}:{group}"

    def retried(self, group: str) -> str:
        return f"{self.ns}:retried:{self.scope}:{group}"

    def starts(self, group: str) -> str:
        return f"{self.ns}:starts:{self.scope}:{group}"

    def deadletter(self, group: str) -> str:
        return f"{self.ns}:dlq:{self.scope}:{group}"

    def dedup(self, event_id: str) -> str:
        return f"{self.ns}:dedup:{self.hash_tag}:{event_id}"

    def groups(self) -> str:
        return f"{self.ns}:groups:{self.scope}"

    def declared(self) -> str:
        return f"{self.ns}:declared:{self.scope}"

    def checkpoints(self) -> str:
        return f"{self.ns}:checkpoints:{self.scope}"

    def trim_lock(self) -> str:
        return f"{self.ns}:trimlock:{self.scope}"

    def delayed(self) -> str:
        return f"{self.ns}:delayed:{self.hash_tag}"

    def delayed_entries(self) -> str:
        return f"{self.ns}:delayedentries:{self.hash_tag}"

    def delayed_dead(self) -> str:
        return f"{self.ns}:delayeddead:{self.hash_tag}"

    @property
    def member(self) -> str:
        """The partition's name in the namespace's delayed index: its hash tag's content, "card.added:3"."""
        return f"{self.tag}:{self.partition}"

    @classmethod
    def of_stream(cls, stream: str) -> PartitionKeys:
        """The keys of the stream `stream` (a partition's, or a lane's: namespaces and tags hold no colons or
        braces)."""
        ns, sep, rest = stream.partition(":ev:{")
        inside, brace, after = rest.partition("}")
        tag, colon, partition = inside.rpartition(":")
        lane = after.removeprefix(":lane")
        if not (sep and brace and colon and partition.isdigit() and (not after or (after != lane and lane.isdigit()))):
            raise ValueError(f"{stream!r} is not a streamproc stream key")
        return cls(ns, tag, int(partition), int(lane) if after else None)


def delayed_index(ns: str) -> tuple[str, str]:
    """The namespace's delayed-event index and its versions hash (one hash tag, so one script holds both)."""
    return f"{ns}:delayedindex:{{{ns}}}", f"{ns}:delayedversions:{{{ns}}}"


def schedules_key(ns: str) -> str:
    """The namespace's schedules hash: what each schedule fired last, and whether it is paused."""
    return f"{ns}:schedules:{{schedules:{ns}}}"


def partition_keys(ns: str, tag: str, partitions: int, lanes: int = 1) -> list[PartitionKeys]:
    """The keys of every stream of a type: one per partition, or with lanes one per lane of each partition,
    partition by partition, lane 0 first (so that `[p * lanes + lane]` finds one)."""
    if lanes == 1:
        return [PartitionKeys(ns, tag, p) for p in range(partitions)]
    return [PartitionKeys(ns, tag, p, lane) for p in range(partitions) for lane in range(lanes)]


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
