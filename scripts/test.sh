#!/usr/bin/env bash
# The test command (README, .ci/run), for a fresh machine: installs what the suite needs that pip
# cannot (Debian's chromium, for the Neuroglancer tests, and nginx, the HTTP cache the relay is
# tested behind), makes .venv, installs voxgate with its test extra, makes .venv-webknossos and
# .venv-igneous for the peer tests that need older libraries, and runs pytest on 2 processes with
# any arguments given (`-n 0` or `-p no:xdist`: in this one process).  Rerunning it is safe:
# every step either is skipped or repeats harmlessly.
set -euo pipefail
cd "$(dirname "$0")/.."

# the tests drive this binary through Playwright; never `playwright install`, which downloads
# its own browser build and cannot run offline
CHROMIUM=/usr/bin/chromium
PYTHON=${PYTHON:-python3}

die() {
    echo "scripts/test.sh: $*" >&2
    exit 1
}

# apt-get as root, or through sudo (which may ask for a password on a terminal)
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "$* must be installed, and this is not a Debian-like system (no apt-get); install it by hand"
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        die "$* must be installed: run as root, install sudo, or run: apt-get install -y $*"
    fi
    echo "scripts/test.sh: installing $* with apt-get" >&2
    # a fresh image may have no package lists yet: update only when the install fails
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" \
        || { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; } \
        || die "could not install $* with apt-get (as root or through sudo); install it and rerun"
}

needed=()
[ -x "$CHROMIUM" ] || needed+=(chromium)
[ -x /usr/sbin/nginx ] || needed+=(nginx)  # the HTTP cache of tests/relay/test_http_cache.py
command -v "$PYTHON" >/dev/null 2>&1 || needed+=(python3)
# Debian splits venv (and the pip it bootstraps) out of python3
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    needed+=(python3-venv)
fi
if [ ${#needed[@]} -gt 0 ]; then
    apt_install "${needed[@]}"
fi
[ -x "$CHROMIUM" ] || die "chromium is installed but $CHROMIUM does not exist; the tests need it there"

# a venv left half-made by an interrupted run has no working pip: make it again
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m venv --clear .venv
fi
# what `. .venv/bin/activate` does, without sourcing a script written for interactive shells
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
python -m pip install -e ".[test]"

# peer_venv DIR MODULE REQUIREMENTS VARIABLE: an oracle whose pins clash with voxgate's environment
# gets a venv of its own (DIR, made unless MODULE already imports there), whose python the tests
# find in VARIABLE; a VARIABLE set already is used as it is
peer_venv() {
    local dir=$1 module=$2 requirement=$3 variable=$4
    if [ -n "${!variable:-}" ]; then
        return
    fi
    if ! "$dir/bin/python" -c "import $module" >/dev/null 2>&1; then
        "$PYTHON" -m venv --clear "$dir"
        # shellcheck disable=SC2086  # (REQUIREMENTS may name several: split on spaces)
        "$dir/bin/python" -m pip install --quiet $requirement
    fi
    export "$variable=$PWD/$dir/bin/python"
}
# webknossos (the oracle of tests/remotes/test_webknossos_peer.py) pins older click, rich,
# httpx, networkx and protobuf than voxgate's environment holds
# (ml_dtypes 0.7.0, which its tensorstore would take, costs 1.1 s per process: see pyproject.toml)
peer_venv .venv-webknossos webknossos "webknossos==4.3.3 ml_dtypes!=0.7.0" VOXGATE_WEBKNOSSOS_PYTHON
# Igneous (the oracle of tests/services/test_downsample_igneous.py) pins DracoPy below 2, whose
# encoder refuses voxgate's unquantized mesh positions
peer_venv .venv-igneous igneous.task_creation "igneous-pipeline==4.37.0" VOXGATE_IGNEOUS_PYTHON
# two processes (pytest-xdist), each test file whole on one of them (its module fixtures start
# once), less what the arguments given (or PYTEST_ADDOPTS, which pytest reads before them) say
# themselves: no -n when they give one (`-n 0` runs in this one process), no --dist when they
# give one, and neither with `-p no:xdist` (pytest then refuses -n and --dist, options of the
# plugin it was told not to load)
processes=(-n 2)
dist=(--dist loadfile)
read -ra addopts <<< "${PYTEST_ADDOPTS:-}"
prev=""
for arg in ${addopts[@]+"${addopts[@]}"} "$@"; do
    if { [ "$prev" = "-p" ] && [ "$arg" = "no:xdist" ]; } || [ "$arg" = "-pno:xdist" ]; then
        processes=()
        dist=()
    fi
    case "$arg" in
        -n | -n?* | --numprocesses | --numprocesses=*) processes=() ;;
        --dist | --dist=*) dist=() ;;
    esac
    prev=$arg
done
exec python -m pytest ${processes[@]+"${processes[@]}"} ${dist[@]+"${dist[@]}"} "$@"
