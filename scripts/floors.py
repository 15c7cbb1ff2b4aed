"""Print a pip/uv constraints file that pins every runtime dependency and the otel extra to its floor (`>=X` in
pyproject.toml becomes `==X`, markers kept), for the lowest-versions run (scripts/lowest.sh)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = ("otel",)  # what a user installs; dev and bench are the repo's tools and resolve normally


def constraints(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    out = []
    for line in lines:
        req = Requirement(line)
        floors = [spec.version for spec in req.specifier if spec.operator == ">="]
        if len(floors) != 1:
            raise SystemExit(f"{line!r}: every runtime dependency needs one floor (>=) for the lowest run to pin")
        out.append(f"{req.name}=={floors[0]}" + (f"; {req.marker}" if req.marker else ""))
    return out


if __name__ == "__main__":
    sys.stdout.write("".join(f"{line}\n" for line in constraints(Path(sys.argv[1]))))
