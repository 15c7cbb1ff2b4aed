"""`python -m streamproc.demo` (what `make demo` runs) end to end: its own redis-server, a worker subprocess
through the `streamproc worker` command, sample traffic, progress lines, and a clean stop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from streamproc.localredis import LocalRedis, LocalRedisError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_bounded_demo_run_processes_events_and_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "streamproc.demo", "--seconds", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    processed = {group: int(n) for group, n in re.findall(r"^\s+(\S+)\s+processed=(\d+)", done.stdout, re.M)}
    assert set(processed) == {"feeds", "notifications", "social-graph"}, output
    assert all(n > 0 for n in processed.values()), output
    assert re.search(r"^final\s+published=\d+", done.stdout, re.M), output
    assert "stopped redis-server" in done.stdout, output


def test_local_redis_starts_answers_and_leaves_nothing_behind() -> None:
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
        directory = server.directory
        assert directory is not None and directory.exists()
    assert not server.running
    assert not directory.exists()


def test_local_redis_explains_a_missing_or_broken_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(LocalRedisError, match="apt-get install -y redis-server"):
        LocalRedis().start()
    with pytest.raises(LocalRedisError, match="did not start: exited with 1"):
        LocalRedis(binary="/bin/false").start()
