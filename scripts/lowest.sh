#!/usr/bin/env bash
# The lowest-versions run (`make test-lowest`, run by .ci/run): a fresh .venv-lowest where every runtime dependency
# and the otel extra sit exactly at their floors in pyproject.toml, then the unit and integration tests in it.
#
# The floors are pinned by a constraints file made from pyproject.toml itself (scripts/floors.py), and the dev
# tools (pytest, fastapi, schemathesis, ...) resolve normally against those pins. Not `--resolution lowest-direct`
# for the whole install: that also pins the dev tools to their own floors (pytest 8.0, pytest-asyncio 0.24), which
# test the tools' floors, not what a user of streamproc installs. Transitive dependencies resolve to their newest,
# as they would for that user. A pin that no dev tool can live with fails the install loudly.
#
# Everything stays in the checkout: the venv, the constraints and uv's cache (.uv-cache), so a fresh clone needs
# nothing but what scripts/bootstrap.sh installs (uv comes from PyPI with the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=".venv-lowest"
PYTHON="${PYTHON:-python3}"
export UV_CACHE_DIR="$PWD/.uv-cache" UV_PYTHON_DOWNLOADS=never

log() { printf 'lowest: %s\n' "$*" >&2; }

./scripts/bootstrap.sh
UV=".venv/bin/uv"
started=$SECONDS
"$UV" venv -q --clear --python "$PYTHON" "$VENV"
.venv/bin/python scripts/floors.py pyproject.toml >"$VENV/floors.txt"
log "pinned floors: $(cut -d';' -f1 "$VENV/floors.txt" | paste -sd ' ')"
"$UV" pip install -q --python "$VENV/bin/python" -c "$VENV/floors.txt" -e '.[dev]'
log "installed in $((SECONDS - started)) s; running tests/unit and tests/integration"
"$VENV/bin/pytest" -q tests/unit tests/integration
log "done in $((SECONDS - started)) s"
