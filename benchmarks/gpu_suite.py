"""The suite at a larger budget on a lent GPU machine: the protocol of baselines.py and
search_vs_baselines.py, run where Ray and MLflow are not.

A GPU machine is lent here for minutes, holds torch but neither Ray, MLflow nor `adapters`, and
takes only the working tree plus carried files (benchmarks/README.md, "The suite on a GPU", says what
travels). So this one script does, task by task, with ``--workers`` processes sharing the GPU:

1. the baselines: ``baselines.run_baselines`` (the 3-rate sweeps chosen on the holdout, then seeds);
2. the search: Optuna ask/tell in this process with the project's space, sampler, warm starts and
   duplicate vetting (``autopeft.spaces``, ``autopeft.samplers``, ``autopeft.reuse``): what
   ``autopeft search`` does through Ray Tune, minus Ray. Trials train in the same worker pool
   (``_common.train_once``) and score on the baselines' held-out rows;
3. its front (holdout metric vs trainable params), at most ``--max-front`` configs picked as
   search_vs_baselines.py picks them, retrained for every seed at the suite budget;
4. the comparison (``search_vs_baselines.compare``). Cost is each run's wall-seconds: every run,
   baseline or search, shares the GPU with the same number of others, and a GPU run's CPU time
   says little.

Every run is appended to a CSV as it finishes, and the same command resumes from them (the search
re-tells its finished trials to a fresh study). Past ``--deadline`` seconds no new run starts, so a
machine lent for a fixed time returns complete rows. ``--report``, here once the CSVs are back,
prints the table from them and logs them to the suite's MLflow store.

    # on the GPU machine (AUTOPEFT_BENCH_MODEL: the model's files; AUTOPEFT_BENCH_RESULTS: where CSVs go)
    AUTOPEFT_BENCH_DEVICE=cuda python benchmarks/gpu_suite.py --data-dir DATA --tasks mr --train-examples 8192 \\
        --search-train-examples 8192 --trials 20 --workers 12 --deadline 480
    # here, after copying the CSVs into benchmarks/results/suite/
    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/gpu_suite.py --report --tasks mr --train-examples 8192 ...
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from baselines import EXTRA, KEY, add_budget_args, chosen_lrs, reported, run_baselines, suite_budget  # noqa: E402
from search_vs_baselines import HEADLINE, _choose, compare  # noqa: E402

TRIAL_FIELDS = ("task", "trial", "action", "metric", "dev_metric", "trainable_params", "lr", "train_loss",
                "cpu_seconds", "wall_seconds", "sampler_seconds", "params_json", "peft")


def files(args: argparse.Namespace) -> dict[str, Path]:
    out = {k: common.SUITE_RESULTS / f"{args.tag}_{k}.csv" for k in ("search_trials", "search_runs", "table")}
    return {"baselines_runs": common.SUITE_RESULTS / f"{args.baselines_tag or args.tag}_baselines_runs.csv", **out}


def search(task: str, args: argparse.Namespace, out: Path, deadline: float) -> None:
    """Run (or finish) ``args.trials`` trials of the space on ``task``; each row lands in ``out``."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import optuna
    from optuna.distributions import distribution_to_json, json_to_distribution
    from optuna.trial import TrialState, create_trial

    from autopeft.build import count_trainable_params
    from autopeft.models import inspect_model
    from autopeft.reuse import Vetting, tell_refused, tell_reuse
    from autopeft.samplers import SAMPLERS
    from autopeft.spaces import load_space
    from autopeft.tasks import load_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = inspect_model(common.MODEL)
    space = load_space(args.space)
    space.check_model(info.num_layers)
    num_labels = load_task(task).num_labels
    budget = suite_budget(args, 0, common.PEFT_LR).replace(train_examples=args.search_train_examples)
    # The objectives of `autopeft search`'s default: the task metric (max) and trainable params (min).
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=SAMPLERS[args.sampler](0, args.trials))
    rows = [r for r in common.read_csv(out) if r["task"] == task]
    for r in rows:  # a resumed search: the finished trials, told to the fresh study in their order
        params = json.loads(r["params_json"])
        # a failed run (diverged, refused) was written with an empty metric
        values = [float(r[k] or "nan") for k in ("metric", "trainable_params")]
        ok = r["action"] in ("run", "reuse") and all(math.isfinite(v) for v in values)
        study.add_trial(create_trial(
            params={k: v for k, (v, _) in params.items()},
            distributions={k: json_to_distribution(d) for k, (_, d) in params.items()},
            values=values if ok else None, state=TrialState.COMPLETE if ok else TrialState.FAIL))
    if not rows:
        for point in space.warm_start_points(info.num_layers):  # the hand-picks the space starts from
            study.enqueue_trial(point)
    define = space.define_by_run(info.num_layers)
    vetting = Vetting(budget, space.min_peft_params,
                      lambda peft: count_trainable_params(common.MODEL, peft, num_labels, info))
    counted = sum(r["action"] != "refused" for r in rows)
    new_file = not out.exists()
    pending: dict = {}
    with open(out, "a", newline="") as f, ProcessPoolExecutor(args.workers, common.SPAWN,
                                                            initializer=common._quiet_worker) as pool:
        writer = csv.DictWriter(f, fieldnames=TRIAL_FIELDS, extrasaction="ignore")
        if new_file:
            writer.writeheader()

        def record(trial, action: str, result: dict, lr: float, peft_json: str, sampler_s: float) -> None:
            params = {k: [v, distribution_to_json(trial.distributions[k])] for k, v in trial.params.items()}
            writer.writerow({"task": task, "trial": trial.number, "action": action, **result, "lr": lr,
                             "sampler_seconds": round(sampler_s, 3), "params_json": json.dumps(params),
                             "peft": peft_json})
            f.flush()
            print(f"{task} trial {trial.number} {action}: metric {float(result.get('metric', math.nan)):.4f} "
                  f"params {result.get('trainable_params')} wall {float(result.get('wall_seconds') or 0):.0f}s",
                  flush=True)

        while True:
            while len(pending) < args.workers and counted < args.trials and time.time() < deadline:
                t0 = time.perf_counter()
                trial = study.ask()
                config = define(trial)
                action, detail = vetting.check(study.get_trials(deepcopy=False), trial, config)
                lr = config["training"].get("learning_rate", common.PEFT_LR)
                peft_json = json.dumps(config["peft_config"])
                if action == "refuse":  # below the space's minimum size: not trained, not counted
                    tell_refused(study, trial, detail)
                    record(trial, "refused", {"metric": math.nan}, lr, peft_json, time.perf_counter() - t0)
                    continue
                counted += 1
                if action == "reuse":  # a config already evaluated: its result again, no training
                    tell_reuse(study, trial, detail)
                    record(trial, "reuse", {"metric": detail.values[0], "trainable_params": detail.values[1]},
                           lr, peft_json, time.perf_counter() - t0)
                    continue
                run_budget = budget.replace(**config["training"])
                fut = pool.submit(common.train_once, task, peft_json, json.dumps(run_budget.to_dict()), args.data_dir)
                pending[fut] = (trial, lr, peft_json, time.perf_counter() - t0)
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                trial, lr, peft_json, sampler_s = pending.pop(fut)
                t0 = time.perf_counter()
                try:
                    result = fut.result()  # a failed run comes back with NaN and its cost (train_once)
                except Exception as exc:  # the worker itself died
                    result = {"metric": math.nan, "train_loss": f"{type(exc).__name__}: {exc}"[:200]}
                values = [float(result["metric"]), float(result.get("trainable_params", math.nan))]
                if all(math.isfinite(v) for v in values):
                    study.tell(trial, values)
                    action = "run"
                else:  # recorded, and the search goes on
                    study.tell(trial, state=TrialState.FAIL)
                    action = "failed"
                record(trial, action, result, lr, peft_json, sampler_s + time.perf_counter() - t0)


