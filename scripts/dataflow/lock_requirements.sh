#!/usr/bin/env bash
# Write templates/requirements.lock (`make lock`): every package the pipeline needs at run time,
# pinned with hashes, resolved from pyproject.toml's [project] dependencies (not the test extras)
# for Python 3.11 on Linux, the Python of the Beam SDK image the Dockerfile builds on.
#
# The Dockerfile installs exactly this file (`pip install --no-deps --require-hashes`), then the
# package itself with --no-deps, then runs `pip check`; tests/test_template.py checks that the
# lock pins apache-beam and duckdb as pyproject.toml does.
#
# pip-compile (pip-tools, pinned) runs in its own virtualenv, .tools/pip-tools/. Re-running keeps
# the pins already in the lock when they still satisfy pyproject.toml, so the file changes only
# when pyproject.toml does; UPGRADE=1 re-resolves everything to the newest allowed releases.
# Only PyPI is consulted (this machine's pip configuration, e.g. local wheel folders, is ignored),
# so the same command gives the same file on any machine.
#
# LOCK_CONSTRAINTS=FILE adds a pip constraints file. Use it if the image's `pip check` ever
# reports a conflict with a package the Beam SDK image preinstalls (the lock is resolved for this
# package alone): constrain the lock to the image's own versions,
#   docker run --rm --entrypoint pip apache/beam_python3.11_sdk:VERSION freeze > build/sdk-image.txt
#   LOCK_CONSTRAINTS=build/sdk-image.txt UPGRADE=1 make lock
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.tools/pip-tools"
PIP_TOOLS_VERSION=7.6.2
LOCK="templates/requirements.lock"

say() { printf 'lock: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

PYTHON="${LOCK_PYTHON:-$(command -v python3.11 || true)}"
[[ -n "$PYTHON" ]] && "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "Python 3.11 (the SDK image's) is required; set LOCK_PYTHON=/path/to/python3.11"

mkdir -p "$ROOT/.tools"
printf '*\n' >"$ROOT/.tools/.gitignore"
if [[ ! -x "$VENV/bin/pip-compile" ]] \
    || [[ "$("$VENV/bin/pip-compile" --version 2>/dev/null)" != *"$PIP_TOOLS_VERSION"* ]]; then
    say "installing pip-tools $PIP_TOOLS_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "pip-tools==$PIP_TOOLS_VERSION"
fi

extra=()
[[ "${UPGRADE:-0}" == 1 ]] && extra+=(--upgrade)
if [[ -n "${LOCK_CONSTRAINTS:-}" ]]; then
    [[ -f "$LOCK_CONSTRAINTS" ]] || die "LOCK_CONSTRAINTS=$LOCK_CONSTRAINTS is not a file"
    extra+=(--constraint "$(cd "$(dirname "$LOCK_CONSTRAINTS")" && pwd)/$(basename "$LOCK_CONSTRAINTS")")
fi

started=$SECONDS
cd "$ROOT"
# PIP_CONFIG_FILE=/dev/null and no PIP_FIND_LINKS: PyPI only, whatever this machine configures.
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    CUSTOM_COMPILE_COMMAND="make lock" \
    "$VENV/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --resolver=backtracking \
    "${extra[@]}" --output-file "$LOCK" pyproject.toml
say "wrote $LOCK ($(grep -c '==' "$LOCK") pins) in $((SECONDS - started)) s"
