"""How well does a low fidelity rank configurations, and how well does a second seed agree with
the first at the full budget?

Successive halving (``--scheduler sh``) and any search that selects by one training run assume
that a trial's metric ranks it. ``multifidelity.py`` can only see the rank agreement between
rungs among the trials that were promoted (a narrowed range). Here every configuration goes
through every rung: N configurations drawn at random from the space (the same draws on every
rerun), each trained to the full budget with seed 0 and seed 1, its metric read at every rung as
the scheduler would read it (``fidelity.rung_rows`` selection rows below the top rung). Printed:
Spearman's rank correlation, with a 95% interval (Fisher z), of

- rung k with seed 0 vs the full budget with seed 0 (what promotion at rung k can know),
- rung k with seed 0 vs the full budget with seed 1 (the same, without a shared training run),
- the full budget with seed 0 vs seed 1: the ceiling no fidelity and no scheduler can beat.

Over every configuration and over those that learned (both full-budget runs above the majority
class of the selection split + 0.05; a configuration stuck at the class prior is easy to rank low
at any fidelity).

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/rank_agreement.py \\
        [--task sst2] [--configs 16] [--space autopeft] [--train-examples 2048]

Writes rank_agreement_runs.csv (every run, appended as it finishes; a stopped run resumes and a
run the CSV holds is not run again), rank_agreement.csv (the table) and rank_agreement_TASK.png under
benchmarks/results, and logs one MLflow run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SEEDS = (0, 1)
LEARNED_MARGIN = 0.05  # above the majority class by this much: the configuration learned something


def draw_configs(space_name: str, n: int, seed: int) -> list[dict]:
    """``n`` random configurations of the space with at least one PEFT module, the same on every call."""
    import optuna

    from autopeft.config import PeftConfig
    from autopeft.models import inspect_model
    from autopeft.spaces import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sample = load_space(space_name).define_by_run(inspect_model(common.MODEL).num_layers)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs: list[dict] = []
    while len(configs) < n:
        config = sample(study.ask())
        if PeftConfig.from_dict(config["peft_config"]).methods:  # the head-only config is refused by every shipped space
            configs.append(config)
    return configs


def run_one(index: int, config: dict, seed: int, args: argparse.Namespace) -> dict:
    """Train one configuration with one seed to the full budget; its metric at every rung."""
    import torch

    from autopeft.config import PeftConfig, TrainBudget
    from autopeft.fidelity import rung_fractions
    from autopeft.objectives import resolve_objectives
    from autopeft.trial import TrialContext, run_config

    common._quiet_worker()
    torch.set_num_threads(1)
    budget = TrainBudget(train_examples=args.train_examples, seed=seed, select_on="holdout", holdout_size=args.holdout)
    ctx = TrialContext(common.MODEL, args.task, budget, args.data_dir,
                       rungs=rung_fractions(args.rungs, args.reduction_factor),
                       rung_objectives=tuple(resolve_objectives("metric,trainable_params")))
    at_rungs: list[float] = []

    def go_on(report: dict) -> bool:  # every configuration passes every rung
        at_rungs.append(report["metric"])
        return True

    cpu0 = time.process_time()
    report = run_config(ctx, PeftConfig.from_dict(config["peft_config"]), budget.replace(**config["training"]),
                        on_rung=go_on)
    return {"task": args.task, "config": index, "seed": seed, "trainable_params": report["trainable_params"],
            "learning_rate": config["training"].get("learning_rate", budget.learning_rate),
            **{f"rung{k}": round(m, 4) for k, m in enumerate(at_rungs)}, "full": round(report["metric"], 4),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "describe": PeftConfig.from_dict(config["peft_config"]).describe()}


def spearman(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Spearman's rho with a 95% interval from Fisher's z (standard error 1.03 / sqrt(n - 3))."""
    from scipy.stats import spearmanr

    n = len(xs)
    if n < 4:
        return math.nan, math.nan, math.nan
    rho = float(spearmanr(xs, ys).statistic)
    if math.isnan(rho):  # a constant reading (every configuration at the class prior) ranks nothing
        return math.nan, math.nan, math.nan
    z, half = math.atanh(max(-0.9999, min(0.9999, rho))), 1.96 * 1.03 / math.sqrt(n - 3)
    return rho, math.tanh(z - half), math.tanh(z + half)


def paired(rows: list[dict]) -> tuple[dict[tuple[int, int], dict], list[int]]:
    """Runs by (configuration, seed), and the configurations that have a run for every seed."""
    runs = {(int(r["config"]), int(r["seed"])): r for r in rows}
    return runs, sorted({c for c, _ in runs if all((c, s) in runs for s in SEEDS)})


