"""Does a search find configurations that beat every hand-pick at equal cost, judged on held-out data?

Per task of the suite: a real ``autopeft search`` (Ray Tune + Optuna + MLflow, the space and
sampler given) whose trials select on the same held-out rows as the baselines
(``--select-on holdout``; benchmarks/baselines.py) at low fidelity (fewer training examples);
then its Pareto front, chosen by those holdout scores and exported with
``autopeft.results.to_export``, is retrained at the suite budget for every seed (at most
--max-front configs: the best within LoRA r=8's parameter count, the best within Pfeiffer's, the
best overall), exactly as the baselines are trained, with the learning rate each trial sampled.
The dev split scores only these retrained configs and the baselines at their chosen rates.

For each task and baseline the table says whether a found configuration dominates it
(``_common.dominates``: dev mean >= and params <=, strictly better in one, a better metric by more
than the larger of the two seed stds), and gives the hypervolume of the found configs over the
baselines' over (dev metric, log10 params) with one reference point per task (the worst metric
and the largest parameter count of either side, plus a margin).

Equal cost: the search (all its trials: the CPU time of its driver, Ray's services and trial workers) plus the
retraining of its front for every seed may use no more CPU-seconds than the baselines' whole
sweep (9 baselines x 3 rates + the extra seeds, their runs' own CPU time). The ratio is printed
per task; above 1 the task is marked over budget (lower --trials or --search-train-examples).

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/search_vs_baselines.py [--trials 10]
        [--scheduler sh --top-seeds 2]   # another search on the same baselines: its own study and CSVs

Writes benchmarks/results/suite/search_vs_baselines_runs_SPACE_SAMPLER_TRIALS.csv (every
retraining run; a stopped run resumes, and so do the searches) and
search_vs_baselines_SPACE_SAMPLER_TRIALS.csv (the table); logs one MLflow run to the suite's own
store (the searches log theirs to experiment autopeft-benchmarks-search in the same store).
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
from baselines import EXTRA, KEY, add_budget_args, chosen_lrs, reported, suite_budget  # noqa: E402

HEADLINE = ("lora_r8", "pfeiffer")


def search_task(task: str, args: argparse.Namespace, budgets: list[float], known: set[str],
                sweep_cpu: float) -> tuple[list, float]:
    """Run (or finish) the low-fidelity search of ``task``; its front as exports, and its CPU-seconds.
    With ``--cpu-share`` its trials may spend that share of ``sweep_cpu`` (the baselines' sweep)."""
    from autopeft.results import load_search, to_export
    from autopeft.search import SearchSettings, run_search

    name = f"svb-{args.space}-{args.sampler}-{task}-{args.trials}{variant(args, '-')}"
    uri = common.tracking_uri(common.SUITE_RESULTS)
    # Trials score on the baselines' held-out rows: the front, and the learning rates in it, are
    # chosen without looking at dev.
    budget = suite_budget(args, 0, common.PEFT_LR).replace(train_examples=args.search_train_examples)
    settings = SearchSettings(
        name=name, task=task, space=args.space, sampler=args.sampler, num_samples=args.trials, budget=budget,
        max_concurrent_trials=args.workers, data_dir=args.data_dir, workdir=str(common.SUITE_RESULTS / "svb"),
        scheduler=args.scheduler, rungs=args.rungs, reduction_factor=args.reduction_factor, top_seeds=args.top_seeds,
        cpu_budget_s=args.cpu_share * sweep_cpu if args.cpu_share else None,
        tracking_uri=uri, experiment="autopeft-benchmarks-search")
    cpu_file = common.SUITE_RESULTS / "svb" / f"{name}.cpu"
    cpu_file.parent.mkdir(parents=True, exist_ok=True)
    total = float(cpu_file.read_text()) if cpu_file.exists() else 0.0  # a resumed search adds to it
    if not _finished(settings):
        # The driver, Ray's services and the trial workers; on disk as it grows, so a search killed
        # and resumed is charged for both parts.
        with common.TreeCPU(on_update=lambda spent: _save(cpu_file, total + spent)) as cpu:
            run_search(settings, show_progress=False)
        total += cpu.seconds
        _save(cpu_file, total)
    record = load_search(name, uri, experiment="autopeft-benchmarks-search")
    # A baseline's own config (a warm start such as Pfeiffer's or LoRA r=8's) retrains to the
    # baseline's numbers and cannot dominate it; a config sampled twice is retrained once.
    unique: dict[str, tuple] = {}
    for t in record.front:
        exp = to_export(record, t)
        form = exp.peft.canonical()
        if form in known:  # a baseline's own config: the baselines' sweep already tried it
            continue
        unique.setdefault(form + str(exp.budget.learning_rate), (t, exp))
    chosen = {id(t) for t in _choose([t for t, _ in unique.values()], budgets, args.max_front)}
    return [(t["trial"], exp) for t, exp in unique.values() if id(t) in chosen], total


def variant(args: argparse.Namespace, sep: str) -> str:
    """How a search differs from every-trial-at-full-budget with one seed, for its study's and its
    CSVs' names (empty for that default, so earlier results keep their names)."""
    parts = [f"sh{args.rungs}x{args.reduction_factor}"] if args.scheduler == "sh" else []
    parts += [f"s{args.top_seeds}"] if args.top_seeds > 1 else []
    parts += [f"cpu{round(args.cpu_share * 100)}"] if args.cpu_share else []
    parts += [args.label] if args.label else []
    return "".join(sep + p for p in parts)


def _save(path: Path, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(seconds))
    os.replace(tmp, path)  # a kill mid-write leaves the old figure, never half a number


def _finished(settings) -> bool:
    """Whether the search holds its trial count or has spent its CPU budget, as the search counts
    both (a search killed with trials running is not finished: resuming asks them again)."""
    import optuna

    try:
        study = optuna.load_study(study_name=settings.name, storage=settings.storage_url())
    except KeyError:  # no such study yet
        return False
    from autopeft.study import counted, target_reached

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    if any(t.state not in finished for t in counted(study.trials)):
        return False
    return target_reached(study.trials, settings.num_samples, settings.cpu_budget_s, settings.full_trials)


def _choose(front: list[dict], budgets: list[float], k: int) -> list[dict]:
    """At most ``k`` front points to retrain: the best one within each parameter budget (the
    headline baselines' counts, as a user would filter with ``autopeft pareto --max-params``),
    then the best overall, then the rest by metric."""
    by_metric = sorted(front, key=lambda t: (-t["metric"], t["trainable_params"]))
    picks = [next((t for t in by_metric if t["trainable_params"] <= b), None) for b in sorted(budgets)]
    out: list[dict] = []
    for t in [*picks, *by_metric]:
        if t is not None and all(t is not o for o in out):
            out.append(t)
    return out[:k]


def hv(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    from autopeft.pareto import hypervolume

    return hypervolume([(-m, math.log10(p)) for m, p in points], ref)


def compare(tasks: list[str], found: dict, base: dict, base_cost: dict, search_cost: dict[str, float], lrs: dict,
            labels: dict, args: argparse.Namespace, unit: str = "CPU-s") -> tuple[list[dict], int]:
    """Per task: the found configs against the baselines (dominance, hypervolume ratio, cost ratio),
    printed and as table rows; and the number of tasks where a found config dominates both headline
    baselines above the majority class. ``found`` / ``base``: ``common.summarise`` of dev metrics;
    ``unit`` names the cost (CPU-seconds here, GPU wall-seconds on a shared GPU)."""
    table, wins = [], 0
    for task in tasks:
        mine = {n: s for (t, n), s in found.items() if t == task and not math.isnan(s["mean"])}
        theirs = {n: s for (t, n), s in base.items() if t == task and not math.isnan(s["mean"])}
        if not theirs:
            print(f"{task}: no baseline runs; run benchmarks/baselines.py --tasks {task} first")
            continue
        if not mine:
            print(f"{task}: the search's front held only baseline configurations; nothing new to retrain")
        every = list(mine.values()) + list(theirs.values())
        ref = (-min(s["mean"] for s in every) + 0.01, math.log10(max(s["params"] for s in every)) + 0.1)
        hv_found = hv([(s["mean"], s["params"]) for s in mine.values()], ref)
        hv_base = hv([(s["mean"], s["params"]) for s in theirs.values()], ref)
        retrain_cpu = sum(s["cpu_seconds"] for s in mine.values())
        base_cpu = base_cost[(task,)]["cpu_seconds"]
        ratio = (search_cost[task] + retrain_cpu) / base_cpu
        headline = []
        floor = common.majority_metric(task, args.data_dir, args.train_examples, args.eval_examples, args.seeds)
        print(f"\n{task}: majority class {floor:.4f}; hypervolume found / baselines = {hv_found / hv_base:.3f}; "
              f"{unit} search {search_cost[task]:.0f} + retrain {retrain_cpu:.0f} vs baselines' sweep {base_cpu:.0f}: "
              f"ratio {ratio:.2f}{' OVER BUDGET' if ratio > 1 else ''}")
        for bname, b in sorted(theirs.items(), key=lambda kv: kv[1]["params"]):
            doms = [(n, s) for n, s in mine.items() if common.dominates(s, b)]
            best = max(doms, key=lambda d: d[1]["mean"], default=None)
            if bname in HEADLINE:
                headline.append(best is not None and best[1]["mean"] > floor)
            print(f"  {bname:9s} {b['mean']:.4f} +- {b['std']:.4f} {b['params']:>10.0f} @{lrs[(task, bname)]:g}  " + (
                f"dominated by {best[0]} {best[1]['mean']:.4f} +- {best[1]['std']:.4f} {best[1]['params']:.0f} "
                f"({labels[(task, best[0])]})" if best else "not dominated"))
            table.append({"task": task, "majority_metric": round(floor, 4), "baseline": bname,
                          "baseline_lr": lrs[(task, bname)], "baseline_metric": round(b["mean"], 4),
                          "baseline_std": round(b["std"], 4), "baseline_params": int(b["params"]),
                          "dominated": best is not None, "by": best[0] if best else "",
                          "by_metric": round(best[1]["mean"], 4) if best else "",
                          "by_std": round(best[1]["std"], 4) if best else "",
                          "by_params": int(best[1]["params"]) if best else "",
                          "by_config": labels[(task, best[0])] if best else "",
                          "hv_found_over_baselines": round(hv_found / hv_base, 4),
                          "search_cpu_seconds": round(search_cost[task]), "retrain_cpu_seconds": round(retrain_cpu),
                          "baselines_cpu_seconds": round(base_cpu), "cpu_ratio": round(ratio, 3)})
        wins += all(headline) and len(headline) == len(HEADLINE)
        for n, s in sorted(mine.items(), key=lambda kv: kv[1]["params"]):
            print(f"  found {n}: {s['mean']:.4f} +- {s['std']:.4f} {s['params']:>10.0f}  {labels[(task, n)]}")
    print(f"\nTasks where a found configuration dominates both LoRA r=8 and Pfeiffer (each at its best rate, "
          f"above the majority class): {wins} of {len(tasks)}")
    return table, wins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(ap)
    ap.add_argument("--trials", type=int, default=10, help="trials per task's search")
    ap.add_argument("--space", default="small")
    ap.add_argument("--sampler", default="gp")
    ap.add_argument("--search-train-examples", type=int, default=512, help="training examples per search trial")
    ap.add_argument("--max-front", type=int, default=3, help="front configs retrained per task")
    ap.add_argument("--scheduler", default="fifo", help="autopeft search --scheduler: fifo or sh")
    ap.add_argument("--rungs", type=int, default=3, help="autopeft search --rungs (sh)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="autopeft search --reduction-factor (sh)")
    ap.add_argument("--top-seeds", type=int, default=1,
                    help="autopeft search --top-seeds: seeds per config at the full budget (its metric is their mean)")
    ap.add_argument("--cpu-share", type=float, default=None,
                    help="the search's trials may spend this share of the task's baseline-sweep CPU-seconds "
                         "(autopeft search --cpu-budget-s); --trials then only caps the count. The rest is for "
                         "retraining the front and the search's driver, so equal cost holds by construction")
    ap.add_argument("--baselines", type=Path, default=common.SUITE_RESULTS / "baselines_runs.csv")
    ap.add_argument("--label", default="",
                    help="appended to the study's and the CSVs' names: a rerun after a change to the search "
                         "starts afresh beside the earlier results instead of resuming them")
    args = ap.parse_args()
    if not all(c.isalnum() for c in args.label):
        ap.error(f"--label takes letters and digits only, got {args.label!r}")
    if args.cpu_share is not None and not 0 < args.cpu_share < 1:
        ap.error(f"--cpu-share is a share of the baselines' sweep, between 0 and 1; got {args.cpu_share}")
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)")
    args.data_dir = str(Path(args.data_dir).resolve())
    base_all = common.in_sweep(common.read_csv(args.baselines))
    lrs = chosen_lrs(base_all)
    base_rows = reported(base_all, lrs, args.seeds)
    if not base_rows:
        sys.exit(f"no baseline runs in {args.baselines}: run benchmarks/baselines.py with the same budget first")
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()

    from autopeft.models import inspect_model

    info = inspect_model(common.MODEL)
    known = {p.canonical() for p in common.baselines(info.num_layers, info.hidden_size).values() if p is not None}
    # What trying the baselines by hand cost: every sweep and seed run, not only the reported ones.
    base_cost = common.summarise([r for r in base_all if r["task"] in tasks], lambda r: (r["task"],))
    jobs, search_cpu, labels = [], {}, {}
    for task in tasks:
        budgets = [float(r["trainable_params"]) for r in base_rows if r["task"] == task and r["name"] in HEADLINE]
        front, search_cpu[task] = search_task(task, args, budgets, known, base_cost[(task,)]["cpu_seconds"])
        for trial, exp in front:
            name = f"t{trial:03d}"
            labels[(task, name)] = exp.peft.describe()
            for seed in range(args.seeds):  # at the rate the trial sampled (chosen on the holdout)
                budget = suite_budget(args, seed, exp.budget.learning_rate)
                jobs.append({"task": task, "name": name, "lr": exp.budget.learning_rate, "seed": seed,
                             "peft_json": exp.peft.to_json(), "budget_json": json.dumps(budget.to_dict())})
    tag = f"{args.space}_{args.sampler}_{args.trials}{variant(args, '_')}"
    runs_csv = common.SUITE_RESULTS / f"search_vs_baselines_runs_{tag}.csv"
    rows = common.run_jobs(jobs, runs_csv, args.data_dir, args.workers, key=KEY, extra=EXTRA)
    wanted = {(j["task"], j["name"]) for j in jobs}
    found = common.summarise([r for r in rows if (r["task"], r["name"]) in wanted and int(r["seed"]) < args.seeds],
                             lambda r: (r["task"], r["name"]), column="dev_metric")
    base = common.summarise(base_rows, lambda r: (r["task"], r["name"]), column="dev_metric")

    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; search: {args.space} space, "
          f"{args.sampler}, scheduler {args.scheduler}{variant(args, ' ')}, "
          f"{'at most ' if args.cpu_share else ''}{args.trials} trials of "
          f"{args.search_train_examples} train examples, scored on a "
          f"{args.holdout:g}-row holdout; retraining and baselines: {args.train_examples} examples x {args.epochs:g} "
          f"epoch, {args.seeds} seeds, reported on dev; {time.perf_counter() - t0:.0f} s wall")
    table, wins = compare(tasks, found, base, base_cost, search_cpu, lrs, labels, args)
    table_csv = common.SUITE_RESULTS / f"search_vs_baselines_{tag}.csv"
    common.write_task_table(table_csv, table, tasks)
    common.log_mlflow("search_vs_baselines", {"trials": args.trials, "cpu_share": args.cpu_share,
                                              "space": args.space, "sampler": args.sampler,
                                              "scheduler": args.scheduler, "top_seeds": args.top_seeds,
                                              "search_train_examples": args.search_train_examples,
                                              "train_examples": args.train_examples, "holdout": args.holdout,
                                              "seeds": args.seeds},
                      {"tasks_dominating_both": wins}, [runs_csv, table_csv], store=common.SUITE_RESULTS)


if __name__ == "__main__":
    main()
