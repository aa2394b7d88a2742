#!/usr/bin/env bash
# The suite, unattended: baselines (3-rate sweeps chosen on the holdout, then seeds), then a search
# per task at no more CPU than the baselines, then the markdown tables. Every run is appended to
# benchmarks/results/suite/*.csv as it finishes and the searches resume, so after a kill the same
# command continues where it stopped. Logs to benchmarks/results/suite/suite.log; MLflow to
# benchmarks/results/suite/mlflow.db (its own store).
#
#   AUTOPEFT_DATA_DIR=../shared/data SEARCH_ARGS="--trials 10 --space small" \
#     nohup benchmarks/run_suite.sh [budget args both scripts take: --train-examples N --seeds S ...] &
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results/suite
mkdir -p "$OUT"
{
  echo "== $(date -Is) baselines"
  "$PY" benchmarks/baselines.py "$@"
  echo "== $(date -Is) search vs baselines"
  # shellcheck disable=SC2086  # SEARCH_ARGS is a list of words
  "$PY" benchmarks/search_vs_baselines.py "$@" ${SEARCH_ARGS:-}
  echo "== $(date -Is) tables"
  "$PY" benchmarks/markdown_tables.py
  echo "== $(date -Is) done"
} >> "$OUT/suite.log" 2>&1
