"""What a command's failure looks like: one line on stderr and an exit status; the traceback only with --debug."""

from __future__ import annotations

import contextlib
import errno
import sys
import traceback
from collections.abc import Callable, Iterator

from ..errors import ConfigError, StreamprocError
from .options import redacted

USAGE = 2  # as argparse: the command was given something it cannot use
FAILED = 1  # the command was fine; the world was not (Redis unreachable, a port taken)
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class UsageError(StreamprocError):
    """Something on the command line cannot be used (found after parsing, e.g. a group the app lacks)."""


class CommandFailed(StreamprocError):
    """A runtime failure the user can act on; its message is the whole story."""


@contextlib.contextmanager
def reaching_redis(url: str) -> Iterator[None]:
    """Turn a Redis that cannot be reached (or that refuses a command) into one line naming it, without its
    password."""
    from redis import exceptions as rx  # here: commands that never reach Redis (token-hash) do not import it

    try:
        yield
    except rx.ResponseError as exc:
        raise CommandFailed(f"Redis at {redacted(url)} refused a command: {exc}") from exc
    except (rx.RedisError, OSError, TimeoutError) as exc:
        raise CommandFailed(f"cannot reach Redis at {redacted(url)}: {_said(exc)}") from exc


@contextlib.contextmanager
def listening(host: str, port: int) -> Iterator[None]:
    """A port taken (or not ours to take) is a runtime failure, said in one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise CommandFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a bare TimeoutError says nothing


def run(command: Callable[[], int], debug: bool) -> int:
    """Run a command; its failures become one line and an exit status (with the traceback before it if debug)."""
    try:
        return command()
    except KeyboardInterrupt:
        return _report(None, INTERRUPTED, debug)
    except (ConfigError, UsageError) as exc:
        return _report(exc, USAGE, debug)
    except StreamprocError as exc:
        return _report(exc, FAILED, debug)
    except Exception as exc:
        if not isinstance(exc, (OSError, *_redis_errors())):
            raise
        # Not translated above: still one line, but with its kind.
        return _report(f"{type(exc).__name__}: {_said(exc)}", FAILED, debug)


def _redis_errors() -> tuple[type[Exception], ...]:
    """redis-py's base error if redis-py was imported (if it was not, nothing raised one), without importing it."""
    rx = sys.modules.get("redis.exceptions")
    return () if rx is None else (rx.RedisError,)


def _report(problem: BaseException | str | None, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    if problem is not None:
        print(f"streamproc: error: {problem}", file=sys.stderr)
    return status
