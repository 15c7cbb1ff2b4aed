"""The results file: a header (date, commit, machine, command), the targets, and one section per scenario.

Each scenario's section is delimited by HTML comments and carries its target checks as JSON, so a later run of
only some scenarios (e.g. `--scenario peers`) replaces those sections and keeps the others, and the targets table
is rebuilt from every section present.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import msgspec

from bench.context import Bench
from bench.report import Check, Section, table

ORDER = ["publish", "drain", "latency", "ingest", "fanout", "soak", "peers"]
_SECTION = re.compile(r"<!-- bench:section (\w+) -->\n(.*?)<!-- bench:end \1 -->\n", re.S)
_CHECKS = re.compile(r"<!-- bench:checks (.*?) -->")


@dataclass(frozen=True, slots=True)
class Header:
    date: str
    commit: str
    command: str
    machine: list[str]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> str:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _redis_version(binary: str | None) -> str:
    try:
        text = subprocess.run([binary or "redis-server", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    found = re.search(r"v=(\S+)", text)
    return found.group(1) if found else text.strip()


def _versions(*names: str) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} (missing)")
    return ", ".join(out)


def machine_header(bench: Bench, argv: list[str]) -> Header:
    commit = _git("rev-parse", "--short", "HEAD") or "?"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    machine = [
        f"{os.cpu_count()} cores ({_cpu_model()}), {_memory_gib()} memory, {platform.system()} "
        f"{platform.release()}",
        f"Python {platform.python_version()}; Redis {_redis_version(bench.redis_binary)}; "
        + _versions("redis", "hiredis", "uvloop", "msgspec", "aiohttp"),
    ]
    mode = "smoke (tiny sizes: completion check only, not speed)" if bench.smoke else f"full, {bench.runs} runs"
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Header(date, commit, f"`{' '.join(argv)}` — {mode}", machine)


def _render(section: Section, header: Header) -> str:
    checks = msgspec.json.encode([{"target": c.target, "measured": c.measured, "met": c.met}
                                  for c in section.checks]).decode()
    body = [f"## {section.title}", "", f"_Measured {header.date}, commit {header.commit}, {header.command}._", "",
            *section.lines, f"<!-- bench:checks {checks} -->", ""]
    return "\n".join(body) + "\n"


def _checks(rendered: str) -> list[Check]:
    found = _CHECKS.search(rendered)
    if not found:
        return []
    return [Check(c["target"], c["measured"], c["met"]) for c in msgspec.json.decode(found.group(1))]


def _met(value: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[value]


def write_results(out: Path, header: Header, sections: list[Section]) -> None:
    kept = dict(_SECTION.findall(out.read_text())) if out.exists() else {}
    kept.update({s.key: _render(s, header) for s in sections})
    keys = [k for k in ORDER if k in kept] + [k for k in kept if k not in ORDER]
    checks = [c for k in keys for c in _checks(kept[k])]
    lines = [
        "# streamproc benchmark results", "",
        "Written by `python -m bench` (`make bench`); see bench/__main__.py. Every scenario runs against its own "
        "fresh redis-server (no persistence) with the load generator in another process than what is measured; "
        "results are medians with min-max over the runs, and ratios are taken against raw redis-py loops measured "
        "in the same run on the same server. Where the time goes for the targets not met: bench/PROFILES.md.", "",
        f"Last written {header.date}, commit {header.commit}, by {header.command}.", "",
        "Machine: " + header.machine[0] + ".  ", header.machine[1] + ".", "",
        "## Targets", "", *table(["target", "measured (median)", ""],
                                 [[c.target, c.measured, _met(c.met)] for c in checks]), "",
    ]
    text = "\n".join(lines) + "\n" + "".join(f"<!-- bench:section {k} -->\n{kept[k]}<!-- bench:end {k} -->\n"
                                              for k in keys)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
