#!/usr/bin/env bash
# Install the tools of the offline Terraform checks (`make tf-tools`):
#   * checkov, pinned, in its own virtualenv .tools/checkov/ (its pins conflict with Beam's, so
#     it cannot live in .venv), with every package of that venv constrained by
#     scripts/dataflow/checkov-constraints.txt so that CI installs exactly what was tested;
#   * terraform >= 1.5 must already be on the PATH (or $TERRAFORM): no package registry this
#     project uses ships Terraform, so it comes with the machine image, like gcloud and Java.
#
# Creates (all under .tools/, which keeps itself out of git with its own .gitignore):
#   .tools/checkov/             checkov's virtualenv (Python 3.11, or $CHECKOV_PYTHON)
#   .tools/checkov/.installed   stamp: what was installed
#
# Idempotent: a second run with the same pins only re-checks terraform.
# `install_tools.sh --relock` installs checkov unconstrained and rewrites the constraints file
# (do that to move to a new checkov version, then commit the file).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/checkov"
STAMP="$VENV/.installed"
CONSTRAINTS="$ROOT/scripts/dataflow/checkov-constraints.txt"
CHECKOV_VERSION=3.3.30
TERRAFORM_MIN=1.5

say() { printf 'tf-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

relock=false
[[ "${1:-}" == "--relock" ]] && relock=true

started=$SECONDS
mkdir -p "$TOOLS"
printf '*\n' >"$TOOLS/.gitignore"

# --- terraform: check only.
TERRAFORM="${TERRAFORM:-terraform}"
if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
    die "terraform >= $TERRAFORM_MIN is required for 'terraform fmt' and was not found on the \
PATH. Install it from HashiCorp (https://developer.hashicorp.com/terraform/install) or set \
TERRAFORM=/path/to/terraform; the checks need no provider download."
fi
tf_version="$("$TERRAFORM" version -json 2>/dev/null \
    | sed -n 's/.*"terraform_version": *"\([0-9.]*\)".*/\1/p')"
lowest="$(printf '%s\n%s\n' "$TERRAFORM_MIN" "${tf_version:-0}" | sort -V | head -1)"
if [[ -z "$tf_version" || "$lowest" != "$TERRAFORM_MIN" ]]; then
    die "terraform >= $TERRAFORM_MIN is required, found '${tf_version:-unknown}' ($TERRAFORM)"
fi
say "terraform $tf_version ($(command -v "$TERRAFORM"))"

# --- checkov.
wanted() { echo "checkov==$CHECKOV_VERSION constraints=$(cksum <"$CONSTRAINTS" | cut -d' ' -f1)"; }
if ! $relock && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(wanted)" && -x "$VENV/bin/checkov" ]]; then
    say "checkov $CHECKOV_VERSION already installed in $VENV"
    exit 0
fi

PYTHON="${CHECKOV_PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "checkov needs Python >= 3.9; set CHECKOV_PYTHON=/path/to/python3.11"
say "installing checkov $CHECKOV_VERSION into $VENV with $PYTHON"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
if $relock; then
    "${PIP[@]}" install "checkov==$CHECKOV_VERSION"
    python_version="$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
    {
        echo "# Every package of checkov's virtualenv (.tools/checkov), as resolved for"
        echo "# checkov==$CHECKOV_VERSION on Python $python_version."
        echo "# Written by: scripts/dataflow/install_tools.sh --relock"
        "$VENV/bin/python" -m pip freeze --exclude-editable
    } >"$CONSTRAINTS"
    say "rewrote $CONSTRAINTS"
else
    "${PIP[@]}" install -c "$CONSTRAINTS" "checkov==$CHECKOV_VERSION"
fi
"$VENV/bin/checkov" --version >/dev/null
wanted >"$STAMP"
say "installed checkov $CHECKOV_VERSION in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))"
