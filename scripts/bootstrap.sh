#!/usr/bin/env bash
# Bootstrap a dev/CI machine: ensure redis-server and faketime exist, create .venv, install
# the project editable with the dev and bench extras. Idempotent and fast when already done.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=".venv"
STAMP="$VENV/.stamp"

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

install_hint() {
    cat >&2 <<'HINT'
bootstrap: redis-server (>= 7) is required; the test suite starts its own
           throwaway instances on free loopback ports. Install it with one of:
             Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y redis-server
             macOS:          brew install redis
           or point at an existing binary:
             export REDIS_SERVER=/path/to/redis-server
HINT
}

find_redis() {
    if [[ -n "${REDIS_SERVER:-}" ]]; then
        [[ -x "$REDIS_SERVER" ]] || { install_hint; die "REDIS_SERVER=$REDIS_SERVER is not executable"; }
        return 0
    fi
    command -v redis-server >/dev/null 2>&1
}

# apt_install PACKAGE...: install Debian packages (as root, or with passwordless sudo); 1 if it cannot.
apt_install() {
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo"
        else
            return 1
        fi
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    log "installing $* via apt-get"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null
}

ensure_redis() {
    find_redis && return 0
    log "redis-server not found"
    apt_install redis-server || { install_hint; die "redis-server not found and cannot install it (no root or apt-get)"; }
    # Debian may auto-start a system service on :6379. The tests never use it:
    # tests/redis_server.py spawns private servers on free ports with their own
    # temp dirs, so the system service is simply left alone.
    command -v redis-server >/dev/null 2>&1 || die "apt-get install redis-server did not provide redis-server"
}

# faketime (libfaketime) gives one worker process of the fault tests a skewed clock.
ensure_faketime() {
    command -v faketime >/dev/null 2>&1 && return 0
    apt_install faketime || die "faketime not found and cannot install it: apt-get install faketime (Debian/Ubuntu), brew install libfaketime (macOS)"
    command -v faketime >/dev/null 2>&1 || die "apt-get install faketime did not provide faketime"
}

ensure_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; Python >= 3.11 is required"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "Python >= 3.11 required, but $PYTHON is $("$PYTHON" -V 2>&1)"
}

# The editable install must make streamproc importable from anywhere, from this checkout (a venv made
# for another checkout, or before streamproc/ existed, cannot): treat anything else as "not installed".
# find_spec runs from / so the repo root on sys.path (cwd) can't mask the problem, and it doesn't import
# the code. handlers/ and bench/ are not in the wheel: they are imported from the repo root (the cwd of
# `make demo`, `python -m bench`, `streamproc worker handlers.app:app`), so they are not checked here.
editable_ok() {
    local py="$PWD/$VENV/bin/python" init="$PWD/streamproc/__init__.py"
    (cd / && "$py" -c "import importlib.util, sys
spec = importlib.util.find_spec('streamproc')
sys.exit(spec is None or spec.origin != sys.argv[1])" "$init")
}

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        ensure_python
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    # Skip the (slow) pip step when nothing that drives dependencies changed.
    if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml ]] && editable_ok; then
        return 0
    fi
    # bench: matplotlib, for bench/'s charts (make bench, make bench-smoke) and for mypy, which checks bench/.
    log "installing project (editable, dev and bench extras)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev,bench]'
    touch "$STAMP"
}

ensure_redis
ensure_faketime
ensure_venv
log "ok ($("${REDIS_SERVER:-redis-server}" --version | awk '{print $3}'), $("$VENV/bin/python" -V))"
