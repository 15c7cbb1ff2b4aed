"""The social app: `streamproc worker handlers.app:app` runs it.

Its handlers live in the modules beside this one and register themselves with `@app.handler(...)`.
Importing this module imports the `handlers` package first, whose `__init__` imports every handler module,
so `handlers.app:app` always comes with all of its handlers.

This is also the domain's edge: the only place in `handlers/` that reads the environment (NOTIFIER_*, SINK_*),
once, at import, in each process that imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from handlers.events import CardRemoved
from handlers.notifier import HttpNotifier, Notifier, NotifierSettings
from handlers.sink import SinkSettings, sink_service
from streamproc import App

app = App("social")

# Published by the product; only the analytics group consumes it. Declared here too, so that tooling knows its
# streams even when analytics is not loaded.
app.register(CardRemoved)


@dataclass(slots=True)
class Services:
    """Clients shared by every handler of a worker process. Tests swap in their own."""

    notifier: Notifier


notifier_settings = NotifierSettings.from_env(os.environ)
sink_settings = SinkSettings.from_env(os.environ)
# HttpNotifier opens its HTTP session on first use, inside the worker's event loop, so building it here is free.
http_notifier = HttpNotifier(notifier_settings)
services = Services(notifier=http_notifier)
# The worker closes the notifier's session after its groups have drained.
app.worker_resources.append(http_notifier.open)

# `streamproc dev handlers.app:app` starts a notification sink and points the workers' NOTIFIER_URL at it.
app.dev_services.append(lambda: sink_service(sink_settings))
