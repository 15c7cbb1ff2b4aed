"""streamproc: an asyncio event stream processor on Redis Streams."""


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
from .version import __version__
from .worker.deadletter import DeadLettered, read_deadletters
from .worker.process import run_worker

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
