"""What Redis keeps of schedules: per schedule, the last tick fired (and its event id) and whether it is paused, in
one hash for the namespace (keys.py: schedules_key). Nothing is written at start: a schedule lives in code, and a
schedule never fired has no record at all."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from ..keys import schedules_key
from ..redis.resp import text
from ..redis.scripts import SCHEDULE_FIRED, SCHEDULE_PAUSE, SCHEDULES_POLL


@dataclass(slots=True)
class Record:
    """One schedule's record: times in ms since the epoch (Redis's clock)."""

    fired_tick: int | None = None
    fired_event_id: str = ""
    fired_events: int = 0
    fired_at: int | None = None
    paused_at: int | None = None
    resumed_at: int | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def baseline(self, floor: int) -> int:
        """Ticks after this are due: after the last fired one and after the last resume (a pause's ticks are not
        caught up), and never before `floor` (a schedule never fired has missed nothing)."""
        marks = [m for m in (self.fired_tick, self.resumed_at) if m is not None]
        return max(marks) if self.fired_tick is not None else max([floor, *marks])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Redis's time and every schedule's record, read in one call."""

    now_ms: int
    records: dict[str, Record] = field(default_factory=dict)

    def of(self, name: str) -> Record:
        return self.records.get(name) or Record()


_NUMBERS = ("fired_tick", "fired_events", "fired_at", "paused_at", "resumed_at")


def _records(flat: list[object]) -> dict[str, Record]:
    records: dict[str, Record] = {}
    for i in range(0, len(flat), 2):
        name, _, attribute = text(flat[i]).rpartition(":")
        if attribute not in Record.__dataclass_fields__:
            continue  # written by a newer release: ignored, not fatal
        value = text(flat[i + 1])
        setattr(records.setdefault(name, Record()), attribute, int(value) if attribute in _NUMBERS else value)
    return records


class ScheduleState:
    """The namespace's schedules hash, through its scripts (redis/lua/schedule*.lua)."""

    def __init__(self, redis: aioredis.Redis, ns: str) -> None:
        self.key = schedules_key(ns)
        self._redis = redis
        self._poll = redis.register_script(SCHEDULES_POLL)
        self._fired = redis.register_script(SCHEDULE_FIRED)
        self._pause = redis.register_script(SCHEDULE_PAUSE)

    async def poll(self) -> Snapshot:
        """One command: Redis's time and all records."""
        seconds, micros, *flat = await self._poll(keys=[self.key])
        return Snapshot(int(seconds) * 1000 + int(micros) // 1000, _records(flat))

    async def fired(self, name: str, tick: int, event_id: str, events: int) -> bool:
        """Record a fired tick (only ever forward); False if the same or a later tick was recorded already."""
        return bool(await self._fired(keys=[self.key], args=[name, tick, event_id, events]))

    async def is_paused(self, name: str) -> bool:
        """One schedule's pause state alone (read before each tick of a catch-up)."""
        return bool(await self._redis.hexists(self.key, f"{name}:paused_at"))

    async def set_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; False if it was so already."""
        return bool(await self._pause(keys=[self.key], args=[name, "pause" if paused else "resume"]))
