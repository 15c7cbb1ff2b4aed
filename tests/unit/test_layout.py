"""The house rules of the layout: the library stands without the example domain, and lower wings never import
higher ones (see the "Project layout" section of the README)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streamproc"

# What each wing may import from streamproc. Top-level modules ("" below) are the model every wing shares; a wing
# may always import its own modules. `app` is the facade over publishing, so the wings above it may use it.
TOP = "top"
ALLOWED: dict[str, set[str]] = {
    "redis": {"errors", "settings"},
    "observe": {TOP},
    "publish": {TOP, "redis", "observe"},
    "schedule": {TOP, "redis", "observe", "publish"},
    "worker": {TOP, "redis", "observe", "publish", "schedule"},
    "http": {TOP, "redis", "observe", "publish"},
    "devtools": {TOP, "redis", "observe", "publish", "schedule", "worker", "http"},
    "cli": {TOP, "redis", "observe", "publish", "schedule", "worker", "http", "devtools"},  # the edge: every wing
    # What users plug into their own code (web frameworks, pytest); no wing imports them.
    "integrations": {TOP, "publish"},
    "testing": {TOP, "redis", "publish", "worker", "devtools"},
}
SHARED_TOP = {"event", "codec", "keys", "topology", "context", "errors", "settings", "backoff", "version",
              "eventloop"}


def modules() -> list[str]:
    return sorted(".".join(("streamproc", *p.relative_to(PACKAGE).with_suffix("").parts))
                  for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")  # __main__ runs the CLI


def test_every_module_imports_with_handlers_unimportable() -> None:
    """Run in a fresh interpreter where `import handlers` fails, so nothing of the example can be reached."""
    script = (
        "import sys, importlib, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'handlers' or name.startswith('handlers.'):\n"
        "            raise ImportError('streamproc must not import handlers: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules()!r}:\n"
        "    importlib.import_module(m)\n"
        "assert not any(n == 'handlers' or n.startswith('handlers.') for n in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _imports(path: Path) -> list[str]:
    """The streamproc modules a file imports, as dotted names relative to the package ("worker.settle")."""
    here = path.relative_to(PACKAGE).parent.parts
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)])
                if node.module:
                    out.append(".".join([*base, node.module]))
                else:  # `from .. import eventloop`: each name is a module
                    out += [".".join([*base, a.name]) for a in node.names]
            elif node.module and node.module.startswith("streamproc."):
                out.append(node.module.removeprefix("streamproc."))
        elif isinstance(node, ast.Import):
            out += [a.name.removeprefix("streamproc.") for a in node.names if a.name.startswith("streamproc.")]
    return out


def _wing(dotted: str) -> str:
    first = dotted.split(".")[0]
    return first if (PACKAGE / first).is_dir() else TOP


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_lower_wings_never_import_higher_ones(wing: str) -> None:
    allowed = ALLOWED[wing]
    broken = []
    for path in (PACKAGE / wing).rglob("*.py"):
        for target in _imports(path):
            target_wing = _wing(target)
            if target_wing == wing:
                continue
            if target_wing == TOP:
                module = target.split(".")[0]
                ok = TOP in allowed and (module in SHARED_TOP or (module == "app" and wing not in ("publish",
                                                                                                  "observe")))
                ok = ok or module in allowed
            else:
                ok = target_wing in allowed
            if not ok:
                broken.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not broken, broken


def test_the_shared_model_imports_no_wing() -> None:
    """Top-level modules other than the facades (the package itself, app, cli) import no wing."""
    broken = []
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("__init__", "__main__", "app", "cli"):
            continue
        broken += [f"{path.name} imports {t}" for t in _imports(path) if _wing(t) != TOP]
    assert not broken, broken
