"""Testing your handlers against a real Redis: the pytest plugin's fixtures (plugin.py) and `drain`.

    from streamproc.testing import drain

    async def test_billing(streamproc_app: App) -> None:
        placed = await streamproc_app.publish(OrderPlaced(order_id="o1"))
        drained = await drain(streamproc_app, groups=["billing"])
        assert drained.processed[placed.event_id] == 1
"""

from .apps import Binding, bind
from .drain import Drained, DrainTimeout, Run, drain

__all__ = ["Binding", "DrainTimeout", "Drained", "Run", "bind", "drain"]
