"""Which multi-objective sampler finds a good front in the fewest trials?

Random search, MO-TPE, NSGA-II and the GP (Bayesian optimisation) sampler, each built exactly as
``autopeft search --sampler NAME`` builds it, drive the same space (``search_spaces/autopeft.yaml``,
its warm start included) at the same low-fidelity budget on SST-2, for several seeds. Trials run
one after another in one process per (sampler, seed), so every sampler sees every earlier result;
two such processes run at a time. The trial itself is a search trial (``autopeft.trial.run_config``)
and the study is a real Optuna SQLite study (benchmarks/results/samplers.db), so a stopped run
resumes.

Hypervolume after each trial is over (1 - metric, log10 trainable params), with one reference
point for every run: the worst metric and the largest parameter count seen in any run, plus a
margin. A run "reaches 90%" at the first trial whose hypervolume is at least 90% of the best final
hypervolume of any run.

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/samplers.py [--trials 10 --seeds 3]

Writes samplers_trials.csv (every trial) and samplers.csv (the table), logs one MLflow run and
draws hypervolume against trials in samplers.png.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SAMPLER_NAMES = ("random", "tpe", "nsga2", "gp")


def run_sampler(sampler: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """``args.trials`` trials of one sampler and seed; returns every completed trial's objectives."""
    import optuna
    import torch

    from autopeft.config import PeftConfig, TrainBudget
    from autopeft.models import inspect_model
    from autopeft.spaces import load_space
    from autopeft.trial import TrialContext, run_config

    common._quiet_worker()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    num_layers = inspect_model(common.MODEL).num_layers
    sample = space.define_by_run(num_layers)
    budget = TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples)
    ctx = TrialContext(common.MODEL, args.task, budget, args.data_dir)
    study = common.resumable_study(f"sqlite:///{common.RESULTS / 'samplers.db'}",
                                   f"{args.space}-{args.task}-{sampler}-{seed}", sampler, seed, args.trials)
    for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):  # left by a stopped run
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if not study.trials:
        for point in space.warm_start_points(num_layers):  # as the search does
            study.enqueue_trial(point)
    while len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) < args.trials:
        trial = study.ask()
        config = sample(trial)
        cpu0 = time.process_time()
        try:
            report = run_config(ctx, PeftConfig.from_dict(config["peft_config"]), budget.replace(**config["training"]))
        except Exception as exc:  # a failed trial is recorded and the search goes on, as in autopeft search
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"{sampler} seed {seed} trial {trial.number} failed: {exc}", flush=True)
            continue
        trial.set_user_attr("cpu_seconds", time.process_time() - cpu0)
        study.tell(trial, [report["metric"], report["trainable_params"]])
        print(f"{sampler} seed {seed} trial {trial.number}: {report['metric']:.4f} "
              f"{report['trainable_params']} params", flush=True)
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    return [{"sampler": sampler, "seed": seed, "trial": i, "metric": t.values[0], "trainable_params": int(t.values[1]),
             "cpu_seconds": round(t.user_attrs.get("cpu_seconds", math.nan), 1)}
            for i, t in enumerate(sorted(done, key=lambda t: t.number)[:args.trials])]