def front(rows: list[dict[str, str]], known: set[str]) -> list[dict]:
    """The search's non-dominated trials on (holdout metric, params), one per distinct config and
    rate, without the baselines' own configs (the sweep already tried those)."""
    from autopeft.config import PeftConfig
    from autopeft.pareto import pareto_front

    ran = [{"trial": int(r["trial"]), "metric": float(r["metric"]), "trainable_params": float(r["trainable_params"]),
            "lr": float(r["lr"]), "peft": PeftConfig.from_json(r["peft"])} for r in rows if r["action"] == "run"]
    on_front = [ran[i] for i in pareto_front([(t["metric"], t["trainable_params"]) for t in ran], ["max", "min"])]
    unique: dict[str, dict] = {}
    for t in on_front:
        form = t["peft"].canonical()
        if form not in known:
            unique.setdefault(form + str(t["lr"]), t)
    return list(unique.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(ap)
    ap.add_argument("--trials", type=int, default=20, help="trials per task's search")
    ap.add_argument("--space", default="small")
    ap.add_argument("--sampler", default="gp")
    ap.add_argument("--search-train-examples", type=int, default=2048, help="training examples per search trial")
    ap.add_argument("--max-front", type=int, default=3, help="front configs retrained per task")
    ap.add_argument("--deadline", type=float, default=None, help="seconds from start after which no new run starts")
    ap.add_argument("--tag", default="gpu", help="prefix of this pass's CSVs in the suite's results folder")
    ap.add_argument("--baselines-tag", default=None,
                    help="the pass whose baselines CSV to use and extend (default: --tag): a search rerun "
                         "after a fix to the search keeps the baselines it is compared with")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: the table from the CSVs, logged to the suite's MLflow store")
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir or AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)")
    args.data_dir = str(Path(args.data_dir).resolve())
    start = time.time()
    deadline = start + args.deadline if args.deadline else math.inf
    paths = files(args)
    tasks = args.tasks.split(",")

    from autopeft.models import inspect_model

    info = inspect_model(common.MODEL)
    configs = common.baselines(info.num_layers, info.hidden_size)
    known = {p.canonical() for p in configs.values() if p is not None}
    if not args.report:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        print(f"{platform.node()}: {gpu}, {os.cpu_count()} CPUs; device {common.DEVICE}, {args.workers} workers",
              flush=True)
    for task in [] if args.report else tasks:
        print(f"== {time.strftime('%H:%M:%S')} {task}: baselines", flush=True)
        rows, lrs = run_baselines(configs, [task], args, paths["baselines_runs"], deadline)
        print(f"== {time.strftime('%H:%M:%S')} {task}: search", flush=True)
        search(task, args, paths["search_trials"], deadline)
        print(f"== {time.strftime('%H:%M:%S')} {task}: retraining the front", flush=True)
        retrain(task, args, paths, known, lrs, deadline)

    # The comparison, from the CSVs alone (as --report makes it here).
    base_all = [r for r in common.in_sweep(common.read_csv(paths["baselines_runs"])) if r["task"] in tasks]
    lrs = chosen_lrs(base_all)
    base_rows = reported(base_all, lrs, args.seeds)
    trials = [r for r in common.read_csv(paths["search_trials"]) if r["task"] in tasks]
    runs = [r for r in common.read_csv(paths["search_runs"]) if r["task"] in tasks and int(r["seed"]) < args.seeds]
    labels = {(r["task"], r["name"]): _describe(r["peft"]) for r in runs}
    cost = "wall_seconds"
    found = common.summarise(runs, lambda r: (r["task"], r["name"]), column="dev_metric", cost=cost)
    base = common.summarise(base_rows, lambda r: (r["task"], r["name"]), column="dev_metric", cost=cost)
    base_cost = common.summarise(base_all, lambda r: (r["task"],), cost=cost)
    search_cost = {t: sum(float(r["wall_seconds"] or 0) + float(r["sampler_seconds"] or 0)
                          for r in trials if r["task"] == t) for t in tasks}
    print(f"\n{time.strftime('%Y-%m-%d')}; search: {args.space} space, {args.sampler}, {args.trials} trials of "
          f"{args.search_train_examples} train examples, scored on a {args.holdout:g}-row holdout; retraining and "
          f"baselines: {args.train_examples} examples x {args.epochs:g} epoch, seq {args.max_seq_length}, "
          f"{args.seeds} seeds, reported on dev; cost: each run's wall-seconds, {args.workers} runs sharing the GPU")
    table, wins = compare([t for t in tasks if (t,) in base_cost], found, base, base_cost, search_cost, lrs, labels,
                          args, unit="GPU wall-s")
    common.write_task_table(paths["table"], table, tasks)
    if args.report:
        common.log_mlflow(f"{args.tag}_suite", {"train_examples": args.train_examples, "trials": args.trials,
                                                "search_train_examples": args.search_train_examples,
                                                "holdout": args.holdout, "seeds": args.seeds, "tasks": args.tasks},
                          {"tasks_dominating_both": wins}, [p for p in paths.values() if p.exists()],
                          store=common.SUITE_RESULTS)


