"""Tracing at the application edge, each case in a process of its own (a global TracerProvider can be set only
once per process): the SDK set up from its own OTEL_* variables by `instrument()` (what `streamproc worker|ingest|
dev` call), OTLP export over HTTP and gRPC to small real receivers, resource precedence, OTEL_SDK_DISABLED, a
provider set before the edge (left alone), `opentelemetry-instrument streamproc worker`, no SDK installed, and no
provider at all (no trace context stored, until the application sets one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A tiny application, as a user's module would be. Published from the script below, handled by the worker.
APP_MODULE = '''
import os
from streamproc import App, Context, Event

class Ping(Event, tag="ping"):
    n: int = 0

app = App(os.environ["TEST_NS"])

@app.handler(Ping, group="g")
async def ping(event: Ping, ctx: Context) -> None:
    await ctx.redis.hincrby(os.environ["TEST_NS"] + ":runs", "ping", 1)
'''

# Publishes one Ping after the edge set-up, then prints what the entry carries (the last line of stdout).
PUBLISH = '''
import asyncio, json, logging, sys
logging.basicConfig(level="INFO", stream=sys.stderr)
from opentelemetry import trace
from streamproc.worker.supervisor import instrument
from pingapp import Ping, app

async def main() -> None:
    instrument(app, "worker")
    try:
        published = await app.publish(Ping(n=1))
        [(_, fields)] = await app.redis.xrange(published.stream, published.stream_id, published.stream_id)
    finally:
        await app.aclose()
        app.instruments.tracing.shutdown()
    print(json.dumps({"fields": sorted(k.decode() for k in fields),
                      "provider": type(trace.get_tracer_provider()).__name__}))

asyncio.run(main())
'''


@dataclass
class Run:
    stdout: str
    stderr: str

    @property
    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return out

    def spans(self) -> list[dict[str, Any]]:
        """The JSON objects ConsoleSpanExporter printed (one per span, several lines each)."""
        decoder, text, spans = json.JSONDecoder(), self.stdout, []
        i = text.find("{")
        while i != -1:
            obj, end = decoder.raw_decode(text, i)
            if "context" in obj:
                spans.append(obj)
            i = text.find("{", end)
        return spans


def edge_env(tmp_path: Path, ns: str, redis_url: str, **otel: str) -> dict[str, str]:
    (tmp_path / "pingapp.py").write_text(APP_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FLY_", "STREAMPROC_"))}
    return {**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "TEST_NS": ns, "REDIS_URL": redis_url,
            "OTEL_BSP_SCHEDULE_DELAY": "50", **otel}


def run_script(script: str, env: Mapping[str, str], tmp_path: Path) -> Run:
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return Run(done.stdout, done.stderr)


async def run_script_async(script: str, env: Mapping[str, str], tmp_path: Path) -> Run:
    """As run_script, but without blocking the test's loop (which serves the receivers)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env, cwd=tmp_path,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return Run(out.decode(), err.decode())


def resource_of(span: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = span["resource"]["attributes"]
    return out


def test_no_exporter_asked_for_means_no_provider_and_no_trace_context(tmp_path: Path, ns: str,
                                                                      redis_url: str) -> None:
    run = run_script(PUBLISH, edge_env(tmp_path, ns, redis_url), tmp_path)
    assert run.entry == {"fields": ["data", "event_id", "occurred_at", "type"], "provider": "ProxyTracerProvider"}


def test_a_provider_set_after_the_app_was_built_turns_tracing_on(tmp_path: Path, ns: str, redis_url: str) -> None:
    """As a web app does at start-up: the App exists (module level) before anyone sets a provider."""
    script = '''
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pingapp import Ping, app

async def fields() -> list[str]:
    p = await app.publish(Ping())
    [(_, f)] = await app.redis.xrange(p.stream, p.stream_id, p.stream_id)
    return sorted(k.decode() for k in f)

async def main() -> None:
    before = await fields()
    trace.set_tracer_provider(TracerProvider())
    after = await fields()
    await app.aclose()
    print(json.dumps({"before": before, "after": after}))

asyncio.run(main())
'''
    run = run_script(script, edge_env(tmp_path, ns, redis_url), tmp_path)
    assert run.entry == {"before": ["data", "event_id", "occurred_at", "type"],
                         "after": ["data", "event_id", "occurred_at", "traceparent", "type"]}


def test_console_exporter_and_resource_defaults(tmp_path: Path, ns: str, redis_url: str) -> None:
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console", FLY_REGION="ams",
                   FLY_MACHINE_ID="148e21ea7e4268")
    runs = [run_script(PUBLISH, env, tmp_path) for _ in range(2)]
    resources = []
    for run in runs:
        assert run.entry == {"fields": ["data", "event_id", "occurred_at", "traceparent", "type"],
                             "provider": "TracerProvider"}
        [span] = run.spans()
        assert span["name"] == f"send {ns}:ev:{{ping:0}}"
        assert span["kind"] == "SpanKind.PRODUCER"
        resources.append(resource_of(span))
    for resource in resources:
        assert resource["service.name"] == f"{ns}-worker"
        assert resource["cloud.region"] == "ams"
        assert resource["host.id"] == "148e21ea7e4268"
    assert len({r["service.instance.id"] for r in resources}) == 2, "service.instance.id is unique per process"


