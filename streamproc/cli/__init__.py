"""The `streamproc` command, the application's edge: the environment is read here, once (the options' variables
by the parser, the settings by Settings.from_env), and what it says is passed down.

    parser.py    the command tree: subcommands, options, their variables and defaults
    options.py   options that fall back to variables; one-line usage errors; value types
    failures.py  exit statuses, and failures said in one line (the traceback only with --debug)
    serve.py     worker and ingest;  inspect.py  dlq, groups;  token.py  token-hash;  dev: devtools/dev.py
    schedules.py schedules list, pause, resume, trigger

A command's module is imported only when it runs (COMMANDS names it): --version, --help and token-hash do not
import redis-py, aiohttp and the App.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from ..settings import ENV_PREFIX
from .failures import run
from .parser import build_parser, variables

__all__ = ["build_parser", "main"]

log = logging.getLogger("streamproc.cli")
# Each command's module and function, imported when the command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("streamproc.cli.serve", "cmd_worker"), "ingest": ("streamproc.cli.serve", "cmd_ingest"),
    "dev": ("streamproc.devtools.dev", "cmd_dev"), "token-hash": ("streamproc.cli.token", "cmd_token_hash"),
    "dlq": ("streamproc.cli.inspect", "cmd_dlq_list"), "groups": ("streamproc.cli.inspect", "cmd_groups"),
    "schedules": ("streamproc.cli.schedules", "cmd_schedules")}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    module, function = COMMANDS[name]
    return cast(Callable[[argparse.Namespace], int], getattr(importlib.import_module(module), function))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.command != "token-hash":
        from ..observe.logs import configure_logging  # here: it imports OpenTelemetry, which token-hash needs not

        configure_logging(args.log_level, args.log_format)
        _warn_unknown(variables(parser), environ)
    return run(lambda: command(args.command)(args), debug=args.debug)


def _warn_unknown(known: set[str], environ: Mapping[str, str]) -> None:
    """Settings ignores STREAMPROC_* names it does not know, so a misspelt one would change nothing, silently."""
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        log.warning("ignoring environment variable %s: no setting or option reads it%s", name,
                    f" (did you mean {close[0]}?)" if close else "")
