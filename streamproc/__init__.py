"""streamproc: an asyncio event stream processor on Redis Streams."""

# The names below are imported when first used (PEP 562), so that `import streamproc.cli` (the command: --version,
# --help, token-hash) and the pytest plugin's load do not pay for redis-py, aiohttp and the rest up front.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .app import App, Handler
    from .backoff import Backoff
    from .context import Context
    from .errors import (
        BacklogFull,
        ConfigError,
        DeadLetter,
        DecodeError,
        InvalidEvent,
        PublishError,
        Retry,
        StreamprocError,
    )
    from .event import Event, new_event_id, partition_of
    from .keys import PartitionKeys, key_slot
    from .publish.publisher import Outgoing, Published
    from .publish.sync import SyncPublisher
    from .settings import Settings
    from .worker.deadletter import DeadLettered, read_deadletters
    from .worker.process import run_worker


_WHERE = {
    "App": "app", "Handler": "app", "Backoff": "backoff", "Context": "context",
    **dict.fromkeys(("BacklogFull", "ConfigError", "DeadLetter", "DecodeError", "InvalidEvent", "PublishError",
                     "Retry", "StreamprocError"), "errors"),
    "Event": "event", "new_event_id": "event", "partition_of": "event", "PartitionKeys": "keys", "key_slot": "keys",
    "Outgoing": "publish.publisher", "Published": "publish.publisher", "SyncPublisher": "publish.sync",
    "Settings": "settings", "DeadLettered": "worker.deadletter", "read_deadletters": "worker.deadletter",
    "run_worker": "worker.process",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streamproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "App",
    "BacklogFull",
    "Backoff",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DeadLettered",
    "DecodeError",
    "Event",
    "Handler",
    "InvalidEvent",
    "Outgoing",
    "PartitionKeys",
    "PublishError",
    "Published",
    "Retry",
    "Settings",
    "StreamprocError",
    "SyncPublisher",
    "__version__",
    "key_slot",
    "new_event_id",
    "partition_of",
    "read_deadletters",
    "run_worker",
]
