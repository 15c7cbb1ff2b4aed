"""FastAPI and Starlette: the App connected for the web app's lifetime, and handed to request handlers.

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from streamproc import App
    from streamproc.integrations.fastapi import lifespan, publisher

    events = App("shop")
    web = FastAPI(lifespan=lifespan(events))            # or lifespan(events, inner=your_own_lifespan)

    @web.post("/orders")
    async def place(order: OrderIn, app: Annotated[App, Depends(publisher)]) -> dict[str, str]:
        published = await app.publish(OrderPlaced(order_id=order.id))
        return {"event_id": published.event_id}

At start the App's Redis is reached once (startup fails clearly if it cannot be); at stop its client is closed
after in-flight publishes are done. The App is in the lifespan state (`request.state.streamproc`) and in
`web.state.streamproc`, for code that runs outside a request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from ..app import App

STATE_KEY = "streamproc"

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def lifespan(app: App, *, inner: Lifespan | None = None,
             ) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for `FastAPI(lifespan=...)` (or Starlette's) that connects `app` at start and closes it at stop.
    `inner` is your own lifespan: it runs inside, with the App already connected (so it may publish), and the
    state it yields is merged into the lifespan state."""

    @asynccontextmanager
    async def run(web: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with app:
            setattr(web.state, STATE_KEY, app)
            state: dict[str, Any] = {STATE_KEY: app}
            if inner is None:
                yield state
                return
            async with inner(web) as inner_state:
                yield {**(inner_state or {}), **state}

    return run


def publisher(connection: HTTPConnection) -> App:
    """A dependency (`Depends(publisher)`) giving the App the lifespan connected."""
    found = getattr(connection.state, STATE_KEY, None) or getattr(connection.app.state, STATE_KEY, None)
    if not isinstance(found, App):
        raise RuntimeError("no streamproc App on this web app: pass lifespan=streamproc.integrations.fastapi."
                           "lifespan(app) to FastAPI(...)")
    return found


# `app: Publishing` in an endpoint's signature: the same as `app: App = Depends(publisher)`.
Publishing = Annotated[App, Depends(publisher)]
