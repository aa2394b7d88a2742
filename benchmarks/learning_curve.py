"""At what training budget does each task leave the majority class? The question to answer before
choosing the budget of baselines.py, and before trusting a comparison made at one.

LoRA r=8 on query+value and the Pfeiffer adapter (the two headline baselines; --baselines), trained
exactly as baselines.py trains them (``autopeft.trial.run_config``, batch 16, seq 64, lr 5e-3 and
1 epoch unless --learning-rates/--epochs say otherwise) on growing seeded subsets of each train
split, scored on the same dev subsample; next to each figure the score of predicting the training
subset's majority label. Writes every run to
benchmarks/results/learning_curve.csv (a stopped run resumes from it) and logs one MLflow run.

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/learning_curve.py \\
        [--tasks rte,mrpc,cola,stsb] [--train-examples 800,3200] [--seeds 1]
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



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="rte,mrpc,cola,stsb")
    ap.add_argument("--train-examples", default="800,3200", help="comma-separated subset sizes; 'all' = the whole split")
    ap.add_argument("--eval-examples", type=int, default=400)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--learning-rates", default=str(common.PEFT_LR), help="comma-separated; the baselines use 5e-3")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--baselines", default="lora_r8,pfeiffer",
                    help="names from benchmarks/_common.py (full_ft wants --learning-rates 5e-5)")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (a folder laid out like GLUE's, e.g. ../shared/data)")
    from autopeft.config import TrainBudget
    from autopeft.models import inspect_model

    info = inspect_model(common.MODEL)
    names = args.baselines.split(",")
    configs = {n: common.baselines(info.num_layers, info.hidden_size)[n] for n in names}
    tasks, sizes = args.tasks.split(","), args.train_examples.split(",")
    lrs = [float(x) for x in args.learning_rates.split(",")]
    jobs = [{"task": task, "name": name, "train_examples": n, "epochs": args.epochs, "learning_rate": lr,
             "seed": seed, "peft_json": None if peft is None else peft.to_json(),  # None: full fine-tuning
             "budget_json": json.dumps(TrainBudget(train_examples=None if n == "all" else int(n),
                                                   eval_examples=args.eval_examples,
                                                   epochs=args.epochs, seed=seed,
                                                   learning_rate=lr).to_dict())}
            for n in sizes for lr in lrs for task in tasks for seed in range(args.seeds)
            for name, peft in configs.items()]
    t0 = time.perf_counter()
    out = common.RESULTS / "learning_curve.csv"
    rows = common.run_jobs(jobs, out, args.data_dir, args.workers,
                           key=("task", "name", "train_examples", "epochs", "learning_rate", "seed"))
    rows = [r for r in rows if int(r["seed"]) < args.seeds and float(r["epochs"]) == args.epochs]
    stats = common.summarise(rows, lambda r: (r["task"], r["name"], r["train_examples"], float(r["learning_rate"])))
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {args.epochs:g} epoch, "
          f"<= {args.eval_examples} dev examples, {args.seeds} seed(s); {time.perf_counter() - t0:.0f} s wall")
    print(f"{'task':6s} {'train':>6s} {'lr':>7s} {'majority':>9s} " + " ".join(f"{n:>16s}" for n in names) + "  CPU-s per run")
    metrics = {}
    for task in tasks:
        floors = {n: common.majority_metric(task, args.data_dir, None if n == "all" else int(n), args.eval_examples,
                                            args.seeds) for n in sizes}
        for n, lr in [(n, lr) for n in sizes for lr in lrs]:
            floor = floors[n]
            cells = [stats.get((task, name, n, lr)) for name in names]
            print(f"{task:6s} {n:>6s} {lr:>7.0e} {floor:>9.3f} " + " ".join(
                f"{c['mean']:>8.3f} ± {c['std']:.3f}" if c else f"{'':>16s}" for c in cells) +
                f"  {max((c['cpu_seconds'] / args.seeds for c in cells if c), default=0):.0f}")
            for name, c in zip(names, cells):
                if c:
                    metrics[f"{task}_{name}_{n}_lr{lr:g}_over_majority"] = c["mean"] - floor
    common.log_mlflow("learning_curve", {"tasks": args.tasks, "train_examples": args.train_examples,
                                         "epochs": args.epochs, "learning_rates": args.learning_rates,
                                         "seeds": args.seeds, "baselines": args.baselines}, metrics, [out])


if __name__ == "__main__":
    main()
