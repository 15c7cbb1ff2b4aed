"""The social app: `streamproc worker handlers.app:app` runs it.

Its handlers live in the modules beside this one and register themselves with `@app.handler(...)`.
Importing this module imports the `handlers` package first, whose `__init__` imports every handler module,
so `handlers.app:app` always comes with all of its handlers.

This is also the domain's edge: the only place in `handlers/` that reads the environment (NOTIFIER_*, SINK_*,
REMIND_AFTER_S), once, at import, in each process that imports it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from handlers.events import CardRemoved
from handlers.notifier import HttpNotifier, Notifier, NotifierSettings
from handlers.sink import SinkSettings, sink_service
from streamproc import App, Outgoing

app = App("social")

# Published by the product; only the analytics group consumes it. Declared here too, so that tooling knows its
# streams even when analytics is not loaded.
app.register(CardRemoved)


@dataclass(slots=True)
class Services:
    """Clients shared by every handler of a worker process. Tests swap in their own. `publish` appends (or, with
    `delay=`, schedules) events from a handler: the app's own `publish_many` by default."""

    notifier: Notifier
    publish: Callable[[list[Outgoing]], Awaitable[object]]
    # How long after a notification its recipient gets the delayed "you have unread notifications" reminder
    # (notifications.reminders_for, reminders.py); REMIND_AFTER_S sets it (the demo shortens it to seconds).
    remind_after: timedelta = timedelta(hours=1)


notifier_settings = NotifierSettings.from_env(os.environ)
sink_settings = SinkSettings.from_env(os.environ)
# HttpNotifier opens its HTTP session on first use, inside the worker's event loop, so building it here is free.
http_notifier = HttpNotifier(notifier_settings)
services = Services(notifier=http_notifier, publish=app.publish_many,
                    remind_after=timedelta(seconds=float(os.environ.get("REMIND_AFTER_S", "3600"))))
# The worker closes the notifier's session after its groups have drained.
app.worker_resources.append(http_notifier.open)

# `streamproc dev handlers.app:app` starts a notification sink and points the workers' NOTIFIER_URL at it.
app.dev_services.append(lambda: sink_service(sink_settings))
