"""streamproc.testing: drain() against a real Redis (what it counts, follow-up events, backoff made due at once or
waited out, a timeout that says what is left), bind() (a user's App on a test namespace and back), and the pytest
plugin as a user meets it: a user's project run by pytester, in its own pytest process, in strict asyncio mode."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from streamproc import App, Backoff, Context, DeadLetter, Event, Retry
from streamproc.testing import DrainTimeout, bind, drain
from streamproc.testing.drain import CANCEL_WAIT_S, STOP_MIN_S
from tests.inproc import open_app, partition, settled

pytest_plugins = ["pytester"]


# These tests count runs exactly: a long lease, so that a loaded machine's 200 ms test lease cannot reclaim and
# rerun an event (they are not lease tests).
ONCE = {"lease_ms": 10_000}


class Ordered(Event, tag="shop.ordered"):
    order_id: str


class Shipped(Event, tag="shop.shipped"):
    order_id: str


def shop(app: App, backoff: Backoff) -> None:
    """billing: "ok" succeeds, "flaky" fails once, "later" asks for a retry in a minute once, "doomed" always fails
    (3 attempts), "rejected" gives up at once. audit: everything succeeds."""

    @app.handler(Ordered, group="billing", max_attempts=3, backoff=backoff)
    async def bill(event: Ordered, ctx: Context) -> None:
        if event.order_id == "flaky" and ctx.attempt == 1:
            raise RuntimeError("card network down")
        if event.order_id == "later" and ctx.attempt == 1:
            raise Retry(delay=60, reason="bank asks to come back later")
        if event.order_id == "doomed":
            raise RuntimeError(f"declined (attempt {ctx.attempt})")
        if event.order_id == "rejected":
            raise DeadLetter("no such card")

    @app.handler(Ordered, group="audit")
    async def audit(event: Ordered, ctx: Context) -> None:
        return None


async def test_drain_counts_processed_retried_and_dead_lettered(ns: str, redis_url: str,
                                                                redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url, **ONCE) as app:
        shop(app, Backoff(base=30.0))  # waiting these out would take 15 s or more each
        names = ["ok", "flaky", "later", "doomed", "rejected"]
        ids = {name: (await app.publish(Ordered(order_id=name))).event_id for name in names}
        started = time.monotonic()
        drained = await drain(app, timeout=20)
        assert time.monotonic() - started < 10  # the backoff delays were made due at once

        billing = drained.in_group("billing")
        assert billing.processed == Counter({ids["ok"]: 1, ids["flaky"]: 1, ids["later"]: 1})
        assert billing.retried == Counter({ids["flaky"]: 1, ids["later"]: 1, ids["doomed"]: 2})
        assert billing.dead_lettered == Counter({ids["doomed"]: 1, ids["rejected"]: 1})
        reasons = {d.event_id: d.reason for d in billing.dead_letters}
        assert reasons == {ids["doomed"]: "failed 3 of max_attempts=3",
                           ids["rejected"]: "handler gave up: no such card"}
        assert [str(e) for e in billing.errors(ids["doomed"])] == [f"declined (attempt {n})" for n in (1, 2, 3)]
        assert len(billing.runs) == 1 + 2 + 2 + 3 + 1

        audit = drained.in_group("audit")
        assert audit.processed == Counter(dict.fromkeys(ids.values(), 1))
        assert not audit.retried and not audit.dead_lettered
        assert drained.processed[ids["ok"]] == 2  # one per group
        for group in ("billing", "audit"):
            assert await settled(redis, partition(app, Ordered), group)


async def test_drain_runs_follow_up_events_and_only_the_groups_named(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url, **ONCE) as app:

        @app.handler(Ordered, group="billing")
        async def bill(event: Ordered, ctx: Context) -> None:
            await asyncio.sleep(0.05)  # the follow-up is published well after the ordered event was read
            await app.publish(Shipped(order_id=event.order_id), event_id=f"ship-{event.order_id}")

        @app.handler(Shipped, group="mailer")
        async def mail(event: Shipped, ctx: Context) -> None:
            return None

        @app.handler(Shipped, group="analytics")
        async def count(event: Shipped, ctx: Context) -> None:
            return None

        for n in range(5):
            await app.publish(Ordered(order_id=f"o{n}"))
        drained = await drain(app, groups=["billing", "mailer"])
        assert sum(drained.in_group("billing").processed.values()) == 5
        assert drained.in_group("mailer").processed == Counter({f"ship-o{n}": 1 for n in range(5)})
        assert drained.in_group("analytics").runs == ()
        again = await drain(app, groups=["analytics"])  # the other group's events were left for it
        assert again.processed == Counter({f"ship-o{n}": 1 for n in range(5)})
        assert (await drain(app)).runs == ()  # nothing left anywhere


async def test_drain_can_wait_retries_out(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url, **ONCE) as app:

        @app.handler(Ordered, group="billing")
        async def bill(event: Ordered, ctx: Context) -> None:
            if ctx.attempt == 1:
                raise Retry(delay=0.5)

        published = await app.publish(Ordered(order_id="o1"))
        started = time.monotonic()
        drained = await drain(app, wait_retries=True)
        assert time.monotonic() - started >= 0.45  # Redis's clock and ours differ by a little
        assert drained.retried == Counter({published.event_id: 1})
        assert [r.attempt for r in drained.runs] == [1, 2]


async def test_drain_timeout_says_what_is_left(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url) as app:

        @app.handler(Ordered, group="billing")
        async def slow(event: Ordered, ctx: Context) -> None:
            await asyncio.sleep(1.0)

        await app.publish(Ordered(order_id="o1"))
        with pytest.raises(DrainTimeout, match=r"billing on .*shop\.ordered.*: 1 pending"):
            await drain(app, timeout=0.3)
        with pytest.raises(ValueError, match="no handlers for group"):
            await drain(app, groups=["nobody"])


async def test_drain_names_a_handler_that_swallows_cancellation(ns: str, redis_url: str) -> None:
    """The drain's stop is bounded: a handler that catches CancelledError and carries on is named in an error
    soon after the timeout, instead of hanging the test forever (or for a fixed 30 s)."""
    async with open_app(ns, redis_url) as app:
        gave_up = asyncio.Event()

        @app.handler(Ordered, group="billing")
        async def stubborn(event: Ordered, ctx: Context) -> None:
            until = time.monotonic() + 6  # then it ends, so the test leaves nothing running
            while time.monotonic() < until:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.02)
            gave_up.set()

        published = await app.publish(Ordered(order_id="o1"))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"billing .*stubborn {published.event_id}") as stuck:
            await drain(app, timeout=0.3)
        assert time.monotonic() - started < 0.3 + STOP_MIN_S + CANCEL_WAIT_S + 1
        assert "swallow CancelledError" in str(stuck.value)
        await asyncio.wait_for(gave_up.wait(), timeout=10)


async def test_bind_moves_an_app_to_a_namespace_and_back(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    user_app = App("shop", redis_url="redis://127.0.0.1:1/0")  # a Redis nobody listens on
    user_app.register(Shipped, groups=["mailer"])
    shop(user_app, Backoff(base=0))
    before = dict(vars(user_app))
    binding = bind(user_app, redis_url, ns)
    try:
        assert user_app.name == ns and user_app.settings.redis_url == redis_url
        assert sorted(user_app.groups()) == ["audit", "billing"]
        assert [h.max_attempts for h in user_app.handlers] == [3, 5]
        placed = await user_app.publish(Ordered(order_id="ok"))
        assert placed.stream == f"{ns}:ev:{{shop.ordered:0}}"
        shipped = await user_app.publish(Shipped(order_id="ok"))
        assert [g["name"] for g in await redis.xinfo_groups(shipped.stream)] == [b"mailer"]
        drained = await drain(user_app)
        assert drained.processed == Counter({placed.event_id: 2})
    finally:
        await binding.restore()
    assert vars(user_app) == before
    assert user_app.handlers[0].route.partitions[0].stream == "shop:ev:{shop.ordered:0}"


USER_APP = '''
from streamproc import App, Backoff, Context, DeadLetter, Event

class OrderPlaced(Event, tag="order.placed"):
    order_id: str

class Receipt(Event, tag="order.receipt"):
    order_id: str

app = App("shop")
charged = []

@app.handler(OrderPlaced, group="billing", max_attempts=3, backoff=Backoff(base=60))
async def charge(event: OrderPlaced, ctx: Context) -> None:
    if event.order_id == "flaky" and ctx.attempt == 1:
        raise ConnectionError("payment provider timed out")
    if event.order_id == "stolen":
        raise DeadLetter("card reported stolen")
    charged.append(event.order_id)
    await app.publish(Receipt(order_id=event.order_id))

@app.handler(Receipt, group="mailer")
async def mail(event: Receipt, ctx: Context) -> None:
    return None
'''

USER_TESTS = '''
from collections import Counter

import pytest

from shop import OrderPlaced, app, charged
from streamproc import App
from streamproc.testing import drain


@pytest.mark.asyncio
async def test_billing(streamproc_app: App) -> None:
    ok = await streamproc_app.publish(OrderPlaced(order_id="ok"))
    flaky = await streamproc_app.publish(OrderPlaced(order_id="flaky"))
    stolen = await streamproc_app.publish(OrderPlaced(order_id="stolen"))

    drained = await drain(streamproc_app, groups=["billing", "mailer"], timeout=20)

    billing = drained.in_group("billing")
    assert billing.processed == Counter({ok.event_id: 1, flaky.event_id: 1})
    assert billing.retried == Counter({flaky.event_id: 1})
    assert billing.dead_lettered == Counter({stolen.event_id: 1})
    assert [d.reason for d in billing.dead_letters] == ["handler gave up: card reported stolen"]
    assert sum(drained.in_group("mailer").processed.values()) == 2
    assert sorted(charged) == ["flaky", "ok"]


@pytest.mark.asyncio
async def test_each_test_has_its_own_namespace(streamproc_app: App, streamproc_namespace: str) -> None:
    assert streamproc_app is app and app.name == streamproc_namespace
    assert (await drain(streamproc_app)).runs == ()


def test_the_app_is_back_after_the_tests() -> None:
    assert app.name == "shop"
'''


def test_plugin_in_a_user_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=USER_APP, test_shop=USER_TESTS)
    pytester.makeini("[pytest]\nstreamproc_app = shop:app\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)


def test_plugin_bind_fixture_and_a_failing_user_test(pytester: pytest.Pytester) -> None:
    """Without the ini option, a user binds their App with streamproc_bind; a wrong expectation fails the test
    with the counts in the message (the plugin reports, it does not swallow)."""
    pytester.makepyfile(shop=USER_APP, test_shop='''
import pytest
from shop import OrderPlaced, app
from streamproc.testing import drain

@pytest.fixture
def shop_app(streamproc_bind):
    return streamproc_bind(app)

@pytest.mark.asyncio
async def test_wrong_expectation(shop_app) -> None:
    placed = await shop_app.publish(OrderPlaced(order_id="stolen"))
    drained = await drain(shop_app, groups=["billing"])
    assert drained.processed[placed.event_id] == 1, drained.dead_lettered

def test_without_the_ini_option(streamproc_app) -> None:
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*set `streamproc_app = package.module:app`*", "*AssertionError: Counter({'*': 1})*"])
