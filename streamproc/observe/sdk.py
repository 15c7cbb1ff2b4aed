"""The OpenTelemetry SDK, set up at the application edge only (`streamproc worker|ingest|dev`, through
worker/supervisor.instrument), from the SDK's own environment variables. Library code never imports this module:
it uses the API and whatever global TracerProvider the application set.

What is read, as the SDK's own auto-configuration reads it:
    OTEL_TRACES_EXPORTER     a comma list of exporter entry points (group `opentelemetry_traces_exporter`), e.g.
                             otlp,console; "none" for none. "otlp" is otlp_proto_grpc or otlp_proto_http as
                             OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL say (grpc when unset,
                             the SDK's default). Unset: "otlp" if an OTLP endpoint is configured
                             (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), else none: the
                             spec's default of otlp would send to a collector nobody runs and log an error per batch.
    OTEL_SDK_DISABLED=true   nothing is installed.
By the SDK itself: OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* (each exporter gets a BatchSpanProcessor),
OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout...), OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; by the API:
OTEL_PROPAGATORS.

Nothing is installed when a global TracerProvider is set already (by `opentelemetry-instrument`, or by the
application's own code before the CLI's edge runs): that one is the application's choice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from opentelemetry import trace

from ..errors import ConfigError
from ..settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

EXPORTER_GROUP = "opentelemetry_traces_exporter"
INSTALL_HINT = "pip install 'streamproc[otel]'"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
# Exporters the otel extra provides: when one of them is missing, the hint to install it is the answer.
_FROM_EXTRA = {"console", "otlp_proto_grpc", "otlp_proto_http"}


def exporter_names(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """The entry point names of the exporters asked for (see the module docstring); [] for no tracing."""
    raw = settings.traces_exporter or environ.get("OTEL_TRACES_EXPORTER", "")
    if not raw.strip():
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        raw = "otlp" if endpoint else "none"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if "none" in names:
        return []
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if "otlp" in names and protocol not in _OTLP_BY_PROTOCOL:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported for traces; use "
                          f"{' or '.join(_OTLP_BY_PROTOCOL)}")
    return list(dict.fromkeys(_OTLP_BY_PROTOCOL[protocol] if n == "otlp" else n for n in names))


def _exporter_classes(names: list[str]) -> list[type[SpanExporter]] | None:
    """The exporter classes, loaded from their entry points; None (after a warning) if the otel extra is missing."""
    found = {ep.name: ep for ep in entry_points(group=EXPORTER_GROUP)}
    missing = [n for n in names if n not in found]
    if any(n in _FROM_EXTRA for n in missing):
        log.warning("tracing asked for (%s) but its exporter is not installed: %s; running without tracing",
                    ", ".join(names), INSTALL_HINT)
        return None
    if missing:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: no installed trace exporter is named {', '.join(missing)} "
                          f"(installed: {', '.join(sorted(found)) or 'none'}; or 'none')")
    return [found[n].load() for n in names]


def resource(settings: Settings, service: str) -> Resource:
    """streamproc's defaults underneath, what OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME say on top:
    Resource.create(attributes) puts its arguments over the environment's, so the environment's are merged again
    last. service.instance.id is the SDK's, random per process (FLY_MACHINE_ID names the machine: host.id)."""
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, OTELResourceDetector, Resource

    defaults: dict[str, str] = {"service.name": settings.service_name or service}
    if settings.region:
        defaults["cloud.region"] = settings.region
    if settings.instance:
        defaults["host.id"] = settings.instance
    merged = Resource.create(defaults).merge(OTELResourceDetector().detect())
    if SERVICE_INSTANCE_ID not in merged.attributes:  # SDKs before 1.37 add none by default
        merged = Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}).merge(merged)
    return merged


def configure(settings: Settings, service: str, environ: Mapping[str, str]) -> Callable[[], object] | None:
    """Install an SDK TracerProvider as the global one if tracing is asked for and no provider is set yet.
    Returns its shutdown (which flushes the exporters), or None when nothing was installed."""
    # First: a disabled SDK reads no other OTEL_* setting, so one it would refuse (a protocol) is no error then.
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("OTEL_SDK_DISABLED=true: no tracing")
        return None
    names = exporter_names(settings, environ)
    if not names:
        return None
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        log.info("a global TracerProvider is set already (%s): streamproc uses it as it is",
                 type(current).__qualname__)
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing asked for (%s) but the OpenTelemetry SDK is not installed: %s; running without "
                    "tracing", ", ".join(names), INSTALL_HINT)
        return None
    classes = _exporter_classes(names)
    if classes is None:
        return None
    provider = TracerProvider(resource=resource(settings, service))  # sampler from OTEL_TRACES_SAMPLER
    for cls in classes:
        provider.add_span_processor(BatchSpanProcessor(cls()))  # OTEL_BSP_*; the exporter reads its own env
    trace.set_tracer_provider(provider)
    log.info("tracing to %s as %s", ", ".join(names), provider.resource.attributes.get("service.name"))
    return provider.shutdown
