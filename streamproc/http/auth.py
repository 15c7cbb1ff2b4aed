"""Bearer-token authentication for ingest: tokens are configured as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from ..errors import ConfigError


def token_digest(token: str) -> str:
    """The digest to put in STREAMPROC_INGEST_TOKEN_HASHES for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCheck:
    def __init__(self, digests: str | list[str]) -> None:
        items = digests.split(",") if isinstance(digests, str) else digests
        self.digests = [bytes.fromhex(d.strip()) for d in items if d.strip()] if items else []
        if any(len(d) != 32 for d in self.digests):
            raise ConfigError("ingest token hashes must be SHA-256 hex digests (64 hex digits each)")

    def allows(self, authorization: str | None) -> bool:
        """True if the Authorization header carries a bearer token whose digest is configured."""
        return self.caller(authorization) is not None

    def caller(self, authorization: str | None) -> str | None:
        """Who is calling: a short id of the bearer token (the first 16 hex digits of its digest) if its digest is
        configured, else None. It scopes what belongs to one caller, such as idempotency keys."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = hashlib.sha256(authorization[7:].strip().encode("utf-8", "surrogateescape")).digest()
        ok = False
        for digest in self.digests:  # compare with every digest, so timing doesn't tell which one matched
            ok |= hmac.compare_digest(presented, digest)
        return presented.hex()[:16] if ok else None
