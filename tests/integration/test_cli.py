"""The `streamproc` command's handling of mistakes: usage errors exit 2 with one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
