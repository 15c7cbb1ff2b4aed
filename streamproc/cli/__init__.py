"""The `streamproc` command, the application's edge: the environment is read here, once (the options' variables
by the parser, the settings by Settings.from_env), and what it says is passed down.

    parser.py    the command tree: subcommands, options, their variables and defaults
    options.py   options that fall back to variables; one-line usage errors; value types
    failures.py  exit statuses, and failures said in one line (the traceback only with --debug)
    serve.py     worker and ingest;  inspect.py  dlq, groups, token-hash;  dev: devtools/dev.py
    schedules.py schedules list, pause, resume, trigger
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections.abc import Callable, Mapping, Sequence

from ..devtools.dev import cmd_dev
from ..observe.logs import configure_logging
from ..settings import ENV_PREFIX
from .failures import run
from .inspect import cmd_dlq_list, cmd_groups, cmd_token_hash
from .parser import build_parser, variables
from .schedules import cmd_schedules
from .serve import cmd_ingest, cmd_worker

__all__ = ["build_parser", "main"]

log = logging.getLogger("streamproc.cli")
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": cmd_worker, "ingest": cmd_ingest, "dev": cmd_dev, "token-hash": cmd_token_hash, "dlq": cmd_dlq_list,
    "groups": cmd_groups, "schedules": cmd_schedules}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.command != "token-hash":
        configure_logging(args.log_level, args.log_format)
        _warn_unknown(variables(parser), environ)
    return run(lambda: COMMANDS[args.command](args), debug=args.debug)


def _warn_unknown(known: set[str], environ: Mapping[str, str]) -> None:
    """Settings ignores STREAMPROC_* names it does not know, so a misspelt one would change nothing, silently."""
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        log.warning("ignoring environment variable %s: no setting or option reads it%s", name,
                    f" (did you mean {close[0]}?)" if close else "")
