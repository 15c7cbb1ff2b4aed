"""`streamproc token-hash`: the digest of a bearer token, for STREAMPROC_INGEST_TOKEN_HASHES. A module of its own,
importing nothing heavy: hashing a token starts as fast as Python does."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from ..http.auth import token_digest
from .failures import UsageError


def cmd_token_hash(args: argparse.Namespace) -> int:
    """The digest to configure for a token read from stdin (a prompt without echo on a terminal). A token on the
    command line is refused: other users see it in `ps`, and the shell keeps it in its history."""
    if args.token is not None:
        raise UsageError("token-hash reads the token from stdin, not from the command line (other users see "
                         "arguments in ps, and shells keep them in their history): streamproc token-hash < FILE")
    token = _read_token()
    digest = token_digest(token)
    sys.stdout.write((json.dumps({"sha256": digest}, separators=(",", ":")) if args.json else digest) + "\n")
    return 0


def _read_token() -> str:
    try:
        raw = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.buffer.read().decode()
    except UnicodeDecodeError:
        raise UsageError("token-hash read a token that is not UTF-8 text from stdin") from None
    # The ingest strips a presented token, so surrounding whitespace (a file's newline) can never be part of one.
    token = raw.strip()
    if not token:
        raise UsageError("token-hash read an empty token from stdin")
    if "\n" in token or "\r" in token:
        raise UsageError("token-hash read more than one line from stdin: give one token per call")
    return token
