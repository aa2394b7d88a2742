"""Hand-picked PEFT baselines on the suite, each at its own best learning rate, judged on held-out data.

Nine baselines (full fine-tuning, LoRA r=8 on query+value, Pfeiffer and Houlsby adapters with
reduction 16, the parallel adapter, prefix tuning of length 30, (IA)3, BitFit, MAM) x the suite
(SST-2, MR, MPQA, TREC, STS-B, SICK-R, SICK-E), each trained exactly like a search trial
(``autopeft.trial.run_config``) at one budget, two runs at a time with one torch thread each.

The protocol (the search in search_vs_baselines.py follows the same one):

1. Every run trains on the task's training split minus a held-out selection split (--holdout
   rows, seed --holdout-seed; ``autopeft.tasks.selection``), which scores it, and the dev split
   is scored too but never used to choose anything.
2. Sweep: each baseline at three learning rates around its usual one (``_common.lr_sweep``), seed 0.
3. Each baseline's rate is the one with the best holdout metric; seeds 1..N-1 run at that rate
   (seed 0 is the sweep's run).
4. Reported: the dev metric, mean +- std over the seeds, beside the holdout metric and the CPU
   seconds of the whole sweep (what a search may spend, see search_vs_baselines.py).

Every run is appended to benchmarks/results/suite/baselines_runs.csv as it finishes (a stopped run
resumes from it), the table goes to baselines_table.csv, and one MLflow run to the suite's own store
(benchmarks/results/suite/mlflow.db).

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/baselines.py [--seeds 3] [--tasks mr,trec]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from autopeft.config import TrainBudget  # noqa: E402

KEY = ("task", "name", "lr", "seed")  # one run; the sweep's seed-0 run at the chosen rate is a reported one
EXTRA = ("dev_metric",)


def suite_budget(args: argparse.Namespace, seed: int, learning_rate: float) -> TrainBudget:
    """The one budget of the suite: baselines, sweep and retrained search configs alike."""
    return TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples, epochs=args.epochs,
                       max_seq_length=args.max_seq_length, seed=seed, learning_rate=learning_rate,
                       select_on="holdout", holdout_size=args.holdout, holdout_seed=args.holdout_seed)


def add_budget_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train-examples", type=int, default=2048,
                    help="first N of a seeded shuffle of each training split (minus the holdout)")
    ap.add_argument("--eval-examples", type=int, default=None,
                    help="rows scored of the holdout and of dev (default: all of both)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-seq-length", type=int, default=64)
    ap.add_argument("--holdout", type=float, default=500,
                    help="selection split: rows held out of each training split (or a fraction < 1)")
    ap.add_argument("--holdout-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(common.TASKS))
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))


def job(task: str, name: str, peft, lr: float, seed: int, args: argparse.Namespace) -> dict:
    return {"task": task, "name": name, "lr": lr, "seed": seed,
            "peft_json": None if peft is None else peft.to_json(),
            "budget_json": json.dumps(suite_budget(args, seed, lr).to_dict())}


def chosen_lrs(rows: list[dict[str, str]]) -> dict[tuple[str, str], float]:
    """(task, baseline) -> the sweep rate with the best holdout metric (diverged runs are NaN)."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rows:
        metric = float(r["metric"])
        if r["seed"] != "0" or math.isnan(metric):
            continue
        key = (r["task"], r["name"])
        if key not in best or metric > best[key][0]:
            best[key] = (metric, float(r["lr"]))
    return {k: lr for k, (_, lr) in best.items()}


