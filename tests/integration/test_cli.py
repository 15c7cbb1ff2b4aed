"""The `streamproc` command as a user meets it: --version and --help, options from flags or the environment, usage
errors (exit 2) and runtime failures (exit 1) in one line, where the ingest listens, and token-hash."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc import Settings
from streamproc.cli import build_parser
from streamproc.http.auth import TokenCheck
from streamproc.version import __version__
from tests.helpers import wait_for
from tests.procapp import Work, make_app
from tests.redis_server import RedisServer, free_port
from tests.spawn import Spawned, spawning

ROOT = Path(__file__).resolve().parents[2]


def streamproc(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
               redis_url: str = "redis://127.0.0.1:1/0") -> subprocess.CompletedProcess[str]:
    """Run the command to completion. The default Redis URL points nowhere: usage errors must not need Redis."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    full_env = {**base, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "PROCAPP_NS": "clitest", **(env or {})}
    return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=30, check=False)


def assert_usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("streamproc: error:")]
    for word in words:
        assert word in line, line


BAD_APPS = [
    ("nosuch_module:app", "cannot import 'nosuch_module'"),
    ("tests.nosuch:app", "cannot import 'tests.nosuch'"),
    ("tests.procapp:nope", "has no attribute 'nope'"),
    ("tests.procapp:Work", "is not a streamproc App"),
    ("tests.procapp", "expected MODULE:ATTRIBUTE"),
]
# Every bad path with the supervisor; the --inline worker and `dlq list` load the app the same way.
CASES = [(("worker", path), message) for path, message in BAD_APPS] + [
    (("worker", path, "--inline"), message) for path, message in BAD_APPS[:3]] + [
    (("dlq", "list", path), message) for path, message in BAD_APPS[:3]]


@pytest.mark.parametrize(("args", "message"), CASES)
def test_a_bad_app_path_is_a_usage_error(args: tuple[str, ...], message: str) -> None:
    assert_usage_error(streamproc(*args), message)


@pytest.mark.parametrize("inline", [False, True])
def test_an_unknown_group_is_a_usage_error(inline: bool) -> None:
    done = streamproc("worker", "tests.procapp:app", "--group", "work", "--group", "nosuch",
                      *(["--inline"] if inline else []))
    assert_usage_error(done, "nosuch", "known:", "'work'")


def test_a_bad_setting_is_a_usage_error() -> None:
    done = streamproc("worker", "tests.procapp:app", "--inline", env={"STREAMPROC_LEASE_MS": "soon"})
    assert_usage_error(done, "STREAMPROC_LEASE_MS", "not a number")


