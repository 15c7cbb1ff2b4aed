"""streamproc's pytest plugin (registered with the `pytest11` entry point, so it loads in every pytest run where
streamproc is installed. Loading it imports its package, streamproc.testing, and so `drain` with the App and
redis-py, and pytest-asyncio if installed (its async fixture is defined with it); it starts nothing until one of its
fixtures is used, and every name it adds starts with `streamproc_`).

Fixtures:
    streamproc_redis_url   session-wide: a throwaway redis-server on a free loopback port (needs `redis-server`
                           on PATH), or the Redis named by the `streamproc_redis_url` ini option
    streamproc_namespace   a key namespace unique to the test
    streamproc_bind        `streamproc_bind(app)` rebinds your App to that Redis and namespace for the test
    streamproc_app         your App (the `streamproc_app = module:attribute` ini option), bound like that

The async fixture needs pytest-asyncio (any mode: in strict mode mark your tests `@pytest.mark.asyncio`).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

if TYPE_CHECKING:
    from streamproc import App

BindApp = Callable[["App"], "App"]

try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # the async fixture says what is missing when it is used
    HAVE_PYTEST_ASYNCIO = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("streamproc_app", "MODULE:ATTRIBUTE of the App the streamproc_app fixture binds for each test")
    parser.addini("streamproc_redis_url", "a Redis for streamproc's fixtures instead of a throwaway redis-server "
                  "(tests keep to namespaces of their own; nothing is flushed)")


@pytest.fixture(scope="session")
def streamproc_redis_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The URL of the session's Redis: a throwaway redis-server started on first use, stopped at the end."""
    external = str(pytestconfig.getini("streamproc_redis_url") or "")
    if external:
        yield external
        return
    from streamproc.devtools.localredis import LocalRedis, LocalRedisError

    server = LocalRedis()
    try:
        server.start()
    except LocalRedisError as exc:
        pytest.fail(f"streamproc_redis_url: {exc}", pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def streamproc_namespace() -> str:
    """A key namespace of the test's own, so tests sharing one Redis never see each other's streams."""
    return f"t{uuid4().hex[:12]}"


async def _bind(redis_url: str, namespace: str) -> AsyncIterator[BindApp]:
    from streamproc.testing.apps import Binding, bind

    bindings: list[Binding] = []

    def bind_app(app: App) -> App:
        if bindings:
            raise RuntimeError("streamproc_bind binds one App per test (they would share the namespace)")
        bindings.append(bind(app, redis_url, namespace))
        return app

    try:
        yield bind_app
    finally:
        for binding in bindings:
            await binding.restore()


if HAVE_PYTEST_ASYNCIO:
    @pytest_asyncio.fixture
    async def streamproc_bind(streamproc_redis_url: str, streamproc_namespace: str) -> AsyncIterator[BindApp]:
        """`streamproc_bind(app)`: your App on the test's Redis and namespace until the test ends (then its
        client is closed and the App is as it was)."""
        async for bind_app in _bind(streamproc_redis_url, streamproc_namespace):
            yield bind_app
else:
    @pytest.fixture
    def streamproc_bind() -> Any:
        pytest.fail("streamproc's fixtures need pytest-asyncio: pip install pytest-asyncio", pytrace=False)


@pytest.fixture
def streamproc_app(pytestconfig: pytest.Config, streamproc_bind: BindApp) -> App:
    """The App named by the `streamproc_app` ini option (MODULE:ATTRIBUTE), bound for this test. Or override this
    fixture: `def streamproc_app(streamproc_bind): return streamproc_bind(my_app)`."""
    target = str(pytestconfig.getini("streamproc_app") or "")
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        pytest.fail("streamproc_app: set `streamproc_app = package.module:app` in your pytest configuration, or "
                    "override the fixture: `def streamproc_app(streamproc_bind): return streamproc_bind(app)`",
                    pytrace=False)
    from streamproc import App

    app = getattr(importlib.import_module(module), attribute)
    if not isinstance(app, App):
        pytest.fail(f"streamproc_app: {target} is a {type(app).__name__}, not a streamproc App", pytrace=False)
    return streamproc_bind(app)