def run_baselines(configs: dict, tasks: list[str], args: argparse.Namespace, out: Path,
                  deadline: float | None = None) -> tuple[list, dict]:
    """Sweep, choose, seed; every run of the suite's baselines and the rate chosen for each
    (``deadline``: ``_common.run_jobs``'s)."""
    sweep = [job(t, n, p, lr, 0, args) for t in tasks for n, p in configs.items() for lr in common.lr_sweep(n)]
    rows = common.run_jobs(sweep, out, args.data_dir, args.workers, key=KEY, extra=EXTRA, deadline=deadline)
    rows = [r for r in common.in_sweep(rows) if r["task"] in tasks and r["name"] in configs]
    lrs = chosen_lrs(rows)
    seeds = [job(t, n, configs[n], lrs[(t, n)], s, args) for (t, n) in lrs for s in range(1, args.seeds)]
    rows = common.run_jobs(seeds, out, args.data_dir, args.workers, key=KEY, extra=EXTRA, deadline=deadline)
    return [r for r in common.in_sweep(rows) if r["task"] in tasks and r["name"] in configs], lrs


def reported(rows: list[dict[str, str]], lrs: dict, seeds: int) -> list[dict[str, str]]:
    """The runs the table reports: each baseline's chosen rate, seeds 0..seeds-1."""
    return [r for r in rows if lrs.get((r["task"], r["name"])) == float(r["lr"]) and int(r["seed"]) < seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(ap)
    ap.add_argument("--out", type=Path, default=common.SUITE_RESULTS / "baselines_runs.csv")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)")
    args.data_dir = str(Path(args.data_dir).resolve())
    from autopeft.models import inspect_model

    info = inspect_model(common.MODEL)
    configs = common.baselines(info.num_layers, info.hidden_size)
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    rows, lrs = run_baselines(configs, tasks, args, args.out)
    dev = common.summarise(reported(rows, lrs, args.seeds), lambda r: (r["task"], r["name"]), column="dev_metric")
    held = common.summarise(reported(rows, lrs, args.seeds), lambda r: (r["task"], r["name"]))
    spent = common.summarise(rows, lambda r: (r["task"], r["name"]))  # sweep + seeds: the whole cost

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {common.MODEL}, "
          f"{args.train_examples} train examples x {args.epochs:g} epoch, seq {args.max_seq_length}, "
          f"holdout {args.holdout:g} (seed {args.holdout_seed}), {args.seeds} seeds, "
          f"{time.perf_counter() - t0:.0f} s wall. Cells: dev metric mean +- std at the rate chosen on the holdout")
    print(f"{'baseline':10s} {'params':>10s} " + " ".join(f"{t:>22s}" for t in tasks))
    out_rows = []
    for name in configs:
        cells = [dev.get((t, name)) for t in tasks]
        params = next((c["params"] for c in cells if c), float("nan"))
        print(f"{name:10s} {params:10.0f} " + " ".join(
            f"{c['mean']:.3f} +- {c['std']:.3f} @{lrs[(t, name)]:g}".rjust(22) if c else " " * 22
            for t, c in zip(tasks, cells)))
        for t, c in zip(tasks, cells):
            if c:
                out_rows.append({"task": t, "baseline": name, "trainable_params": int(c["params"]),
                                 "learning_rate": lrs[(t, name)], "dev_mean": round(c["mean"], 4),
                                 "dev_std": round(c["std"], 4), "holdout_mean": round(held[(t, name)]["mean"], 4),
                                 "seeds": c["runs"], "cpu_seconds": round(spent[(t, name)]["cpu_seconds"], 1)})
    for t in tasks:
        floor = common.majority_metric(t, args.data_dir, args.train_examples, args.eval_examples, args.seeds)
        cpu = sum(r["cpu_seconds"] for r in out_rows if r["task"] == t)
        print(f"{t}: majority class {floor:.4f} on dev; baselines' sweep + seeds {cpu:.0f} CPU-s")
    table_csv = args.out.with_name("baselines_table.csv")
    common.write_task_table(table_csv, out_rows, tasks)
    common.log_mlflow("baselines", {"train_examples": args.train_examples, "eval_examples": args.eval_examples,
                                    "epochs": args.epochs, "holdout": args.holdout, "seeds": args.seeds,
                                    "tasks": args.tasks},
                      {f"{r['task']}.{r['baseline']}": r["dev_mean"] for r in out_rows},
                      [args.out, table_csv], store=common.SUITE_RESULTS)


if __name__ == "__main__":
    main()
