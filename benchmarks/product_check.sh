#!/usr/bin/env bash
# The product's own check on the suite's tasks (benchmarks/README.md, "The product's own check"):
# per task, the default search selecting on a holdout, then `autopeft hand-picks --seeds 3`, which
# retrains the warm starts and the trials that beat them over new seeds and scores them on dev.
# Each task's console output is appended to product_check.log and its hand_picks.csv (every run's
# dev metric, from the hand-picks MLflow run) lands beside it as <task>_hand_picks.csv.
#
#   AUTOPEFT_DATA_DIR=../shared/data benchmarks/product_check.sh sst2 mpqa trec sick_e sick_r stsb
#
# Searches and their MLflow store live in WORK (default: a folder under /tmp), never in the checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AUTOPEFT="${AUTOPEFT:-$ROOT/.venv/bin/autopeft}"
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
OUT="${AUTOPEFT_BENCH_RESULTS:-$ROOT/benchmarks/results}/product_check"
WORK="${WORK:-/tmp/autopeft-product-check}"
: "${AUTOPEFT_DATA_DIR:?give AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)}"
export AUTOPEFT_DATA_DIR MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
mkdir -p "$OUT" "$WORK"
cd "$WORK"
for task in "$@"; do
  {
    echo "== $(date -u +%FT%TZ) $task: search"
    "$AUTOPEFT" search --task "$task" --select-on holdout --name "$task-holdout"
    echo "== $(date -u +%FT%TZ) $task: hand-picks"
  } 2>&1 | tee -a "$OUT/product_check.log"
  "$AUTOPEFT" hand-picks "$task-holdout" --seeds 3 2>&1 | tee "$WORK/$task-hand-picks.txt" | tee -a "$OUT/product_check.log"
  run=$(sed -n 's/^MLflow run \([0-9a-f]*\) (under the search.s run)$/\1/p' "$WORK/$task-hand-picks.txt")
  "$MLFLOW" artifacts download -r "$run" -a hand_picks.csv -d "$WORK/$run" >/dev/null
  cp "$WORK/$run/hand_picks.csv" "$OUT/${task}_hand_picks.csv"
done
