"""What streamproc needs of the Redis server, checked once at the start of every worker process and ingest.

    version            Redis 7.0 or newer: XAUTOCLAIM's reply (it names the deleted entries it skipped) and XINFO's
                       lag and entries-read counts came in 7.0, and 6.2's replies would break the worker
    maxmemory-policy   noeviction: any other policy lets Redis delete keys silently when memory runs out

Read with CONFIG GET where it works, else from INFO (managed Redis often disables or renames CONFIG). What cannot
be read is logged as a warning and not held against the server; what is read and wrong raises UnsupportedServer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as rx

from ..errors import UnsupportedServer
from ..settings import Settings
from .errors import is_transient
from .resp import text

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0)
# The one policy under which Redis never deletes a key on its own. Every other one is refused, the volatile-*
# ones too: they evict only keys that have a TTL, but dedup markers and ctx.once idempotency keys have TTLs, and
# evicting one makes a retried publish append twice or a handler's side effect happen twice. Refused even when
# maxmemory is 0 (no limit) today: an operator or a managed service can set a limit at any time without a restart.
SAFE_POLICY = "noeviction"
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What was read from the server; None where it could not be read."""

    version: tuple[int, ...] | None
    memory_policy: str | None
    policy_source: str = ""  # "CONFIG GET" or "INFO memory"


async def check_server(redis: aioredis.Redis, settings: Settings, *, unreachable_ok: bool = False,
                       ) -> ServerFacts | None:
    """Refuse a server streamproc cannot run on safely (UnsupportedServer, not retriable), log what could not be
    checked, and return what was read. A Redis that does not answer raises its error, or, with `unreachable_ok`
    (for callers that cope with Redis being down at start), is logged and returns None unchecked."""
    try:
        facts = await read_facts(redis)
    except (rx.RedisError, OSError, TimeoutError) as exc:
        if not (unreachable_ok and is_transient(exc)):
            raise
        log.warning("could not check the Redis server at start (%s: %s); its version and maxmemory-policy are "
                    "not checked", type(exc).__name__, exc)
        return None
    judge(facts, settings.allow_evicting_memory_policy)
    log.info("Redis %s, maxmemory-policy %s", _shown(facts.version), facts.memory_policy or "unknown")
    return facts


async def read_facts(redis: aioredis.Redis) -> ServerFacts:
    version = parse_version(await _info_field(redis, "server", "redis_version"))
    policy, source = await _config_policy(redis), "CONFIG GET"
    if policy is None:
        policy, source = await _info_field(redis, "memory", "maxmemory_policy"), "INFO memory"
    return ServerFacts(version, policy.strip().lower() if policy else None, source if policy else "")


def judge(facts: ServerFacts, allow_evicting: bool) -> None:
    """Raise UnsupportedServer for a known-bad version or policy; warn about what is unknown or allowed."""
    if facts.version is None:
        log.warning("could not read the Redis server's version (INFO unavailable); streamproc needs Redis %s or "
                    "newer", _shown(MIN_VERSION))
    elif facts.version < MIN_VERSION:
        raise UnsupportedServer(f"Redis {_shown(facts.version)} is too old: streamproc needs Redis "
                                f"{_shown(MIN_VERSION)} or newer (XAUTOCLAIM's reply and XINFO's lag changed in 7.0). "
                                "Upgrade the server")
    policy = facts.memory_policy
    if policy is None:
        log.warning("could not read Redis's maxmemory-policy (CONFIG and INFO unavailable): make sure it is %s, "
                    "or Redis may silently delete streams, retries, dead letters and dedup markers", SAFE_POLICY)
    elif policy != SAFE_POLICY and allow_evicting:
        log.warning("Redis's maxmemory-policy is %s: when memory runs out it deletes keys silently (streams, "
                    "scheduled retries, dead letters, dedup markers); running anyway, as "
                    "allow_evicting_memory_policy says", policy)
    elif policy != SAFE_POLICY:
        raise UnsupportedServer(
            f"Redis's maxmemory-policy is {policy} ({facts.policy_source}): when memory runs out Redis would "
            "silently delete streams, scheduled retries, dead letters and dedup markers. streamproc needs "
            f"maxmemory-policy {SAFE_POLICY}: set it in redis.conf or with CONFIG SET maxmemory-policy {SAFE_POLICY} "
            "(on a managed Redis, in its parameter group), or, to run anyway and risk that loss, set "
            "STREAMPROC_ALLOW_EVICTING_MEMORY_POLICY=1")


def parse_version(text: str | None) -> tuple[int, ...] | None:
    match = _VERSION.match(text or "")
    return tuple(int(part) for part in match.groups() if part is not None) if match else None


async def _config_policy(redis: aioredis.Redis) -> str | None:
    try:
        found = await redis.config_get("maxmemory-policy")
    except rx.ResponseError as exc:  # renamed, disabled, or not allowed by an ACL
        log.warning("CONFIG GET is not available (%s); reading maxmemory-policy from INFO instead", exc)
        return None
    values = [text(v) for k, v in dict(found or {}).items() if text(k) == "maxmemory-policy"]
    return values[0] if values else None  # an empty answer (some proxies): read INFO instead


async def _info_field(redis: aioredis.Redis, section: str, name: str) -> str | None:
    try:
        info = await redis.info(section)
    except rx.ResponseError as exc:
        log.warning("INFO %s is not available (%s)", section, exc)
        return None
    value = info.get(name)
    return text(value) if value is not None else None


def _shown(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "(version unknown)"
