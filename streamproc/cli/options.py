"""Options that fall back to environment variables, and usage errors of one line.

Every option names its variables and its default in `--help`. The order is always: the flag, then its variables
(the first set one wins: `STREAMPROC_*` before a standard one such as `PORT` or `REDIS_URL`, as in Settings), then
the default. An option whose default is None leaves the value to the app's settings."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from ..settings import ENV_PREFIX

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")  # the words Settings accepts, so a variable means the same to both
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class EnvOption:
    """Where an option's value comes from when its flag is absent. `parse` turns a variable's text into a value."""

    dest: str
    names: tuple[str, ...]
    parse: Callable[[str], object]
    default: object


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, and whose options can be set by environment variables."""

    def __init__(self, *args: object, environ: Mapping[str, str] | None = None, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.env_options: list[EnvOption] = []
        self.environ = os.environ if environ is None else environ

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"streamproc: error: {message} (see `{self.prog} --help`)\n")

    # typeshed's overloads are generic in the namespace's class; streamproc only ever uses Namespace.
    def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        # Subcommands are parsed by their own parser's parse_known_args, so each fills in its own options.
        parsed, rest = super().parse_known_args(args, namespace)
        for option in self.env_options:
            if getattr(parsed, option.dest, None) is None:
                setattr(parsed, option.dest, self._from_env(option))
        return parsed, rest

    def _from_env(self, option: EnvOption) -> object:
        for name in option.names:
            raw = self.environ.get(name)
            # A standard variable set to "" is unset (as in Settings); a STREAMPROC_* one is parsed as given.
            if raw is None or (raw == "" and not name.startswith(ENV_PREFIX)):
                continue
            try:
                return option.parse(raw)
            except argparse.ArgumentTypeError as exc:
                self.error(f"environment variable {name}: {exc}")
        return option.default

    def option(self, *flags: str, help: str, env: Sequence[str], default: object = None, shown: str | None = None,
               parse: Callable[[str], object] | None = None, **kwargs: object) -> argparse.Action:
        """Add an option with variables `env` and `default`, shown in the help as `shown` (default: the value)."""
        if default is None and shown is None:
            raise ValueError(f"{flags[0]}: say in `shown` what an unset option means")  # never "default: None"
        kind = kwargs.get("type")
        parse = parse or (kind if callable(kind) else str)
        action = self.add_argument(*flags, default=None, help=f"{help}. {_where(default, shown, env)}",
                                   **kwargs)  # type: ignore[arg-type]
        self.env_options.append(EnvOption(action.dest, tuple(env), parse, default))
        return action

    def switch(self, *flags: str, help: str, env: Sequence[str], default: bool | None = False,
               shown: str | None = None) -> argparse.Action:
        """An on/off flag; its variable takes 1/true/yes/on or 0/false/no/off."""
        return self.option(*flags, help=help, env=env, default=default, parse=boolean, action="store_true",
                           shown=shown or ("off" if default is False else None))


def _where(default: object, shown: str | None, env: Sequence[str]) -> str:
    return f"Default: {shown if shown is not None else default}. Env: {', else '.join(env)}."


def env_name(flag: str) -> str:
    """The variable of a flag that maps onto no setting: --grace-period -> STREAMPROC_GRACE_PERIOD."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{raw!r} is not one of 1/true/yes/on or 0/false/no/off")


def whole(low: int, high: float = math.inf) -> Callable[[str], int]:
    """A whole number between low and high."""
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            allowed = f"at least {low}" if high == math.inf else f"between {low} and {high:g}"
            raise argparse.ArgumentTypeError(f"{raw!r} is out of range: must be {allowed}")
        return value
    parse.__name__ = "whole number"
    return parse


def seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{raw!r} is out of range: must be finite and not negative")
    return value


def port(raw: str) -> int:
    return whole(0, 65_535)(raw)


def log_level(raw: str) -> str:
    if raw.strip().upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    return raw.strip().upper()


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip().lower() not in choices:
            raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(choices)}")
        return raw.strip().lower()
    return parse


def names(raw: str) -> list[str]:
    """A comma-separated list (a repeatable flag's variable): "a, b" -> ["a", "b"]."""
    items = [item.strip() for item in raw.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a comma-separated list of names")
    return items


def text(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return raw.strip()


def redis_url(raw: str) -> str:
    """A URL Redis clients can connect to; mistakes in it are usage errors here, not connection errors later."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(f"{redacted(url)!r} is not a Redis URL: it must start with redis://, "
                                         "rediss:// or unix://")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked for it)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{redacted(url)!r} has an invalid port") from None
    if parts.scheme == "unix" and not parts.path:
        raise argparse.ArgumentTypeError(f"{redacted(url)!r} names no socket path")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise argparse.ArgumentTypeError(f"{redacted(url)!r}: the database (its path) must be a number")
    return url


def redacted(url: str) -> str:
    """The URL without its password: error messages and logs must not leak it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()