def hv_curves(rows: list[dict]) -> dict[tuple[str, int], list[float]]:
    from autopeft.pareto import hypervolume

    worst = min(r["metric"] for r in rows)
    largest = max(math.log10(r["trainable_params"]) for r in rows)
    ref = (1 - worst + 0.01, largest + 0.1)  # just past the worst point on each axis
    curves: dict[tuple[str, int], list[float]] = {}
    for key in sorted({(r["sampler"], r["seed"]) for r in rows}):
        pts = [(1 - r["metric"], math.log10(r["trainable_params"]))
               for r in sorted((r for r in rows if (r["sampler"], r["seed"]) == key), key=lambda r: r["trial"])]
        curves[key] = [hypervolume(pts[:i + 1], ref) for i in range(len(pts))]
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samplers", default=",".join(SAMPLER_NAMES))
    ap.add_argument("--space", default="autopeft")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--train-examples", type=int, default=384)
    ap.add_argument("--eval-examples", type=int, default=200, help="dev rows scored per trial (SST-2 has 872)")
    args = common.parse_with_data_dir(ap)
    common.RESULTS.mkdir(exist_ok=True)
    samplers = args.samplers.split(",")
    t0 = time.perf_counter()
    # GP runs first: its fits get slower with every trial, so it should not be the straggler.
    jobs = [(s, seed) for s in sorted(samplers, key=lambda s: s != "gp") for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers, common.SPAWN) as pool:
        futures = [pool.submit(run_sampler, s, seed, args) for s, seed in jobs]
        rows = [r for f in futures for r in f.result()]
    wall = time.perf_counter() - t0
    trials_csv = common.RESULTS / "samplers_trials.csv"
    common.write_csv(trials_csv, rows)

    curves = hv_curves(rows)
    best = max(c[-1] for c in curves.values())
    table = []
    for s in samplers:
        runs = [curves[(s, seed)] for seed in range(args.seeds)]
        to90 = [next((i + 1 for i, v in enumerate(c) if v >= 0.9 * best), math.inf) for c in runs]
        final = [c[-1] / best for c in runs]
        cpu = sum(r["cpu_seconds"] for r in rows if r["sampler"] == s)
        table.append({"sampler": s, "trials_to_90pct": " ".join("-" if math.isinf(t) else str(t) for t in to90),
                      "median_trials_to_90pct": statistics.median(to90),
                      "reached_90pct": sum(not math.isinf(t) for t in to90),
                      "final_hv_over_best_mean": round(statistics.fmean(final), 4),
                      "final_hv_over_best_std": round(statistics.stdev(final), 4) if len(final) > 1 else 0.0,
                      "best_metric_mean": round(statistics.fmean(
                          max(r["metric"] for r in rows if r["sampler"] == s and r["seed"] == seed)
                          for seed in range(args.seeds)), 4),
                      "trial_cpu_seconds": round(cpu, 0)})
    table_csv = common.RESULTS / "samplers.csv"
    common.write_csv(table_csv, table)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; space {args.space}, task "
          f"{args.task}, {args.train_examples} train / {args.eval_examples} dev examples, {args.trials} trials x "
          f"{args.seeds} seeds per sampler, {wall:.0f} s wall")
    print(f"{'sampler':8s} {'trials to 90% (per seed)':>26s} {'median':>7s} {'final HV / best':>17s} {'best metric':>12s}")
    for r in sorted(table, key=lambda r: (r["median_trials_to_90pct"], -r["final_hv_over_best_mean"])):
        print(f"{r['sampler']:8s} {r['trials_to_90pct']:>26s} {r['median_trials_to_90pct']:>7} "
              f"{r['final_hv_over_best_mean']:.3f} +- {r['final_hv_over_best_std']:.3f} {r['best_metric_mean']:12.4f}")
    png = common.RESULTS / "samplers.png"
    _plot(curves, best, png)
    common.log_mlflow("samplers", {k: getattr(args, k) for k in ("trials", "seeds", "space", "task", "train_examples",
                                                                  "eval_examples")},
                      {f"{r['sampler']}.final_hv_over_best": r["final_hv_over_best_mean"] for r in table},
                      [trials_csv, table_csv, png])


def _plot(curves: dict, best: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = dict(zip(SAMPLER_NAMES, ("tab:gray", "tab:blue", "tab:green", "tab:red")))
    for (s, seed), c in curves.items():
        ax.plot(range(1, len(c) + 1), [v / best for v in c], color=colours.get(s), alpha=0.8,
                label=s if seed == 0 else None)
    common.finish_hv_plot(fig, [ax], 0.9, "trial", path)


if __name__ == "__main__":
    main()