def learned_configs(rows: list[dict], floor: float) -> list[int]:
    runs, configs = paired(rows)
    return [c for c in configs if all(float(runs[(c, s)]["full"]) > floor + LEARNED_MARGIN for s in SEEDS)]


def seed_noise(rows: list[dict], floor: float) -> dict[str, float]:
    """Over the configurations that learned: ``_common.variance_split`` of their full-budget runs,
    with the ranges of the runs and of the two-seed means."""
    runs, _ = paired(rows)
    learned = learned_configs(rows, floor)
    if len(learned) < 3:
        return {}
    full = [[float(runs[(c, s)]["full"]) for s in SEEDS] for c in learned]
    means = [statistics.fmean(f) for f in full]
    return {"learned": len(learned), **common.variance_split(full), "means_low": min(means),
            "means_high": max(means), "run_low": min(min(f) for f in full), "run_high": max(max(f) for f in full)}


def agreement(rows: list[dict], fractions: tuple[float, ...], floor: float) -> list[dict]:
    """The table: for each pair of readings, over every configuration and over those that learned.
    ``fractions``: the rungs' shares of the full budget (``fidelity.rung_fractions``)."""
    runs, configs = paired(rows)
    learned = learned_configs(rows, floor)
    readings = [(f"rung{k}", f"rung {k} (1/{round(1 / f)})") for k, f in enumerate(fractions[:-1])]
    pairs = [(key, 0, label, seed) for seed in SEEDS for key, label in readings] + [("full", 0, "full budget", 1)]
    out = []
    for key, seed, label, against in pairs:
        for which, subset in (("all", configs), ("learned", learned)):
            rho, lo, hi = spearman([float(runs[(c, seed)][key]) for c in subset],
                                   [float(runs[(c, against)]["full"]) for c in subset])
            out.append({"task": rows[0]["task"], "reading": f"{label}, seed {seed}",
                        "against": f"full budget, seed {against}", "configs": which, "n": len(subset),
                        "spearman": round(rho, 2), "ci_low": round(lo, 2), "ci_high": round(hi, 2),
                        "metric_name": f"{which}.{key}_seed{seed}_vs_full_seed{against}"})
    # Where the space searches the learning rate: does a reading rank the configurations by their
    # rate? A short run favours fast learners (short-horizon bias), which a full budget may not.
    if len({runs[(c, 0)]["learning_rate"] for c in configs}) > 1:
        rates = [float(runs[(c, 0)]["learning_rate"]) for c in configs]
        for seed in SEEDS:
            for key, label in readings + [("full", "full budget")]:
                rho, lo, hi = spearman(rates, [float(runs[(c, seed)][key]) for c in configs])
                out.append({"task": rows[0]["task"], "reading": f"{label}, seed {seed}", "against": "learning rate",
                            "configs": "all", "n": len(configs), "spearman": round(rho, 2), "ci_low": round(lo, 2),
                            "ci_high": round(hi, 2), "metric_name": f"all.{key}_seed{seed}_vs_learning_rate"})
    return out


def _plot(rows: list[dict], rungs: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, configs = paired(rows)
    panels = [(f"rung{k}", 0, f"rung {k}, seed 0") for k in range(rungs - 1)] + [("full", 1, "full budget, seed 1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + 1, 4), squeeze=False, layout="constrained")
    rates = [float(runs[(c, 0)]["learning_rate"]) for c in configs]
    colour = {"c": [math.log10(r) for r in rates], "cmap": "viridis"} if len(set(rates)) > 1 else {}
    for ax, (key, seed, label) in zip(axes[0], panels):
        dots = ax.scatter([float(runs[(c, seed)][key]) for c in configs], [float(runs[(c, 0)]["full"]) for c in configs],
                          s=18, **colour)
        if key == "full":  # the line two seeds would fall on if the configuration alone set the metric
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("full budget, seed 0")
    if colour:  # the space searches the rate: show which rates each reading favours
        fig.colorbar(dots, ax=list(axes[0]), label="log10 learning rate")
    fig.suptitle(f"{rows[0]['task']}: {len(configs)} random configurations, metric on the selection split")
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--configs", type=int, default=16, help="random configurations, each trained with 2 seeds")
    ap.add_argument("--draw-seed", type=int, default=0, help="seeds the random draws of configurations")
    ap.add_argument("--space", default="autopeft")
    ap.add_argument("--train-examples", type=int, default=2048)
    ap.add_argument("--holdout", type=float, default=500, help="selection split: rows held out of train")
    ap.add_argument("--rungs", type=int, default=3)
    ap.add_argument("--reduction-factor", type=int, default=3)
    args = common.parse_with_data_dir(ap)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    runs_csv = common.RESULTS / "rank_agreement_runs.csv"
    # Rows of other tasks, spaces or budgets are kept, and not mistaken for this run's.
    setting = {"task": args.task, "space": args.space, "train_examples": str(args.train_examples),
               "rungs": str(args.rungs), "draw_seed": str(args.draw_seed)}
    kept = common.read_csv(runs_csv)
    mine = [r for r in kept if all(r.get(k) == v for k, v in setting.items())]
    done = {(int(r["config"]), int(r["seed"])) for r in mine}
    configs = draw_configs(args.space, args.configs, args.draw_seed)
    jobs = [(i, s) for i in range(len(configs)) for s in SEEDS if (i, s) not in done]
    t0 = time.perf_counter()
    print(f"{len(done)} runs recorded, {len(jobs)} to run ({args.task}, {len(configs)} configurations x {len(SEEDS)} seeds)",
          flush=True)
    with ProcessPoolExecutor(args.workers, common.SPAWN) as pool:
        futures = [pool.submit(run_one, i, configs[i], s, args) for i, s in jobs]
        for future in as_completed(futures):
            row = {**setting, **future.result()}
            kept.append(row)
            mine.append(row)
            common.write_csv(runs_csv, kept)  # each finished run lands at once
            print(f"config {row['config']} seed {row['seed']}: " + " ".join(
                f"{row[f'rung{k}']:.3f}" for k in range(args.rungs - 1)) + f" -> {row['full']:.3f}  "
                f"{row['trainable_params']:,} params, {row['cpu_seconds']:.0f} CPU-s  {row['describe']}", flush=True)
    mine = [r for r in mine if int(r["config"]) < args.configs]
    floor = common.majority_metric(args.task, args.data_dir, args.train_examples, None, 1, holdout=args.holdout)
    from autopeft.fidelity import rung_fractions

    table = agreement(mine, rung_fractions(args.rungs, args.reduction_factor), floor)
    table_csv = common.RESULTS / "rank_agreement.csv"
    common.write_csv(table_csv, [r for r in common.read_csv(table_csv) if r["task"] != args.task] + table)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {args.task}, space {args.space}, "
          f"{args.train_examples} train examples, {args.rungs} rungs, eta {args.reduction_factor}; majority class "
          f"{floor:.3f}; {time.perf_counter() - t0:.0f} s wall")
    print("| reading | against | configurations | n | Spearman | 95% interval |\n|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['reading']} | {r['against']} | {r['configs']} | {r['n']} | {r['spearman']} | "
              f"{r['ci_low']} to {r['ci_high']} |")
    noise = seed_noise(mine, floor)
    if noise:
        print(f"\n{noise['learned']} configurations learned: {noise['run_low']:.3f}-{noise['run_high']:.3f} per run, "
              f"{noise['means_low']:.3f}-{noise['means_high']:.3f} as two-seed means; one run's seed noise "
              f"{noise['seed_std']:.4f}; the means spread by {noise['means_std']:.4f} (seed noise alone gives "
              f"{noise['noise_only']:.4f}); share of a run's variance the configuration "
              f"explains: {noise['config_share']:.2f}")
    runs, configs = paired(mine)
    if len({runs[(c, 0)]["learning_rate"] for c in configs}) > 1:  # the space searches the rate: who learned at which
        learned = set(learned_configs(mine, floor))
        print("\nEach configuration by learning rate (full budget, seed 0 / seed 1; learned: both above the "
              f"majority class + {LEARNED_MARGIN})")
        print("| learning rate | params | seed 0 | seed 1 | learned |\n|---|---|---|---|---|")
        for c in sorted(configs, key=lambda c: float(runs[(c, 0)]["learning_rate"])):
            print(f"| {float(runs[(c, 0)]['learning_rate']):.2e} | {int(runs[(c, 0)]['trainable_params']):,} | "
                  f"{float(runs[(c, 0)]['full']):.3f} | {float(runs[(c, 1)]['full']):.3f} | {'yes' if c in learned else 'no'} |")
    png = common.RESULTS / f"rank_agreement_{args.task}.png"  # one per task: a second task must not redraw the first's
    _plot(mine, args.rungs, png)
    common.log_mlflow("rank_agreement", {**setting, "configs": args.configs},
                      {r["metric_name"]: r["spearman"] for r in table if not math.isnan(r["spearman"])},
                      [runs_csv, table_csv, png])


if __name__ == "__main__":
    main()
