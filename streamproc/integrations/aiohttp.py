"""aiohttp web: the App connected for the web app's lifetime (a cleanup context), under a typed AppKey.

    from aiohttp import web
    from streamproc.integrations.aiohttp import STREAMPROC_APP, cleanup_ctx

    web_app = web.Application()
    web_app.cleanup_ctx.append(cleanup_ctx(events))

    async def place(request: web.Request) -> web.Response:
        published = await request.app[STREAMPROC_APP].publish(OrderPlaced(order_id="o1"))
        return web.json_response({"event_id": published.event_id})

At start the App's Redis is reached once (startup fails clearly if it cannot be); at cleanup its client is
closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..app import App

STREAMPROC_APP = web.AppKey("streamproc_app", App)


def cleanup_ctx(app: App) -> Callable[[web.Application], AsyncIterator[None]]:
    """For `web_app.cleanup_ctx.append(...)`: connects `app` at startup, stores it as `web_app[STREAMPROC_APP]`,
    and closes it at cleanup."""

    async def connected(web_app: web.Application) -> AsyncIterator[None]:
        async with app:
            web_app[STREAMPROC_APP] = app
            yield

    return connected


def publisher(request: web.Request) -> App:
    """The App of the request's web app, also from a sub-application's handlers (`request.config_dict`)."""
    return request.config_dict[STREAMPROC_APP]
