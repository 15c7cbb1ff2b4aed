"""Every tunable of streamproc in one frozen object, read from the environment once, at the edge."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

ENV_PREFIX = "STREAMPROC_"
# Variables defined by other standards (or platforms) that map onto settings; STREAMPROC_* wins over them.
_STANDARD_ENV = {
    "REDIS_URL": "redis_url",
    "OTEL_TRACES_EXPORTER": "traces_exporter",
    "OTEL_SERVICE_NAME": "service_name",
    "FLY_REGION": "region",
    "FLY_MACHINE_ID": "instance",
}
_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_LOOP = "it is a loop's pause, and a shorter one spins in every process, costing Redis and CPU for nothing"
# Number settings that break below (or above) some value: (lowest, highest, what goes wrong outside). Every other
# number setting must be finite and not negative, and its 0 means what its comment says (off, none, every time).
_LIMITS: dict[str, tuple[float, float, str]] = {
    "lease_ms": (100, math.inf, "leases are renewed every lease_ms / 3: shorter ones spin, and entries of live "
                                "consumers are reclaimed whenever a renewal is a little late"),
    "block_ms": (1, math.inf, "BLOCK 0 waits forever, so a worker would never notice a stop"),
    "redis_timeout_ms": (10, math.inf, "a deadline shorter than a round trip turns every Redis call into an outage"),
    "batch_size": (1, math.inf, "a read of 0 entries reads nothing"),
    "claim_interval_ms": (10, math.inf, _LOOP),
    "retry_poll_ms": (10, math.inf, _LOOP),
    "delayed_poll_ms": (5, 1_000, f"{_LOOP}; above a second, delayed events are appended late by that much"),
    "delayed_batch": (1, 100_000, "a move of 0 moves nothing, and one of more holds Redis for too long at once"),
    "trim_interval_ms": (10, math.inf, _LOOP),
    "schedule_poll_ms": (10, 1_000, f"{_LOOP}; above a second, a pause or resume takes longer than a second to "
                                    "reach every process"),
    "schedule_grace_ms": (2_000, math.inf, "a tick must stay on time over two evaluations (schedule_poll_ms is at "
                                           "most a second): else one found a little late counts as missed, and "
                                           "with misfire='skip' never fires"),
    "dedup_window_ms": (1, math.inf, "Redis refuses an expiry of 0: every publish with an event id would append and "
                                     "then fail, and each retry of it would append another copy"),
    "redis_max_connections": (1, math.inf, "redis-py would take 0 for its default of 100"),
    "deadletter_max_length": (1, math.inf, "0 would delete every dead letter as it is written"),
    "metrics_port": (0, 65_535, "it is a TCP port (0: no endpoint)"),
    "ingest_max_body_bytes": (1, math.inf, "every request would be refused as too large"),
    "ingest_max_batch": (1, math.inf, "every request would be refused"),
    "ingest_body_timeout_ms": (10, math.inf, "every request would be answered 408 before its body could arrive"),
    "ingest_keepalive_timeout_ms": (10, math.inf, "aiohttp takes 0 for no timeout: idle and half-sent connections "
                                                  "would be held for ever"),
    "ingest_max_header_bytes": (1, math.inf, "every request would be refused"),
    "ingest_max_headers": (1, math.inf, "every request would be refused"),
    "ingest_max_connections": (1, math.inf, "every connection would be refused"),
    "priority_floor": (0, 0.5, "it is the least share of reads every lower lane with a backlog gets; above half, "
                               "a lower lane would be served before the most urgent one"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime settings. Each field can be set by `STREAMPROC_<FIELD>` (upper case); `REDIS_URL` sets redis_url."""

    redis_url: str = "redis://localhost:6379/0"
    # A consumer that has not refreshed an entry for this long is presumed dead; XAUTOCLAIM takes its entries.
    lease_ms: int = 30_000
    # How long one XREADGROUP waits for new entries; bounds how quickly a worker notices a stop.
    block_ms: int = 1_000
    # The deadline of one Redis command (a blocking read gets its BLOCK on top). A call past it counts as an outage:
    # the connection is dropped and the caller backs off and tries again. Handlers' own blocking commands on
    # ctx.redis must block for less than this.
    redis_timeout_ms: int = 5_000
    # Entries per XREADGROUP / XAUTOCLAIM call.
    batch_size: int = 200
    # Priority lanes (Event.priorities): the least share of each partition's reads that every lane below 0 gets
    # while it has a backlog (so a flood of urgent events never starves the others); the rest goes to the most
    # urgent lanes first. 0: strict priority (a lower lane waits until the higher ones are empty).
    priority_floor: float = 0.1
    # How often stalled entries and due retries are looked for.
    claim_interval_ms: int = 5_000
    retry_poll_ms: int = 100
    # On SIGTERM, in-flight handlers get this long to finish before they are left pending for others.
    grace_period_s: float = 30.0
    # A producer-given event id is appended at most once within this window.
    dedup_window_ms: int = 86_400_000
    # publish raises BacklogFull when a stream's unconsumed entries (lag + pending of its slowest group) pass this.
    # 0 turns the check off.
    max_backlog: int = 1_000_000
    backlog_check_ms: int = 1_000
    # publish raises BacklogFull when a partition already holds this many delayed events waiting for their due time
    # (publish/delayed.py). 0 turns the limit off.
    max_delayed: int = 1_000_000
    # How often each worker process asks Redis whether a delayed event is due (one call, whatever the number of
    # types and partitions; sooner when the next due time is nearer), and how many due events one atomic move
    # appends at most (worker/promote.py).
    delayed_poll_ms: int = 50
    delayed_batch: int = 500
    # Cron schedules (app.cron): each worker process reads every schedule's state and Redis's clock in one call this
    # often (and at each tick), so a pause or resume reaches every process within it. A tick found due within
    # schedule_grace_ms of its time is on time and always fires; an older one was missed, and the schedule's
    # misfire policy decides (schedule/misfire.py).
    schedule_poll_ms: int = 1_000
    schedule_grace_ms: int = 10_000
    # Fully acknowledged history is kept this long (so a new group can replay it) and at most this many entries
    # (retention_max_length 0: no length limit).
    retention_ms: int = 86_400_000
    retention_max_length: int = 1_000_000
    trim_interval_ms: int = 10_000
    # Consumers idle this long with nothing pending are removed from their group.
    consumer_gc_idle_ms: int = 600_000
    # Connections one process may open to Redis. Callers wait for a free one rather than fail (blocking pool);
    # each group's blocking read holds one, and handlers that use ctx.redis share the rest.
    redis_max_connections: int = 512
    # Run even though Redis may evict keys (a maxmemory-policy other than noeviction), which workers and ingest
    # otherwise refuse at start. Evicted keys vanish without a trace: unprocessed stream entries, scheduled retries
    # (an entry waiting for its retry is no longer in the pending list), dead letters, and dedup markers (a publish
    # retried after a lost reply appends a second copy). Only for data you can afford to lose.
    allow_evicting_memory_policy: bool = False
    # Worker processes the supervisor runs; 0 means one per CPU.
    processes: int = 0
    # Dead-letter streams keep at most this many entries per (partition, group).
    deadletter_max_length: int = 100_000
    # Tracing at the edge (`streamproc worker|ingest|dev`, see observe/sdk.py): OTEL_TRACES_EXPORTER, a comma list
    # (otlp, console, none; unset: otlp if an OTLP endpoint is configured, else none), and OTEL_SERVICE_NAME (the
    # default is "{app}-{role}"); region and instance become the cloud.region and host.id resource attributes (from
    # FLY_REGION and FLY_MACHINE_ID on Fly.io). OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over all of them.
    traces_exporter: str = ""
    service_name: str = ""
    region: str = ""
    instance: str = ""
    # Port of the Prometheus /metrics endpoint of `streamproc worker` (0: no endpoint, no metrics cost).
    metrics_port: int = 0
    # Ingest: request bodies over this size get 413 before they are read whole.
    ingest_max_body_bytes: int = 1_048_576
    # Events one request may carry, and events one coalesced append may carry.
    ingest_max_batch: int = 1_000
    ingest_coalesce_max: int = 2_000
    # Comma-separated SHA-256 hex digests of the accepted bearer tokens (never the tokens themselves).
    ingest_token_hashes: str = ""
    # Turns authentication off. For local development only; the server warns loudly at start.
    ingest_auth_disabled: bool = False
    # Retry-After seconds sent with 429 (backlog full) and 503 (Redis unavailable, or connections at their limit).
    ingest_retry_after_s: int = 1
    # A request body must arrive whole within this long of its headers; else 408 and the connection closes.
    ingest_body_timeout_ms: int = 10_000
    # A connection idle this long between requests is closed; the first request's headers must arrive within this
    # long of the connection, and each next request's within this long of the previous answer. Keep it above the
    # idle timeout of a load balancer in front, so the balancer never reuses a connection the server just closed.
    ingest_keepalive_timeout_ms: int = 75_000
    # The longest request line or header line (bytes), and the most header lines per request: over either, 400.
    ingest_max_header_bytes: int = 8_190
    ingest_max_headers: int = 64
    # Connections served at once; one more is answered 503 (with Retry-After) and closed.
    ingest_max_connections: int = 1_024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_number(field.name, getattr(self, field.name))
        if not self.redis_url.startswith(_URL_SCHEMES):
            raise ConfigError(f"setting redis_url must start with one of {', '.join(_URL_SCHEMES)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `STREAMPROC_*` and `REDIS_URL`; explicit overrides (e.g. CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field_name in _STANDARD_ENV.items():
            if env.get(name):
                values[field_name] = env[name]
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _parse(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_number(name: str, value: object) -> None:
    """Numbers must be finite and within _LIMITS (default: not negative); the error names the setting, its
    environment variable, what is allowed and what would break."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    low, high, why = _LIMITS.get(name, (0, math.inf, ""))
    if math.isfinite(value) and low <= value <= high:
        return
    allowed = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
    raise ConfigError(f"setting {name} ({ENV_PREFIX}{name.upper()}) must be {allowed} and finite, got {value!r}"
                      + (f": {why}" if why else ""))


def _parse(name: str, kind: object, raw: str) -> object:
    if kind in ("bool", bool):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
    try:
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw
