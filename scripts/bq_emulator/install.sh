#!/usr/bin/env bash
# Install the local BigQuery emulator used by the BigQuery warehouse tests (`make bq-emulator`).
#
# There is no Google-made BigQuery emulator. `local-bigquery` (PyPI, BigQuery REST API on top of
# DuckDB + DuckLake) works with the real google-cloud-bigquery client, offline, when:
#   * it runs on Python 3.13, in its own virtualenv (the project itself is on Python 3.11);
#   * it is version 0.3.2 with duckdb 1.5.5 (0.4.0 downloads DuckDB extensions at start-up);
#   * the DuckDB extensions it loads (ducklake, spatial, icu) are present in
#     $HOME/.duckdb/extensions/v1.5.5/<platform>/; they come from the duckdb-extension-* wheels
#     on PyPI, and HOME points at .bq-emulator/home when the emulator runs (see run.sh).
#
# Creates (all under .bq-emulator/):
#   .bq-emulator/venv/                                        the emulator's Python 3.13 venv
#   .bq-emulator/home/.duckdb/extensions/v1.5.5/<platform>/  the DuckDB extension files
#   .bq-emulator/.installed                                   stamp: what was installed
#   .bq-emulator/.gitignore                                   "*": git ignores the whole folder
#
# Idempotent: a second run with the same pins does nothing. Python 3.13 is looked up as
# $BQ_EMULATOR_PYTHON, then python3.13 on the PATH, then pyenv's versions, then /usr/{local/,}bin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EMULATOR_DIR="$ROOT/.bq-emulator"
VENV="$EMULATOR_DIR/venv"
HOME_DIR="$EMULATOR_DIR/home"
STAMP="$EMULATOR_DIR/.installed"

LOCAL_BIGQUERY_VERSION=0.3.2
DUCKDB_VERSION=1.5.5
EXTENSIONS=(ducklake spatial icu)

# Every package of the emulator's venv, pinned (the resolution of local-bigquery==0.3.2 and
# duckdb==1.5.5 on Python 3.13), so that CI installs exactly what was tested.
CONSTRAINTS="
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cryptography==50.0.2
duckdb==$DUCKDB_VERSION
fastapi==0.165.0
fastavro==1.13.1
google-api-core==2.44.0
google-auth==2.63.0
google-cloud-bigquery-storage==2.43.0
googleapis-common-protos==1.76.0
grpcio==1.85.3
grpcio-status==1.85.3
h11==0.16.0
idna==3.20
local-bigquery==$LOCAL_BIGQUERY_VERSION
mini-racer==0.14.1
numpy==2.5.5
opentelemetry-api==1.45.2
prompt_toolkit==3.0.53
proto-plus==1.29.0
protobuf==7.36.2
pyarrow==26.0.1
pyasn1==0.6.5
pyasn1_modules==0.4.2
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
pydantic-settings==2.16.3
Pygments==2.21.0
python-dotenv==1.2.4
requests==2.34.2
sqlglot==30.30.0
starlette==1.10.0
typing_extensions==4.16.0
typing-inspection==0.4.5
urllib3==2.8.0
uvicorn==0.54.0
wcwidth==0.9.4
"
PINS="local-bigquery==$LOCAL_BIGQUERY_VERSION duckdb==$DUCKDB_VERSION extensions=${EXTENSIONS[*]}"
WANTED="$PINS constraints=$(printf '%s' "$CONSTRAINTS" | cksum | cut -d' ' -f1)"

