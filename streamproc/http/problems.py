"""RFC 9457 problem details: every error the ingest answers, its documented type URI, and JSON Pointers (RFC 6901).

A problem the ingest raises has a type of its own, listed in PROBLEM_TYPES and in the README's "Problem types"
table, whose anchors the type URIs point to. Errors that only repeat an HTTP status (aiohttp's 404 and 405, a
request its HTTP parser refuses, a 500) have the type RFC 9457 defines for that, "about:blank", with the status
phrase as title.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

# Where the problem types are documented: the README's "Problem types" section, one anchor per type
# (`#problem-<slug>`). A locator the project publishes, so a developer who sees a type can read what it means.
PROBLEM_DOCS = "https://github.com/streamproc/streamproc/blob/main/README.md"
BLANK = "about:blank"  # RFC 9457 4.2.1: no meaning beyond the HTTP status

# Every problem type of the ingest, by slug (the lower-cased, hyphenated title): its status and meaning.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "malformed-body": (400, "The body is not valid JSON or msgpack, or nests too deeply to decode at all"),
    "unauthorized": (401, "No bearer token, or one whose digest is not configured"),
    "request-timeout": (408, "The body did not arrive within `ingest_body_timeout_ms`; the connection is closed"),
    "payload-too-large": (413, "The body is over `ingest_max_body_bytes`"),
    "too-many-events": (413, "The request holds more than `ingest_max_batch` events"),
    "unsupported-media-type": (415, "The content type is neither `application/json` nor `application/msgpack`"),
    "invalid-events": (422, "One or more events are invalid: `errors` names each, with its index, path, JSON "
                            "Pointer and message; nothing was appended"),
    "idempotency-key-reused": (422, "The `Idempotency-Key` came before with a different body; nothing was "
                                    "appended"),
    "backlog-full": (429, "A stream the request writes to is over its backlog limit; retry after `Retry-After`"),
    "redis-unavailable": (503, "Redis did not answer; retry after `Retry-After`"),
    "too-many-connections": (503, "The server is at `ingest_max_connections`; retry after `Retry-After`"),
    "not-ready": (503, "`/readyz`: Redis does not answer, or the app's consumer groups could not be created"),
}


def problem_type(slug: str) -> str:
    return f"{PROBLEM_DOCS}#problem-{slug}"


@dataclass
class Problem(Exception):
    """An RFC 9457 problem: the HTTP status, a short title, the detail, and per-item errors. A title whose slug is
    in PROBLEM_TYPES gives the problem that type; any other title must be the status phrase (type about:blank)."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # answer, then close the connection (e.g. a body that stopped arriving)

    def __post_init__(self) -> None:
        slug = self.slug
        if slug in PROBLEM_TYPES:
            assert PROBLEM_TYPES[slug][0] == self.status, f"{slug} is documented as {PROBLEM_TYPES[slug][0]}"
        else:
            assert self.title == status_phrase(self.status), f"undocumented problem type {slug!r}"

    @property
    def slug(self) -> str:
        return self.title.lower().replace(" ", "-")

    @property
    def type(self) -> str:
        return problem_type(self.slug) if self.slug in PROBLEM_TYPES else BLANK

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if self.errors:
            out["errors"] = self.errors
        return out


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_pointer(tokens: Iterable[str | int]) -> str:
    """The RFC 6901 pointer to a value: `/0/card_id`; "~" and "/" inside a key are escaped as "~0" and "~1"."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)
