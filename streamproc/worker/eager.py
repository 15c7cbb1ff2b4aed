"""Starting a handler without a task (handlers registered with `eager=True`): one that finishes without waiting
never costs one.

`start(coro)` runs a coroutine up to its first suspension, in the caller's task. If it finished, that's all. If it
suspended, `Resumed` continues it inside a task of its own: the task receives the future the coroutine is waiting
on, exactly as if the task had run the coroutine from the start (what Python 3.12's eager task factory does).
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Resumed:
    """Awaitable that drives a coroutine already suspended on `yielded` to its end."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.yielded
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and timeouts are delivered into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return