say() { printf 'bq-emulator: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "$EMULATOR_DIR"
printf '*\n' >"$EMULATOR_DIR/.gitignore"  # keeps the whole folder out of git

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANTED" && -x "$VENV/bin/local-bigquery" ]]; then
    say "already installed in $EMULATOR_DIR ($PINS)"
    exit 0
fi

is_python313() {
    [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1
}

find_python313() {
    local candidate pyenv_root
    local candidates=("${BQ_EMULATOR_PYTHON:-}")
    candidate="$(command -v python3.13 2>/dev/null || true)"
    candidates+=("$candidate")
    pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    shopt -s nullglob
    # Newest 3.13.x first (pyenv's shim for python3.13 fails unless 3.13 is activated).
    for candidate in $(printf '%s\n' "$pyenv_root"/versions/3.13*/bin/python3.13 | sort -rV); do
        candidates+=("$candidate")
    done
    shopt -u nullglob
    candidates+=(/usr/local/bin/python3.13 /usr/bin/python3.13)
    for candidate in "${candidates[@]}"; do
        if is_python313 "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ -n "${BQ_EMULATOR_PYTHON:-}" ]] && ! is_python313 "$BQ_EMULATOR_PYTHON"; then
    die "BQ_EMULATOR_PYTHON=$BQ_EMULATOR_PYTHON is not a working Python 3.13"
fi
PYTHON313="$(find_python313)" || die "Python 3.13 is required for the BigQuery emulator and was \
not found. Install it (e.g. 'pyenv install 3.13', 'apt-get install python3.13', or \
actions/setup-python with python-version 3.13) or set BQ_EMULATOR_PYTHON=/path/to/python3.13."
say "using $PYTHON313 ($("$PYTHON313" -c 'import sys; print(sys.version.split()[0])'))"

started=$SECONDS
rm -rf "$VENV" "$HOME_DIR" "$STAMP"
WORK="$(mktemp -d "$EMULATOR_DIR/tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' "$CONSTRAINTS" >"$WORK/constraints.txt"

say "creating $VENV"
"$PYTHON313" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
say "installing local-bigquery==$LOCAL_BIGQUERY_VERSION duckdb==$DUCKDB_VERSION"
"${PIP[@]}" install --quiet -c "$WORK/constraints.txt" \
    "local-bigquery==$LOCAL_BIGQUERY_VERSION" "duckdb==$DUCKDB_VERSION"

# DuckDB's name for this platform (linux_amd64, linux_arm64, osx_arm64, ...): the folder
# DuckDB looks for extensions in, under $HOME/.duckdb/extensions/v<version>/.
PLATFORM="$("$VENV/bin/python" -c "import duckdb; print(duckdb.execute('PRAGMA platform').fetchone()[0])")"
EXTENSION_DIR="$HOME_DIR/.duckdb/extensions/v$DUCKDB_VERSION/$PLATFORM"

say "downloading the DuckDB extensions ${EXTENSIONS[*]} for $PLATFORM"
wheels=()
for name in "${EXTENSIONS[@]}"; do
    wheels+=("duckdb-extension-$name==$DUCKDB_VERSION")
done
# pip picks the wheel of this interpreter's platform (e.g. manylinux2014_x86_64).
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: -d "$WORK/wheels" "${wheels[@]}"

mkdir -p "$EXTENSION_DIR"
"$VENV/bin/python" - "$WORK/wheels" "$EXTENSION_DIR" "$DUCKDB_VERSION" "${EXTENSIONS[@]}" <<'PY'
import pathlib
import sys
import zipfile

wheels, target, version, *names = sys.argv[1:]
found = {}
for wheel in sorted(pathlib.Path(wheels).glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            path = pathlib.PurePosixPath(member)
            if path.suffix == ".duckdb_extension" and f"v{version}" in path.parts:
                (pathlib.Path(target) / path.name).write_bytes(archive.read(member))
                found[path.stem] = wheel.name
missing = sorted(set(names) - set(found))
if missing:
    sys.exit(f"no v{version} extension file for {missing} in the downloaded wheels")
PY

say "checking that DuckDB loads the extensions offline"
HOME="$HOME_DIR" "$VENV/bin/python" - "${EXTENSIONS[@]}" <<'PY'
import sys

import duckdb

con = duckdb.connect(config={"autoinstall_known_extensions": False})
for name in sys.argv[1:]:
    con.execute(f"LOAD {name}")
PY

rm -rf "$WORK"
printf '%s\n' "$WANTED" >"$STAMP"
say "installed in $EMULATOR_DIR in $((SECONDS - started)) s ($(du -sh "$EMULATOR_DIR" | cut -f1))"
say "run it with: scripts/bq_emulator/run.sh --port 9050 --project local --data-dir DIR"
