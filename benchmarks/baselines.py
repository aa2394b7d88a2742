"""Hand-picked PEFT baselines at one fixed budget, on the embedded model and real GLUE files.

Nine baselines (full fine-tuning, LoRA r=8 on query+value, Pfeiffer and Houlsby adapters with
reduction 16, the parallel adapter, prefix tuning of length 30, (IA)3, BitFit, MAM) x five tasks
x seeds, each trained exactly like a search trial (``autopeft.trial.run_config``) at the budget
below, two runs at a time with one torch thread each. Prints mean +- std per task, writes every
run to benchmarks/results/baselines.csv (a stopped run resumes from it) and the table to
baselines_table.csv, and logs one MLflow run.

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/baselines.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from autopeft.config import TrainBudget  # noqa: E402


def baseline_budget(args: argparse.Namespace, seed: int, full_ft: bool) -> TrainBudget:
    return TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples, epochs=args.epochs, seed=seed,
                       learning_rate=common.FULL_FT_LR if full_ft else common.PEFT_LR)


def add_budget_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train-examples", type=int, default=800,
                    help="first N of a seeded shuffle of each train split")
    ap.add_argument("--eval-examples", type=int, default=400,
                    help="dev rows scored (a seeded subsample where the dev split is larger)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(common.TASKS))
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))


def jobs_for(configs: dict, tasks: list[str], args: argparse.Namespace) -> list[dict]:
    return [{"task": task, "name": name, "seed": seed,
             "peft_json": None if peft is None else peft.to_json(),
             "budget_json": json.dumps(baseline_budget(args, seed, peft is None).to_dict())}
            for seed in range(args.seeds) for task in tasks for name, peft in configs.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(ap)
    ap.add_argument("--out", type=Path, default=common.RESULTS / "baselines.csv")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (a folder laid out like GLUE's, e.g. ../shared/data)")
    from autopeft.models import inspect_model

    info = inspect_model(common.MODEL)
    configs = common.baselines(info.num_layers, info.hidden_size)
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    rows = common.run_jobs(jobs_for(configs, tasks, args), args.out, args.data_dir, args.workers)
    rows = [r for r in rows if r["task"] in tasks and r["name"] in configs]
    table = common.summarise(rows, lambda r: (r["task"], r["name"]))

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {common.MODEL}, "
          f"{args.train_examples} train examples x {args.epochs:g} epoch, <= {args.eval_examples} dev examples, "
          f"{args.seeds} seeds, "
          f"{time.perf_counter() - t0:.0f} s wall")
    print(f"{'baseline':10s} {'params':>10s} " + " ".join(f"{t:>15s}" for t in tasks))
    out_rows = []
    for name in configs:
        cells = [table.get((t, name)) for t in tasks]
        params = next((c["params"] for c in cells if c), float("nan"))
        print(f"{name:10s} {params:10.0f} " + " ".join(
            f"{c['mean']:.3f} +- {c['std']:.3f}".rjust(15) if c else " " * 15 for c in cells))
        for t, c in zip(tasks, cells):
            if c:
                out_rows.append({"task": t, "baseline": name, "trainable_params": int(c["params"]),
                                 "metric_mean": round(c["mean"], 4), "metric_std": round(c["std"], 4),
                                 "seeds": c["runs"], "cpu_seconds": round(c["cpu_seconds"], 1)})
    table_csv = args.out.with_name(args.out.stem + "_table.csv")
    common.write_csv(table_csv, out_rows)
    common.log_mlflow("baselines", {"train_examples": args.train_examples, "eval_examples": args.eval_examples,
                                    "epochs": args.epochs,
                                    "seeds": args.seeds, "tasks": args.tasks},
                      {f"{r['task']}.{r['baseline']}": r["metric_mean"] for r in out_rows},
                      [args.out, table_csv])


if __name__ == "__main__":
    main()
