"""The one table of Redis failure kinds. Every loop and settle call asks `classify`; none lists exception types.

    OUTAGE     wait it out with backoff, the rest of the worker carries on: the connection dropped or went dark
               (a deadline passed), the server is loading, busy with a script, demoted (READONLY/UNBLOCKED),
               a Cluster is resharding or down, a save failed (MISCONF), or a script cache was flushed (NOSCRIPT:
               the script is sent again on the next call)
    MEMORY     an outage too, with its own log line and metric: Redis is at maxmemory (noeviction) and refuses
               writes that need memory. Acks, claims and trimming still go through; nothing new is written
    NOGROUP    the consumer group (or its stream) vanished: recreate it, then carry on
    FATAL      retrying cannot help (WRONGTYPE, NOPERM, a bad script, an unknown command): stop gracefully and say
               what went wrong
"""

from __future__ import annotations

import enum

from redis import exceptions as rx

from ..errors import StreamprocError


class Failure(enum.Enum):
    OUTAGE = "outage"
    MEMORY = "memory"
    NOGROUP = "nogroup"
    FATAL = "fatal"


# Error codes (the first word of an error reply) that say "not now" rather than "never".
TRANSIENT_CODES = frozenset({
    "READONLY", "UNBLOCKED", "MASTERDOWN", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MISCONF", "NOSCRIPT",
    "MOVED", "ASK", "NOREPLICAS", "NOTBUSY",
})
# redis-py turns some codes into classes and strips the code from the message; these are the transient ones.
_TRANSIENT_CLASSES = (
    rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.NoScriptError, rx.TryAgainError, rx.ClusterDownError,
    rx.AskError, rx.BusyLoadingError, OSError, TimeoutError,
)


def error_code(exc: BaseException) -> str:
    """The Redis error code of an error reply ("WRONGTYPE", "OOM", ...), or "" for errors that are not replies."""
    code = getattr(exc, "status_code", None)  # redis-py >= 6 keeps the code it stripped from the message
    if isinstance(code, str) and code:
        return code
    if isinstance(exc, rx.OutOfMemoryError):
        return "OOM"
    if isinstance(exc, rx.ResponseError):
        first = str(exc).split(" ", 1)[0]
        return first if first.isupper() else "ERR"
    return ""


def is_nogroup(exc: BaseException) -> bool:
    # A blocked XREADGROUP whose stream was deleted (FLUSHALL, DEL) fails with "UNBLOCKED the stream key no longer
    # exists", not NOGROUP; the group went with the stream, so it is recovered the same way.
    text = str(exc)
    return isinstance(exc, rx.ResponseError) and ("NOGROUP" in text or "stream key no longer exists" in text)


def classify(exc: BaseException) -> Failure:
    """What to do about an exception raised by a Redis call."""
    if is_nogroup(exc):
        return Failure.NOGROUP
    if isinstance(exc, rx.OutOfMemoryError) or error_code(exc) == "OOM":
        return Failure.MEMORY
    if isinstance(exc, _TRANSIENT_CLASSES) or error_code(exc) in TRANSIENT_CODES:
        return Failure.OUTAGE
    return Failure.FATAL


def is_transient(exc: BaseException) -> bool:
    """Worth waiting out (an outage or a full Redis), as opposed to a vanished group or a fatal error."""
    return classify(exc) in (Failure.OUTAGE, Failure.MEMORY)


class FatalRedisError(StreamprocError):
    """Redis answered something retrying cannot fix; the worker stops gracefully with this message."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: Redis answered {type(cause).__name__}: {cause} (retrying cannot fix this; "
                         "stopping gracefully)")
        self.where = where
        self.cause = cause
