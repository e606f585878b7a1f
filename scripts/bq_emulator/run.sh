#!/usr/bin/env bash
# Run the local BigQuery emulator (local-bigquery 0.3.2) in the foreground; install it first with
# scripts/bq_emulator/install.sh (`make bq-emulator`). Stop it with Ctrl-C or SIGTERM.
#
#   scripts/bq_emulator/run.sh [--host 127.0.0.1] [--port 9050] [--grpc-port 9060]
#                              [--project local] [--dataset local] [--data-dir DIR]
#
# Flags are those of the `local-bigquery` command (local_bigquery/cli.py); this script only
# changes two defaults: --host 127.0.0.1 (not 0.0.0.0) and --data-dir .bq-emulator/data (not
# /data). A later flag wins, so any of them can be overridden.
#   --host       interface of the REST API and of the gRPC server
#   --port       REST port: the client's api_endpoint is http://HOST:PORT
#   --grpc-port  BigQuery Storage Read/Write API (gRPC) port; 0 picks a free one
#   --project    project created at start-up (any other project is created on first use)
#   --dataset    dataset created at start-up in --project
#   --data-dir   where tables (DuckLake: <project>.ducklake + Parquet files) and the job
#                history (emulator.duckdb) persist; reused across restarts
# A first positional argument other than `serve` selects another command: `reset` deletes
# --data-dir, `repl` opens an interactive BigQuery SQL shell on it.
#
# HOME is set to .bq-emulator/home, where install.sh put the DuckDB extensions (ducklake,
# spatial, icu) that the emulator loads from $HOME/.duckdb; nothing is downloaded at run time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EMULATOR_DIR="$ROOT/.bq-emulator"

if [[ ! -f "$EMULATOR_DIR/.installed" || ! -x "$EMULATOR_DIR/venv/bin/local-bigquery" ]]; then
    echo "bq-emulator: not installed; run 'make bq-emulator' (scripts/bq_emulator/install.sh)" >&2
    exit 1
fi

export HOME="$EMULATOR_DIR/home"
exec "$EMULATOR_DIR/venv/bin/local-bigquery" \
    --host 127.0.0.1 --data-dir "$EMULATOR_DIR/data" "$@"
