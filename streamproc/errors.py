"""One error base for everything streamproc raises; retriability is data, not a guess."""

from __future__ import annotations


class StreamprocError(Exception):
    """Base of every error streamproc raises on purpose."""

    retriable: bool = False


class ConfigError(StreamprocError):
    """The app, a handler or a setting is declared wrongly (raised at start-up, not per event)."""


class UnsupportedServer(ConfigError):
    """The Redis server cannot be used as it is: too old, or configured to evict keys (redis/server.py). Raised at
    the start of workers and the ingest; only changing the server (or the settings) helps."""

    retriable = False


class InvalidEvent(StreamprocError):
    """An event (or its id) that cannot be published as given; fix the input, retrying will not help."""


class PublishError(StreamprocError):
    """Redis did not accept the event; nothing was appended. Safe to retry with the same event id."""

    retriable = True


class BacklogFull(PublishError):
    """The stream's unconsumed backlog is over its limit; publish again after consumers catch up. A batch larger
    than the limit itself can never fit: that one is not retriable (publish it in smaller batches)."""

    def __init__(self, stream: str, backlog: int, limit: int, incoming: int = 1) -> None:
        if incoming > limit:
            message = (f"a batch of {incoming} events for {stream} is larger than its backlog limit of {limit}; "
                       "publish it in smaller batches")
        else:
            message = f"backlog of {stream} is {backlog} entries; {incoming} more would pass the limit of {limit}"
        super().__init__(message)
        self.retriable = incoming <= limit
        self.stream = stream
        self.backlog = backlog
        self.limit = limit
        self.incoming = incoming


class DecodeError(StreamprocError):
    """A stream entry cannot be turned back into an event (garbage bytes, unknown type, schema mismatch)."""


class Retry(Exception):
    """Raised by a handler to ask for another attempt after `delay` seconds (counts as an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class DeadLetter(Exception):
    """Raised by a handler to give up on an event at once: it goes to the group's dead-letter stream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