def retrain(task: str, args: argparse.Namespace, paths: dict[str, Path], known: set[str], lrs: dict,
            deadline: float) -> None:
    """The front's chosen configs (the best within each headline baseline's size, then the best
    overall), every seed at the suite budget and at the rate the trial sampled."""
    trials = [r for r in common.read_csv(paths["search_trials"]) if r["task"] == task]
    budgets = [float(r["trainable_params"]) for r in common.read_csv(paths["baselines_runs"])
               if r["task"] == task and r["name"] in HEADLINE and lrs.get((task, r["name"])) == float(r["lr"])]
    picks = _choose(front(trials, known), sorted(set(budgets)), args.max_front)
    jobs = [{"task": task, "name": f"t{t['trial']:03d}", "lr": t["lr"], "seed": seed, "peft_json": t["peft"].to_json(),
             "budget_json": json.dumps(suite_budget(args, seed, t["lr"]).to_dict())}
            for t in picks for seed in range(args.seeds)]
    common.run_jobs(jobs, paths["search_runs"], args.data_dir, args.workers, key=KEY, extra=EXTRA, deadline=deadline)


def _describe(peft_json: str) -> str:
    from autopeft.config import PeftConfig

    return PeftConfig.from_json(peft_json).describe()


if __name__ == "__main__":
    main()
