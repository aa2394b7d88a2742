"""How much does autopeft add to one trial, and what do 2 concurrent trials buy on 2 cores?

Side by side, in one run, on the embedded model and real SST-2:
  1. bare: the same configuration (serial adapter 24 in every layer) trained by a hand-written
     torch loop (benchmarks/_bare_loop.py) in a fresh process with one thread;
  2. autopeft: a 1-trial search (Ray Tune + Optuna + MLflow) of the same configuration, budget and
     thread count; the trial's wall time is its MLflow run (from Ray starting it to its result);
  3. throughput: N identical trials with --max-concurrent-trials 1, then 2;
  4. fixed cost per trial (its MLflow run's wall time minus its training and scoring seconds:
     process start, imports, data and model load, reporting), N trials one at a time in fresh
     worker processes (--fresh-workers) and in reused ones (--reuse-workers), side by side.

    AUTOPEFT_DATA_DIR=../shared/data python benchmarks/overhead.py [--train-examples 512] [--trials 4]
    AUTOPEFT_DATA_DIR=../shared/data python benchmarks/overhead.py --only fixed-cost --trials 4

Prints ratios; writes benchmarks/results/overhead.csv and logs to MLflow (experiment
autopeft-benchmarks, ./mlflow.db unless MLFLOW_TRACKING_URI is set).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autopeft.config import TrainBudget
from autopeft.models import resolve_model
from autopeft.search import SearchSettings, run_search

HERE = Path(__file__).resolve().parent
SPACE = "methods:\n  seq_bn: {layers: all, size: 24}\n"


def bare(data_dir: str, budget: TrainBudget) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / "_bare_loop.py"), resolve_model("all-MiniLM-L6-v2"), data_dir,
                          str(budget.train_examples), str(budget.batch_size), str(budget.learning_rate),
                          str(budget.max_seq_length)], capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_seconds": time.perf_counter() - t0}


def search(root: Path, name: str, data_dir: str, budget: TrainBudget, trials: int, concurrent: int,
           reuse_workers: bool | None = None) -> dict:
    # N trials of one configuration: a learning rate within 0.2% of the budget's keeps each a run
    # of its own (an identical config would be answered from the first, untrained: reuse.py).
    space = root / "fixed.yaml"
    space.write_text(SPACE + f"training:\n  learning_rate: {{low: {budget.learning_rate * 0.999}, "
                             f"high: {budget.learning_rate * 1.001}}}\n")
    settings = SearchSettings(name=name, task="sst2", space=str(space), budget=budget, num_samples=trials,
                              max_concurrent_trials=concurrent, cpus_per_trial=1, data_dir=data_dir,
                              workdir=str(root / name), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                              reuse_workers=reuse_workers, scheduler="fifo")  # N equal trials: no halving
    t0 = time.perf_counter()
    result = run_search(settings, show_progress=False)
    wall = time.perf_counter() - t0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    runs = [client.get_run(r["run_id"]) for r in result.trials]
    trial_walls = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    # Fixed cost: the trial's wall time less training, scoring and measuring the objectives after
    # training (latency: a per-config measurement, not overhead). setup_seconds is the part the
    # trial itself saw (data and model loading); the rest is process start, Ray and reporting.
    fixed = [w - t["train_seconds"] - t["eval_seconds"] - t.get("measure_seconds", 0.0)
             for w, t in zip(trial_walls, result.trials)]
    return {"wall_seconds": wall, "trial_wall_seconds": sum(trial_walls) / len(trial_walls),
            "fixed_seconds": fixed, "setup_seconds": [t.get("setup_seconds") for t in result.trials],
            "measure_seconds": [t.get("measure_seconds") for t in result.trials],
            "train_seconds": sum(r["train_seconds"] for r in result.trials) / len(runs),
            "eval_seconds": sum(r["eval_seconds"] for r in result.trials) / len(runs),
            "accuracy": sum(r["metric"] for r in result.trials) / len(runs), "trials": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-examples", type=int, default=512)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))
    ap.add_argument("--only", choices=("all", "fixed-cost"), default="all",
                    help="fixed-cost: only the per-trial fixed cost, fresh vs reused worker processes")
    ap.add_argument("--eval-examples", type=int, default=None, help="dev rows scored (default: all 872)")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (a folder laid out like GLUE's)")
    budget = TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples)
    fixed_cost(args, budget)
    if args.only == "fixed-cost":
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        b = bare(args.data_dir, budget)
        one = search(root, "one-trial", args.data_dir, budget, 1, 1)
        seq = search(root, "sequential", args.data_dir, budget, args.trials, 1)
        par = search(root, "concurrent", args.data_dir, budget, args.trials, 2)
    per_hour = {k: 3600 * v["trials"] / v["wall_seconds"] for k, v in (("1 concurrent", seq), ("2 concurrent", par))}
    rows = [
        ("trial wall / bare process wall", one["trial_wall_seconds"] / b["wall_seconds"],
         f"{one['trial_wall_seconds']:.1f} s vs {b['wall_seconds']:.1f} s"),
        ("1-trial search wall / bare process wall", one["wall_seconds"] / b["wall_seconds"],
         f"{one['wall_seconds']:.1f} s vs {b['wall_seconds']:.1f} s (adds Ray start, Optuna, MLflow)"),
        ("training loop: autopeft / bare", one["train_seconds"] / b["train_seconds"],
         f"{one['train_seconds']:.1f} s vs {b['train_seconds']:.1f} s"),
        ("evaluation: autopeft / bare", one["eval_seconds"] / b["eval_seconds"],
         f"{one['eval_seconds']:.1f} s vs {b['eval_seconds']:.1f} s (872 dev rows)"),
        ("trials per hour: 2 concurrent / 1 concurrent", per_hour["2 concurrent"] / per_hour["1 concurrent"],
         f"{per_hour['2 concurrent']:.0f} vs {per_hour['1 concurrent']:.0f} trials/h"),
    ]
    print(f"\n{platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, "
          f"{args.train_examples} examples, batch {budget.batch_size}, seq {budget.max_seq_length}, 1 thread")
    print(f"accuracy: bare {b['accuracy']:.4f}, autopeft {one['accuracy']:.4f}")
    for name, ratio, detail in rows:
        print(f"{name:48s} {ratio:6.3f}   {detail}")
    out = HERE / "results" / "overhead.csv"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["measure", "ratio", "detail"])
        w.writerows(rows)
    _log(rows, b, one)


def fixed_cost(args: argparse.Namespace, budget: TrainBudget) -> None:
    """Fresh vs reused worker processes, N trials one at a time: the per-trial fixed cost."""
    import statistics

    with tempfile.TemporaryDirectory() as tmp:
        fresh = search(Path(tmp), "fresh", args.data_dir, budget, args.trials, 1, reuse_workers=False)
        reused = search(Path(tmp), "reused", args.data_dir, budget, args.trials, 1, reuse_workers=True)
    rows = []
    for name, r in (("fresh worker per trial", fresh), ("reused workers", reused)):
        later = r["fixed_seconds"][1:] or r["fixed_seconds"]  # the first trial of both starts a worker
        rows.append((name, statistics.median(r["fixed_seconds"]), statistics.median(later),
                     " ".join(f"{x:.1f}" for x in r["fixed_seconds"]),
                     " ".join(f"{x:.1f}" for x in r["setup_seconds"]),
                     " ".join(f"{x:.1f}" for x in r["measure_seconds"])))
    print(f"\nfixed cost per trial ({args.trials} trials one at a time, {args.train_examples} examples, "
          f"{platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}): seconds")
    print(f"{'':24s} {'median':>7s} {'median after the 1st':>21s}   per trial | in-trial setup | measuring")
    for name, med, med_later, each, setup, measure in rows:
        print(f"{name:24s} {med:7.2f} {med_later:21.2f}   {each} | {setup} | {measure}")
    out = HERE / "results" / "overhead_fixed_cost.csv"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workers", "median_fixed_seconds", "median_fixed_seconds_after_first", "per_trial",
                    "setup_seconds", "measure_seconds"])
        w.writerows(rows)


def _log(rows, b, one) -> None:
    import mlflow

    mlflow.set_experiment("autopeft-benchmarks")
    with mlflow.start_run(run_name="overhead"):
        mlflow.log_metrics({"bare_wall_seconds": b["wall_seconds"], "trial_wall_seconds": one["trial_wall_seconds"]})
        mlflow.log_metrics({f"ratio_{i}": r for i, (_, r, _) in enumerate(rows)})
        mlflow.log_artifact(str(HERE / "results" / "overhead.csv"))


if __name__ == "__main__":
    main()
