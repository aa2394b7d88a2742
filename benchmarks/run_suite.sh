#!/usr/bin/env bash
# The suite, unattended, one task at a time: its baselines (3-rate sweeps chosen on the holdout,
# then seeds), then its search at no more CPU than those baselines, then the transfer check
# (benchmarks/transfer.py) when its tasks are done; the tables after each task.
# Every run is appended to benchmarks/results/suite/*.csv as it finishes and the searches resume,
# so after a kill the same command continues where it stopped, and a partial suite already has
# complete rows for the tasks it finished. Logs to benchmarks/results/suite/suite.log; MLflow to
# benchmarks/results/suite/mlflow.db (its own store).
#
#   AUTOPEFT_DATA_DIR=../shared/data SEARCH_ARGS="--trials 20 --space small --search-train-examples 2048" \
#     nohup benchmarks/run_suite.sh [budget args both scripts take: --train-examples N --seeds S ...] &
#
# SUITE_TASKS (comma-separated) picks and orders the tasks; default: the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${AUTOPEFT_BENCH_RESULTS:-benchmarks/results}/suite
mkdir -p "$OUT"
IFS=, read -r -a TASKS <<< "${SUITE_TASKS:-sst2,mr,mpqa,trec,sick_e,sick_r,stsb}"
{
  for task in "${TASKS[@]}"; do
    echo "== $(date -Is) $task: baselines"
    "$PY" benchmarks/baselines.py --tasks "$task" "$@"
    echo "== $(date -Is) $task: search vs baselines"
    # shellcheck disable=SC2086  # SEARCH_ARGS is a list of words
    "$PY" benchmarks/search_vs_baselines.py --tasks "$task" "$@" ${SEARCH_ARGS:-}
    # The SST-2 config within LoRA r=8's size, retrained unchanged on MR and MPQA (once all three
    # have run; before that it says what is missing and does nothing).
    "$PY" benchmarks/transfer.py "$@"
    "$PY" benchmarks/markdown_tables.py > "$OUT/tables.md"
  done
  echo "== $(date -Is) done"
} >> "$OUT/suite.log" 2>&1
