"""The Lua scripts, one `.lua` file each in `lua/`: each settles or moves an entry in one atomic call on keys of
one hash slot. Every file says at its top what its KEYS and ARGV are.

Each script starts with a shebang (Redis 7 script flags). Those that only delete or refresh may run at maxmemory
(`flags=allow-oom`); those that add data have no flag, so at maxmemory Redis refuses them whole, before any write.

A line `-- @include NAME` is replaced by `lua/NAME.lua` (shared helper functions), so that a script is sent to
Redis whole while its helpers are written once.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


@cache
def lua(name: str) -> str:
    """The text of `lua/<name>.lua`, with its includes expanded (read once per process)."""
    text = files(__package__).joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: lua(m.group(1)), text)


PUBLISH_ONCE = lua("publish_once")
SCHEDULE_RETRY = lua("schedule_retry")
DEAD_LETTER = lua("dead_letter")
RETRY_DONE = lua("retry_done")
TAKE_RETRIES = lua("take_retries")
HEARTBEAT = lua("heartbeat")
REFRESH_LEASES = lua("refresh_leases")
HAND_BACK = lua("hand_back")
HAND_BACK_RETRIES = lua("hand_back_retries")
DELETE_IDLE_CONSUMERS = lua("delete_idle_consumers")
TRIM = lua("trim")
ENSURE_GROUP = lua("ensure_group")
BACKLOG = lua("backlog")
DELETE_GROUP = lua("delete_group")
SCHEDULES_POLL = lua("schedules_poll")
SCHEDULE_FIRED = lua("schedule_fired")
SCHEDULE_PAUSE = lua("schedule_pause")
LANE_LAGS = lua("lane_lags")
SCHEDULE_DELAYED = lua("schedule_delayed")
MOVE_DELAYED = lua("move_delayed")
CANCEL_DELAYED = lua("cancel_delayed")
DELAYED_DUE = lua("delayed_due")
DELAYED_TOUCH = lua("delayed_touch")