def test_otel_resource_attributes_and_service_name_win_over_defaults(tmp_path: Path, ns: str,
                                                                     redis_url: str) -> None:
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console", FLY_REGION="ams",
                   FLY_MACHINE_ID="m1", OTEL_RESOURCE_ATTRIBUTES="host.id=h-env,cloud.region=fra,service.name=attr,"
                   "service.instance.id=i-env,deployment.environment.name=test")
    [span] = run_script(PUBLISH, env, tmp_path).spans()
    assert resource_of(span).items() >= {"host.id": "h-env", "cloud.region": "fra", "service.name": "attr",
                                         "service.instance.id": "i-env",
                                         "deployment.environment.name": "test"}.items()
    [span] = run_script(PUBLISH, {**env, "OTEL_SERVICE_NAME": "social-worker"}, tmp_path).spans()
    assert resource_of(span)["service.name"] == "social-worker"


def test_sdk_disabled_installs_nothing(tmp_path: Path, ns: str, redis_url: str) -> None:
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console", OTEL_SDK_DISABLED="true")
    run = run_script(PUBLISH, env, tmp_path)
    assert run.entry == {"fields": ["data", "event_id", "occurred_at", "type"], "provider": "ProxyTracerProvider"}
    assert run.spans() == []


def test_sdk_disabled_ignores_an_exporter_setting_it_would_refuse(tmp_path: Path, ns: str, redis_url: str) -> None:
    """OTEL_SDK_DISABLED is read first: an unsupported OTLP protocol is then no configuration error (exit 2)."""
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
                   OTEL_SDK_DISABLED="true")
    run = run_script(PUBLISH, env, tmp_path)
    assert run.entry == {"fields": ["data", "event_id", "occurred_at", "type"], "provider": "ProxyTracerProvider"}
    assert "is not supported for traces" not in run.stderr


def test_a_provider_set_before_the_edge_is_left_alone(tmp_path: Path, ns: str, redis_url: str) -> None:
    script = '''
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

class Mine(TracerProvider):
    pass

memory = InMemorySpanExporter()
mine = Mine()
mine.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(mine)
''' + PUBLISH + '''
assert trace.get_tracer_provider() is mine
print(json.dumps({"recorded": [s.name for s in memory.get_finished_spans()]}))
'''
    run = run_script(script, edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console"), tmp_path)
    assert json.loads(run.stdout.splitlines()[-2])["provider"] == "Mine"
    assert run.entry == {"recorded": [f"send {ns}:ev:{{ping:0}}"]}
    assert run.spans() == [], "the console exporter was not installed over the application's provider"
    assert "a global TracerProvider is set already (Mine)" in run.stderr


def test_without_the_sdk_tracing_asked_for_is_a_warning_with_the_fix(tmp_path: Path, ns: str,
                                                                     redis_url: str) -> None:
    block = '''
import importlib.abc, sys
class NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith(("opentelemetry.sdk.", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoSdk())
'''
    run = run_script(block + PUBLISH, edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="otlp"), tmp_path)
    assert "pip install 'streamproc[otel]'" in run.stderr
    assert run.entry["fields"] == ["data", "event_id", "occurred_at", "type"]


