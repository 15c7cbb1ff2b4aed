"""The command tree of `streamproc`: every subcommand, its options, their variables and defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping

from ..settings import ENV_PREFIX, Settings
from ..topology import ORPHAN_AFTER_MS
from ..version import __version__
from .options import LOG_LEVELS, Parser, log_level, names, one_of, port, redis_url, seconds, text, whole

EPILOG = """\
Every option can also be set by the environment variable named in its help:
the flag wins over the variable, the variable over the default.

Exit status: 0 done; 1 a runtime failure (Redis unreachable, a port in use);
2 a usage error (a bad flag or variable, MODULE:ATTR, group or setting, or a
Redis server streamproc refuses); 130 interrupted.
"""
_DEFAULTS = Settings()
Subcommands = argparse._SubParsersAction  # argparse's own name for add_subparsers' result


def build_parser(environ: Mapping[str, str] | None = None) -> Parser:
    """The whole command line; `environ` (default os.environ) is where options' variables are read."""
    parser = Parser(prog="streamproc", description="Event stream processing on Redis Streams.", epilog=EPILOG,
                    environ=environ)
    parser.add_argument("--version", action="version", version=f"streamproc {__version__}")
    parser.switch("--debug", help="show the traceback of a failure", env=["STREAMPROC_DEBUG"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _worker(_command(commands, "worker", "run worker processes for the app's handler groups", parser.environ))
    _ingest(_command(commands, "ingest", "serve the HTTP ingest endpoint", parser.environ))
    _dev(_command(commands, "dev", "local Redis + ingest + workers (+ the app's dev services) in one command",
                  parser.environ))
    _token_hash(_command(commands, "token-hash", "print the SHA-256 digest of an ingest token (read from stdin)",
                         parser.environ))
    dlq = _command(commands, "dlq", "inspect dead-lettered entries", parser.environ)
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND", parser_class=Parser)
    _dlq_list(_command(dlq_commands, "list", "list dead-lettered entries", parser.environ))
    groups = _command(commands, "groups", "list the consumer groups of the app's streams; delete orphans",
                      parser.environ)
    groups_commands = groups.add_subparsers(dest="groups_command", required=True, metavar="COMMAND",
                                            parser_class=Parser)
    _groups(_command(groups_commands, "list", "list every group per stream, marking those no app declares "
                                              "(orphans)", parser.environ), delete=False)
    _groups(_command(groups_commands, "delete-orphans", "delete the orphan groups and their retry bookkeeping "
                                                        "(needs --yes)", parser.environ), delete=True)
    _schedules(_command(commands, "schedules", "list the app's cron schedules; pause, resume or trigger one",
                        parser.environ))
    return parser


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from walk(sub)


def variables(parser: Parser) -> set[str]:
    """Every environment variable the command line or Settings reads with the STREAMPROC_ prefix."""
    found = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    for sub in walk(parser):
        if isinstance(sub, Parser):
            found.update(name for option in sub.env_options for name in option.names if name.startswith(ENV_PREFIX))
    return found


def _command(commands: Subcommands[Parser], name: str, help: str, environ: Mapping[str, str]) -> Parser:
    sub = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=EPILOG,
                              environ=environ)
    # Also after the subcommand (`streamproc worker APP --debug`); SUPPRESS keeps an absent one from overwriting
    # the top-level value, which the top-level parser resolves (with its variable) once everything is parsed.
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show the traceback of a failure. Default: off. Env: STREAMPROC_DEBUG.")
    return sub


def _app(p: Parser) -> None:
    p.add_argument("app", metavar="MODULE:ATTR", help="the streamproc App, e.g. handlers.app:app")


def _logging(p: Parser) -> None:
    p.option("--log-level", type=log_level, metavar="LEVEL", default="INFO", env=["STREAMPROC_LOG_LEVEL"],
             help=f"log this and more severe: {', '.join(LOG_LEVELS)}")
    p.option("--log-format", type=one_of("text", "json"), metavar="text|json", default="text",
             env=["STREAMPROC_LOG_FORMAT"], help="text for people, JSON lines for log shippers")


def _common(p: Parser) -> None:
    """MODULE:ATTR, the Redis and logging: what every command that loads the app takes."""
    _app(p)
    p.option("--redis-url", type=redis_url, metavar="URL", env=["STREAMPROC_REDIS_URL", "REDIS_URL"],
             shown=f"the app's redis_url setting, {_DEFAULTS.redis_url} unless set", help="the Redis to use")
    _logging(p)


def _json(p: Parser, instead: str) -> None:
    p.switch("--json", env=["STREAMPROC_JSON"], help=f"print JSON instead of {instead}")


def _worker(p: Parser) -> None:
    _common(p)
    p.option("--group", action="append", type=text, metavar="GROUP", parse=names, env=["STREAMPROC_GROUP"],
             shown="every group of the app", help="run only this group (repeatable; in the variable: comma-separated)")
    p.option("--processes", type=whole(0), metavar="N", env=["STREAMPROC_PROCESSES"],
             shown=f"the app's processes setting, else the CPU count ({os.cpu_count() or 1} here)",
             help="worker processes (0: one per CPU)")
    p.option("--concurrency", type=whole(1), metavar="N", env=["STREAMPROC_CONCURRENCY"],
             shown="each handler's own", help="handlers running at once per group")
    p.option("--grace-period", type=seconds, metavar="SECONDS", env=["STREAMPROC_GRACE_PERIOD_S"],
             shown=f"the app's grace_period_s setting, {_DEFAULTS.grace_period_s:g} unless set",
             help="on stop, how long in-flight handlers may finish")
    p.switch("--inline", env=["STREAMPROC_INLINE"], help="run one worker in this process, without a supervisor")
    p.option("--metrics-port", type=port, metavar="PORT", env=["STREAMPROC_METRICS_PORT"],
             shown=f"the app's metrics_port setting, {_DEFAULTS.metrics_port} (none) unless set",
             help="serve Prometheus /metrics on this port (0: no endpoint)")


def _ingest(p: Parser) -> None:
    _common(p)
    p.option("--host", type=text, env=["STREAMPROC_HOST"], shown="0.0.0.0, or 127.0.0.1 when authentication is off",
             help="the address to listen on")
    # PORT is what Fly.io and Heroku set; a variable of streamproc's own is more specific, so it wins.
    p.option("--port", type=port, default=8080, env=["STREAMPROC_PORT", "PORT"],
             help="the port to listen on (0: any free one, logged)")
    p.switch("--no-auth", env=["STREAMPROC_INGEST_AUTH_DISABLED"], default=None,
             shown="the app's ingest_auth_disabled setting, off unless set",
             help="turn authentication off, for local development only: then the ingest listens on 127.0.0.1 "
                  "unless --host says otherwise")


def _dev(p: Parser) -> None:
    _app(p)
    # Not REDIS_URL: dev's point is a Redis of its own, and one exported for other work must not get dev's traffic.
    p.option("--redis-url", type=redis_url, metavar="URL", env=["STREAMPROC_DEV_REDIS_URL"],
             shown="a throwaway local redis-server, started and stopped with dev",
             help="use this Redis instead of starting one")
    p.option("--port", type=port, default=8080, env=["STREAMPROC_PORT"], help="ingest port (on 127.0.0.1)")
    p.option("--processes", type=whole(0), default=1, env=["STREAMPROC_PROCESSES"], metavar="N",
             help="worker processes (0: one per CPU)")
    p.option("--metrics-port", type=whole(1, 65_535), default=9100, env=["STREAMPROC_METRICS_PORT"], metavar="PORT",
             help="the workers' Prometheus /metrics port")
    _logging(p)


def _token_hash(p: Parser) -> None:
    p.add_argument("token", nargs="?", metavar="TOKEN", help=argparse.SUPPRESS)  # only to refuse it clearly
    _json(p, "the bare digest")


def _dlq_list(p: Parser) -> None:
    _common(p)
    p.option("--group", action="append", type=text, metavar="GROUP", parse=names, env=["STREAMPROC_GROUP"],
             shown="every group of the app", help="only this group (repeatable; in the variable: comma-separated)")
    p.option("--limit", type=whole(1), default=1000, env=["STREAMPROC_LIMIT"], metavar="N",
             help="at most this many entries per dead-letter stream")
    _json(p, "a table")


def _schedules(p: Parser) -> None:
    commands = p.add_subparsers(dest="schedules_command", required=True, metavar="COMMAND", parser_class=Parser)
    listing = _command(commands, "list", "list every schedule: its expression or interval, time zone, next fire, "
                                         "last fired tick and event id, and whether it is paused", p.environ)
    _common(listing)
    _json(listing, "a table")
    for name, help in (("pause", "pause a schedule in every worker process (within a second); its ticks are not "
                                 "caught up later"),
                       ("resume", "resume a paused schedule from its next tick (the paused ones are not caught up)"),
                       ("trigger", "fire a schedule once now, paused or not (event ids cron:NAME:trigger:MOMENT, "
                                   "never deduplicated against a tick)")):
        sub = _command(commands, name, help, p.environ)
        _common(sub)
        sub.add_argument("name", metavar="NAME", help="the schedule's name (see `schedules list`)")
        _json(sub, "a line")


def _groups(p: Parser, delete: bool) -> None:
    _common(p)
    _json(p, "a table")
    p.option("--undeclared-for", type=seconds, metavar="SECONDS", default=ORPHAN_AFTER_MS / 1000,
             shown=f"{ORPHAN_AFTER_MS // 1000} (7 days)", env=["STREAMPROC_UNDECLARED_FOR"],
             help="a group no process declared for this long is an orphan")
    if delete:
        p.add_argument("--yes", action="store_true",
                       help="really delete them. Default: only list them and exit 2. No variable: a deletion is "
                            "asked for on the command line.")