def test_an_import_error_inside_the_app_keeps_its_traceback(tmp_path: Path) -> None:
    """Only a module path that does not exist is a usage error; a broken app module is a bug to show in full."""
    (tmp_path / "brokenapp.py").write_text("import nosuch_dependency_of_the_app\n")
    done = streamproc("worker", "brokenapp:app", "--inline", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "nosuch_dependency_of_the_app" in done.stderr


def test_dlq_list_of_an_empty_app(redis_url: str, ns: str) -> None:
    env = {"PROCAPP_NS": ns}
    listed = streamproc("dlq", "list", "tests.procapp:app", "--json", redis_url=redis_url, env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    table = streamproc("dlq", "list", "tests.procapp:app", "--group", "work", redis_url=redis_url, env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == "0 dead-lettered entries"


# --- Conventions: --version, help, variables, usage errors, runtime failures, binding, token-hash ----------------

TOP_LEVEL_ONLY = {"-h", "--help", "--version"}


def commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command path with its parser, walked from the real parser."""
    found: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = []

    def visit(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        found.append((path, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    visit((*path, name), sub)

    visit((), build_parser({}))
    return found


def help_blocks(text: str) -> dict[str, str]:
    """Option string -> its help text (whitespace normalised), read from `--help` output."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        started = re.match(r"^  (-[-\w]+)", line)
        if started:
            current = started.group(1)
            blocks[current] = line
        elif current is not None and line.startswith("    "):
            blocks[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_version() -> None:
    """Both ways in: `python -m streamproc` and the installed entry point."""
    entry_point = Path(sys.executable).with_name("streamproc")
    for argv in ([sys.executable, "-m", "streamproc", "--version"], [str(entry_point), "--version"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"streamproc {__version__}\n", "")


def test_help_runs_as_a_command() -> None:
    """One --help through a real process (the walk below formats each parser's help in-process)."""
    done = streamproc("--help", env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: streamproc")
    for name in ("worker", "ingest", "dev", "token-hash", "dlq", "groups", "schedules"):
        assert name in done.stdout


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["token-hash"], ["worker", "--help"]])
def test_light_commands_import_nothing_heavy(argv: list[str]) -> None:
    """--version, --help and token-hash start fast: they import neither redis-py, aiohttp nor the App (each
    command's module is imported when it runs, and streamproc's names when first used)."""
    script = f"""
import contextlib, io, sys
from streamproc.cli import main
sys.stdin = io.TextIOWrapper(io.BytesIO(b"a-token\\n"))
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
    main({argv!r}, environ={{}})
print(sorted(m for m in ("redis", "aiohttp", "streamproc.app", "opentelemetry.trace")
             if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


def test_help_shows_the_default_and_variables_of_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help to the terminal's width
    paths = commands()
    assert sorted(" ".join(p) for p, _ in paths) == sorted([
        "", "worker", "ingest", "dev", "token-hash", "dlq", "dlq list", "groups", "groups list",
        "groups delete-orphans", "schedules", "schedules list", "schedules pause", "schedules resume",
        "schedules trigger"])
    checked = 0
    for path, parser in paths:
        blocks = help_blocks(parser.format_help())
        env_of = {o.dest: o.names for o in getattr(parser, "env_options", [])}
        for action in parser._actions:
            if not action.option_strings or action.option_strings[0] in TOP_LEVEL_ONLY:
                continue
            flag = action.option_strings[0]
            block = blocks[flag]
            assert "Default: " in block and "Default: None" not in block, (path, block)
            names = env_of.get(action.dest, ("STREAMPROC_DEBUG",) if flag == "--debug" else ())
            if flag == "--yes":  # a deletion is confirmed on the command line, never by the environment
                assert "No variable" in block
            else:
                assert names and f"Env: {', else '.join(names)}." in block, (path, block)
            checked += 1
    # --debug on top and on each of the 14 subcommand parsers, and 55 others (56 with --yes)
    assert checked == 70


def test_a_flag_that_sets_a_setting_uses_that_settings_variable() -> None:
    """One name per thing: --grace-period is STREAMPROC_GRACE_PERIOD_S, as in Settings; the other variables are
    no setting's, so Settings never reads them by accident."""
    settings_vars = {"STREAMPROC_" + f.name.upper(): f.name for f in dataclasses.fields(Settings)}
    mapped = {"redis_url": "STREAMPROC_REDIS_URL", "grace_period": "STREAMPROC_GRACE_PERIOD_S",
              "metrics_port": "STREAMPROC_METRICS_PORT", "no_auth": "STREAMPROC_INGEST_AUTH_DISABLED",
              "processes": "STREAMPROC_PROCESSES"}
    seen = 0
    for _, parser in commands():
        for option in getattr(parser, "env_options", []):
            own = [n for n in option.names if n.startswith("STREAMPROC_")]
            if option.dest in mapped and own != ["STREAMPROC_DEV_REDIS_URL"]:
                assert own == [mapped[option.dest]], option
            else:
                assert not set(own) & set(settings_vars), option
            seen += 1
    assert seen == 55  # every option but --help, --version, the subcommands' --debug (the top one's) and --yes


USAGE_ERRORS = [
    (("worker", "tests.procapp:app", "--processes", "abc"), {}, ["--processes", "'abc' is not a whole number"]),
    (("worker", "tests.procapp:app", "--processes", "-1"), {}, ["--processes", "at least 0"]),
    (("worker", "tests.procapp:app"), {"STREAMPROC_PROCESSES": "abc"}, ["STREAMPROC_PROCESSES", "'abc'"]),
    (("worker", "tests.procapp:app"), {"STREAMPROC_GRACE_PERIOD_S": "nan"}, ["STREAMPROC_GRACE_PERIOD_S"]),
    (("worker", "tests.procapp:app"), {"STREAMPROC_INLINE": "maybe"}, ["STREAMPROC_INLINE", "'maybe'"]),
    (("worker", "tests.procapp:app"), {"STREAMPROC_GROUP": "work,,fail"}, ["STREAMPROC_GROUP"]),
    (("worker", "tests.procapp:app", "--log-level", "loud"), {}, ["--log-level", "DEBUG, INFO"]),
    (("worker", "tests.procapp:app"), {"STREAMPROC_LOG_FORMAT": "xml"}, ["STREAMPROC_LOG_FORMAT", "text, json"]),
    (("ingest", "tests.procapp:app", "--port", "70000"), {}, ["--port", "between 0 and 65535"]),
    (("ingest", "tests.procapp:app"), {"PORT": "http"}, ["environment variable PORT", "'http'"]),
    (("dlq", "list", "tests.procapp:app", "--redis-url", "http://x"), {}, ["--redis-url", "not a Redis URL"]),
    (("dlq", "list", "tests.procapp:app"), {"REDIS_URL": "redis://:pw@h:abc/0"}, ["REDIS_URL", "invalid port"]),
    (("dlq", "list", "tests.procapp:app", "--limit", "0"), {}, ["--limit", "at least 1"]),
    (("dlq", "list", "tests.procapp:app", "--group", "nosuch"), {}, ["nosuch", "known:"]),
    (("groups", "list", "tests.procapp:app", "--undeclared-for", "-5"), {}, ["--undeclared-for", "negative"]),
    (("worker",), {}, ["MODULE:ATTR"]),
    ((), {}, ["COMMAND"]),
    (("frobnicate",), {}, ["frobnicate"]),
    (("token-hash", "s3cret"), {}, ["from stdin, not from the command line"]),
]


@pytest.mark.parametrize(("args", "env", "words"), USAGE_ERRORS, ids=[" ".join(a[:3]) + "|" + ",".join(e)
                                                                       for a, e, _ in USAGE_ERRORS])
def test_an_invalid_value_is_a_usage_error_of_one_line(args: tuple[str, ...], env: dict[str, str],
                                                       words: list[str]) -> None:
    done = streamproc(*args, env=env)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("streamproc: error: "), line
    for word in words:
        assert word in line, line
    assert "pw" not in line and "s3cret" not in line


def test_a_flag_wins_over_its_variable_which_is_then_not_even_read() -> None:
    """STREAMPROC_CONCURRENCY=abc would be refused, but --concurrency overrides it: the error is the app path's.
    (A setting's variable, such as STREAMPROC_PROCESSES, is still read by the app's Settings.from_env.)"""
    done = streamproc("worker", "tests.procapp:nope", "--concurrency", "1", env={"STREAMPROC_CONCURRENCY": "abc"})
    assert_usage_error(done, "has no attribute 'nope'")


def test_the_redis_url_comes_from_the_flag_then_streamproc_redis_url_then_redis_url(redis_url: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    args = ("dlq", "list", "tests.procapp:app", "--json")
    assert streamproc(*args, redis_url=redis_url).returncode == 0  # REDIS_URL
    refused = streamproc(*args, redis_url=redis_url, env={"STREAMPROC_REDIS_URL": closed})
    assert refused.returncode == 1 and closed in refused.stderr, refused.stderr  # STREAMPROC_REDIS_URL over it
    flagged = streamproc(*args, "--redis-url", redis_url, redis_url=closed, env={"STREAMPROC_REDIS_URL": closed})
    assert flagged.returncode == 0, flagged.stderr  # the flag over both


@pytest.mark.parametrize("command", [("dlq", "list"), ("groups", "list"), ("groups", "delete-orphans", "--yes")])
@pytest.mark.parametrize("debug", ["", "--debug before", "--debug after", "STREAMPROC_DEBUG"])
def test_an_unreachable_redis_is_one_line_and_exit_1(command: tuple[str, ...], debug: str) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    args = [*command[:2], "tests.procapp:app", *command[2:]]
    if debug == "--debug before":
        args.insert(0, "--debug")
    elif debug == "--debug after":
        args.append("--debug")
    done = streamproc(*args, redis_url=url, env={"STREAMPROC_DEBUG": "1"} if debug == "STREAMPROC_DEBUG" else {})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].startswith(f"streamproc: error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert "hunter2" not in done.stderr, "the password leaked"
    if debug:
        assert "Traceback" in done.stderr and "ConnectionError" in done.stderr
    else:
        assert len(lines) == 1, done.stderr


def test_a_misspelt_variable_is_named_in_a_warning() -> None:
    """Settings ignores STREAMPROC_* names it does not know; the command says so instead of ignoring silently."""
    done = streamproc("dlq", "list", "tests.procapp:app", env={"STREAMPROC_GRACE_PERIOD": "3"},
                      redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert "ignoring environment variable STREAMPROC_GRACE_PERIOD" in done.stderr
    assert "did you mean STREAMPROC_GRACE_PERIOD_S?" in done.stderr


def token_digest_of(stdin: bytes, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return subprocess.run([sys.executable, "-m", "streamproc", "token-hash", *args], input=stdin.decode(),
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.parametrize("stdin", [b"s3cret", b"s3cret\n", b"s3cret\r\n", b"  s3cret \n"])
def test_token_hash_reads_the_token_from_stdin(stdin: bytes) -> None:
    done = token_digest_of(stdin)
    assert (done.returncode, done.stderr) == (0, "")
    digest = done.stdout.strip()
    assert digest == hashlib.sha256(b"s3cret").hexdigest()
    assert TokenCheck(digest).allows("Bearer s3cret")  # the digest the ingest accepts for that token
    as_json = token_digest_of(stdin, "--json")
    assert json.loads(as_json.stdout) == {"sha256": digest}
    assert json.loads(token_digest_of(stdin, env={"STREAMPROC_JSON": "1"}).stdout) == {"sha256": digest}


@pytest.mark.parametrize(("stdin", "word"), [(b"", "empty"), (b" \n", "empty"), (b"a\nb\n", "more than one line"),
                                             (b"\xff\xfe", "not UTF-8")])
def test_token_hash_refuses_what_is_not_one_token(stdin: bytes, word: str) -> None:
    done = subprocess.run([sys.executable, "-m", "streamproc", "token-hash"], input=stdin, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30, check=False)
    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("streamproc: error: ") and word in line, line


def listening_sockets(port: int) -> list[str]:
    """The IPv4 addresses listening on `port`, from /proc/net/tcp (state 0A is LISTEN)."""
    found = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    yield from spawning()


DIGEST = hashlib.sha256(b"t").hexdigest()
# (flags, variables, where it must listen); "P1".."P3" stand for free ports.
BINDINGS = [
    (["--no-auth"], {"PORT": "P1"}, ("127.0.0.1", "P1")),
    (["--no-auth"], {"PORT": "P1", "STREAMPROC_PORT": "P2"}, ("127.0.0.1", "P2")),
    (["--no-auth", "--port", "P3"], {"PORT": "P1", "STREAMPROC_PORT": "P2"}, ("127.0.0.1", "P3")),
    ([], {"STREAMPROC_INGEST_AUTH_DISABLED": "yes", "PORT": "P1"}, ("127.0.0.1", "P1")),
    (["--no-auth", "--host", "127.0.0.1"], {"STREAMPROC_HOST": "0.0.0.0", "PORT": "P1"}, ("127.0.0.1", "P1")),
    (["--no-auth"], {"STREAMPROC_HOST": "0.0.0.0", "PORT": "P1"}, ("0.0.0.0", "P1")),
    ([], {"STREAMPROC_INGEST_TOKEN_HASHES": DIGEST, "PORT": "P1"}, ("0.0.0.0", "P1")),
]


@pytest.mark.parametrize(("flags", "variables", "where"), BINDINGS)
async def test_the_ingest_listens_where_flags_then_variables_say(
        spawned: Spawned, flags: list[str], variables: dict[str, str], where: tuple[str, str]) -> None:
    """--no-auth (or its variable) listens on 127.0.0.1 unless a host is given; --port over STREAMPROC_PORT over
    PORT. Redis is down: the ingest serves anyway (/readyz says not ready), as workers wait outages out."""
    ports = {f"P{i}": str(free_port()) for i in (1, 2, 3)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_") and k != "PORT"}
    env.update({"PYTHONPATH": str(ROOT), "PROCAPP_NS": "clitest", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    env.update({k: ports.get(v, v) for k, v in variables.items()})
    host, port = where[0], int(ports[where[1]])
    proc = spawned.streamproc("ingest", "tests.procapp:app", *[ports.get(f, f) for f in flags], env=env)

    def listening_line() -> str | None:
        assert proc.poll() is None, spawned.output(proc)
        found = re.search(r"ingest listening on http://(\S+)", spawned.output(proc))
        return found.group(1) if found else None

    assert await wait_for(listening_line, timeout=20) == f"{host}:{port}"
    assert listening_sockets(port) == [host]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # loopback reaches both 127.0.0.1 and 0.0.0.0
    loopback_only = "authentication is off: listening on 127.0.0.1 only" in spawned.output(proc)
    assert loopback_only == (host == "127.0.0.1" and "--host" not in flags)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, spawned.output(proc)


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = streamproc("ingest", "tests.procapp:app", "--no-auth", "--port", str(port), "--log-level", "ERROR",
                          redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"streamproc: error: cannot listen on 127.0.0.1:{port}: ") and "in use" in line, line


async def test_a_worker_started_while_redis_is_down_waits_for_it(spawned: Spawned, ns: str) -> None:
    """A long-running worker does not exit for an outage, at start either: it works once Redis comes up."""
    server = RedisServer()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update({"PYTHONPATH": str(ROOT), "PROCAPP_NS": ns, "REDIS_URL": server.url, "STREAMPROC_BLOCK_MS": "50"})
    proc = spawned.streamproc("worker", "tests.procapp:app", "--group", "work", "--processes", "1", env=env)
    await wait_for(lambda: "could not check the Redis server at start" in spawned.output(proc), timeout=20)
    await wait_for(lambda: "started worker process" in spawned.output(proc), timeout=20)
    with server:
        app = make_app(ns, Settings(redis_url=server.url))
        try:
            [published] = await app.publish_many([Work(n=1)])
            done = await wait_for(lambda: app.redis.smembers(f"{ns}:done"), timeout=30)
            assert done == {published.event_id.encode()}
            assert await app.redis.hgetall(f"{ns}:runs") == {published.event_id.encode(): b"1"}
        finally:
            await app.aclose()
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, spawned.output(proc)


@pytest.mark.parametrize(("flags", "variable", "expected"), [([], "2", 2), (["--processes", "1"], "2", 1)])
async def test_processes_come_from_the_flag_then_the_variable(spawned: Spawned, flags: list[str], variable: str,
                                                              expected: int) -> None:
    """Counted: the supervisor starts exactly that many children (Redis is down, so they wait and never die)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update({"PYTHONPATH": str(ROOT), "PROCAPP_NS": "clitest", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                "STREAMPROC_PROCESSES": variable})
    proc = spawned.streamproc("worker", "tests.procapp:app", "--group", "work", *flags, env=env)

    def children_waiting() -> set[str]:
        assert proc.poll() is None, spawned.output(proc)
        return set(re.findall(r"\[(\d+)\] streamproc\.worker\.loops: checking the Redis server", spawned.output(proc)))

    await wait_for(lambda: len(children_waiting()) >= expected, timeout=30)
    assert len(children_waiting()) == expected
    assert spawned.output(proc).count("started worker process") == expected
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, spawned.output(proc)