def test_an_unknown_exporter_is_a_config_error(tmp_path: Path, ns: str, redis_url: str) -> None:
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console,bogus")
    done = subprocess.run([BIN / "streamproc", "worker", "pingapp:app", "--inline"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no installed trace exporter is named bogus" in done.stderr
    assert "Traceback" not in done.stderr


# --- OTLP to real receivers -------------------------------------------------------------------------------------


@dataclass
class Received:
    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)

    def spans(self) -> list[tuple[str, dict[str, str]]]:
        """(span name, resource attributes) of every span received."""
        return [(span.name, _strings(rs.resource.attributes)) for request in self.requests
                for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def _strings(attributes: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in attributes:
        assert isinstance(kv, KeyValue)
        out[kv.key] = kv.value.string_value
    return out


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) collector of one route, POST /v1/traces, on a free loopback port."""
    received = Received()

    async def export(request: web.Request) -> web.Response:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.requests.append(message)
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    wa = web.Application()
    wa.router.add_post("/v1/traces", export)
    runner = web.AppRunner(wa)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, received: Received) -> None:
        self.received = received

    async def Export(self, request: Any, context: Any) -> Any:  # the name the gRPC service defines
        self.received.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.asynccontextmanager
async def grpc_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/gRPC collector on a free loopback port."""
    received = Received()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("protocol", "exporters"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, {}),  # OTEL_TRACES_EXPORTER unset + an endpoint: otlp
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, {"OTEL_TRACES_EXPORTER": "otlp,console"}),
    ({}, {"OTEL_TRACES_EXPORTER": "otlp"}),  # no protocol: gRPC, the SDK's default
], ids=["http-implicit", "grpc-and-console", "grpc-default"])
async def test_otlp_export_reaches_a_collector(tmp_path: Path, ns: str, redis_url: str, protocol: dict[str, str],
                                               exporters: dict[str, str]) -> None:
    is_grpc = protocol.get("OTEL_EXPORTER_OTLP_PROTOCOL") != "http/protobuf"
    async with (grpc_receiver() if is_grpc else http_receiver()) as (endpoint, received):
        env = edge_env(tmp_path, ns, redis_url, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="exported",
                       **protocol, **exporters)
        run = await run_script_async(PUBLISH, env, tmp_path)
        await wait_for(lambda: received.spans(), timeout=10)
    [(name, resource)] = received.spans()  # exactly one span, exported once
    assert name == f"send {ns}:ev:{{ping:0}}"
    assert resource["service.name"] == "exported"
    assert resource["telemetry.sdk.language"] == "python", "the SDK's resource defaults came along"
    assert [s["name"] for s in run.spans()] == ([f"send {ns}:ev:{{ping:0}}"] if "console" in str(exporters) else [])


# --- opentelemetry-instrument -------------------------------------------------------------------------------------


async def test_opentelemetry_instrument_runs_the_worker_with_its_own_provider(
        tmp_path: Path, ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """`opentelemetry-instrument streamproc worker`: the distro sets the provider before streamproc's edge runs;
    streamproc leaves it as it is, and its CONSUMER spans go to the distro's exporter."""
    env = edge_env(tmp_path, ns, redis_url, OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none",
                   OTEL_LOGS_EXPORTER="none", OTEL_SERVICE_NAME="instrumented")
    proc = await asyncio.create_subprocess_exec(
        BIN / "opentelemetry-instrument", BIN / "streamproc", "worker", "pingapp:app", "--inline", env=env,
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        publish = PUBLISH.replace('instrument(app, "worker")', "pass")  # publish untraced, from a plain process
        await run_script_async(publish, {**env, "OTEL_TRACES_EXPORTER": "none"}, tmp_path)
        await wait_for(lambda: redis.hget(f"{ns}:runs", "ping"), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert await redis.hget(f"{ns}:runs", "ping") == b"1"
    run = Run(out.decode(), err.decode())
    [consumer] = [s for s in run.spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert consumer["name"] == f"process {ns}:ev:{{ping:0}}"
    assert resource_of(consumer)["service.name"] == "instrumented"
    assert "a global TracerProvider is set already" in run.stderr
