"""The social app: `streamproc worker handlers.app:app` runs it.

Its handlers live in the modules beside this one and register themselves with `@app.handler(...)`.
Importing this module imports the `handlers` package first, whose `__init__` imports every handler module,
so `handlers.app:app` always comes with all of its handlers.
"""

from __future__ import annotations

from handlers.events import CardRemoved
from streamproc import App

app = App("social")

# Published by the product but not consumed here yet; declared so that tooling knows its streams.
app.register(CardRemoved)
