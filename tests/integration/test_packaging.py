"""The wheel tells the truth: it holds the library only (streamproc/, with py.typed and its Lua scripts), the
license, the entry points, and metadata whose dependencies, extras and markers are those pyproject.toml declares.

The wheel is built once per session from this checkout with `uv build` (hatchling from PyPI, as any build would)."""

from __future__ import annotations

import email.message
import email.parser
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

import streamproc

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST_INFO = f"streamproc-{PYPROJECT['version']}.dist-info"


def uv(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "uv", *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv("build", "--wheel", "--quiet", "--out-dir", str(out), str(ROOT))
    (built,) = out.glob("streamproc-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(wheel_path) as archive:
        yield archive


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    return email.parser.Parser().parsestr(wheel.read(f"{DIST_INFO}/METADATA").decode())


def source_files() -> set[str]:
    package = ROOT / "streamproc"
    return {p.relative_to(ROOT).as_posix() for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


def test_the_wheel_holds_the_library_and_its_metadata_only(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    library = {n for n in names if n.startswith("streamproc/")}
    assert names - library == {f"{DIST_INFO}/{n}" for n in
                               ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "licenses/LICENSE")}
    assert library == source_files(), "every file of streamproc/, nothing else (no handlers/, bench/, tests/)"
    assert "streamproc/py.typed" in library
    lua = {n for n in library if n.endswith(".lua")}
    assert len(lua) == len(list((ROOT / "streamproc").rglob("*.lua"))) > 0
    assert wheel.read(f"{DIST_INFO}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()


def test_entry_points_are_the_cli_and_the_pytest_plugin(wheel: zipfile.ZipFile) -> None:
    entry_points = wheel.read(f"{DIST_INFO}/entry_points.txt").decode()
    sections: dict[str, dict[str, str]] = {}
    section = ""
    for line in filter(None, map(str.strip, entry_points.splitlines())):
        if line.startswith("["):
            section = line.strip("[]")
            continue
        name, _, target = line.partition("=")
        sections.setdefault(section, {})[name.strip()] = target.strip()
    assert sections == {"console_scripts": {"streamproc": "streamproc.cli:main"},
                        "pytest11": {"streamproc": "streamproc.testing.plugin"}}


def test_metadata_says_what_pyproject_declares(metadata: email.message.Message) -> None:
    assert metadata["Name"] == "streamproc"
    assert metadata["Version"] == PYPROJECT["version"] == streamproc.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "## Two commands" in metadata.get_payload(), "the README is the long description"
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {"Framework :: AsyncIO", "Typing :: Typed", "Programming Language :: Python :: 3.11"} <= classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: the license expression says it"
    extras = PYPROJECT["optional-dependencies"]
    assert sorted(metadata.get_all("Provides-Extra") or []) == sorted(extras) == ["bench", "dev", "otel"]

    declared = {str(Requirement(r)) for r in PYPROJECT["dependencies"]}
    for extra in extras:
        for req in extra_requirements(extra):
            marker = f"({req.marker}) and " if req.marker else ""
            req.marker = Marker(f'{marker}extra == "{extra}"')
            declared.add(str(req))
    assert {str(Requirement(r)) for r in metadata.get_all("Requires-Dist") or []} == declared


def extra_requirements(extra: str) -> list[Requirement]:
    """An extra's requirements as pyproject declares them, `streamproc[otel]` in dev standing for the otel extra's
    (the build writes them out)."""
    out = []
    for line in PYPROJECT["optional-dependencies"][extra]:
        req = Requirement(line)
        out += [r for own in sorted(req.extras) for r in extra_requirements(own)] if req.name == "streamproc" else [req]
    return out


def test_uvloop_is_required_only_where_it_exists(metadata: email.message.Message) -> None:
    (uvloop,) = [r for r in map(Requirement, metadata.get_all("Requires-Dist") or []) if r.name == "uvloop"]
    assert uvloop.marker is not None
    linux = {"sys_platform": "linux", "platform_python_implementation": "CPython", "extra": ""}
    assert uvloop.marker.evaluate(linux)
    assert uvloop.marker.evaluate({**linux, "sys_platform": "darwin"})
    assert not uvloop.marker.evaluate({**linux, "sys_platform": "win32"})
    assert not uvloop.marker.evaluate({**linux, "sys_platform": "cygwin"})
    assert not uvloop.marker.evaluate({**linux, "platform_python_implementation": "PyPy"})


def test_heavy_parts_are_extras(metadata: email.message.Message) -> None:
    """The SDK and exporters only with [otel], the charts only with [bench]: a plain install pulls in neither."""
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]

    def needed(extra: str) -> set[str]:
        return {r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": extra})}

    plain = needed("")
    assert "opentelemetry-api" in plain
    assert not {"opentelemetry-sdk", "opentelemetry-exporter-otlp", "matplotlib"} & plain
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp"} <= needed("otel")
    assert "matplotlib" in needed("bench")
    assert "matplotlib" not in needed("dev")


def test_the_installed_wheel_runs_without_the_checkout(wheel_path: Path, tmp_path: Path) -> None:
    """Installed (not editable) into a venv of its own and run from elsewhere: the package, its Lua scripts and its
    command work from the wheel alone, and the example domain is not there."""
    venv = tmp_path / "venv"
    uv("venv", "--quiet", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    uv("pip", "install", "--quiet", "--python", str(python), str(wheel_path))
    script = ("import importlib.util, streamproc, streamproc.redis.scripts as s; "
              "assert importlib.util.find_spec('handlers') is None and importlib.util.find_spec('bench') is None; "
              "assert streamproc.__file__.startswith(sys.prefix), streamproc.__file__; "
              "print(streamproc.__version__, len(s.PUBLISH_ONCE) > 0)")
    done = subprocess.run([str(python), "-c", "import sys; " + script], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [PYPROJECT["version"], "True"]
    command = subprocess.run([str(venv / "bin" / "streamproc"), "--version"], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert command.returncode == 0, command.stderr
    assert command.stdout.strip() == f"streamproc {PYPROJECT['version']}"


def test_the_readme_lists_every_floor_pyproject_declares() -> None:
    """The Installation section's table names each runtime dependency (and the otel extra's) with its floor."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from floors import constraints
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    declared = dict(line.split(";")[0].split("==") for line in constraints(ROOT / "pyproject.toml"))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Installation\n", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for names, floor in re.findall(r"^\| ([^|]*) \| ([0-9][^ |]*) \|", section, flags=re.MULTILINE):
        for name in re.findall(r"`([a-z][a-z0-9-]*)(?:\[[a-z]+\])?`", names):
            listed[name] = floor
    assert listed == declared
