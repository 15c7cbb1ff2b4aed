"""Binding a user's App to a test Redis under a namespace of its own, for the duration of one test.

The App is rebound in place, not copied: handlers and web code that publish through the module's `app` object
(`await app.publish(...)` inside a handler) then publish into the test's namespace too. At the end the test's
client is closed and the App is exactly as it was, its own client (if it had made one) untouched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..app import App


@dataclass(slots=True)
class Binding:
    """An App rebound by `bind`; `restore()` closes the test's client and puts the App back as it was."""

    app: App
    saved: dict[str, object]

    async def restore(self) -> None:
        try:
            await self.app.aclose()
        finally:
            state = vars(self.app)
            state.clear()
            state.update(self.saved)


def bind(app: App, redis_url: str, namespace: str) -> Binding:
    """Point `app` at `redis_url` under `namespace`, with every registration it has: its event types and their
    declared groups, its handlers (same options), worker resources and dev services. Its settings are kept but
    for the Redis URL. Everything else (clients, publisher caches) starts fresh, made in the test's event loop."""
    saved = dict(vars(app))
    fresh = App(namespace, settings=app.settings.replace(redis_url=redis_url))
    for route in app.topology.by_tag.values():
        new = fresh.topology.route(route.event_type)
        new.groups.update(route.groups)
        new.declared.update(route.declared)
    for h in app.handlers:
        route = fresh.topology.route(h.route.event_type)
        fresh.handlers.append(dataclasses.replace(h, route=route, codec=route.codec))
    fresh.worker_resources = list(app.worker_resources)
    fresh.dev_services = list(app.dev_services)
    # The whole state of a freshly made App, so that whatever App holds now or later is reset, not only the
    # attributes listed here.
    state = vars(app)
    state.clear()
    state.update(vars(fresh))
    return Binding(app, saved)
