"""Does successive halving reach a good full-fidelity front for less CPU than every trial at the
full budget?

Four ways to spend the same CPU budget on the same space, task and training budget:
``gp`` and ``random`` (every trial at the full budget, as ``autopeft search --scheduler fifo``),
``sh+gp`` and ``sh+random`` (multi-objective successive halving, as ``--scheduler sh``: the same
rung ledger, ``fidelity.RungLedger``, decides at each rung; a trial that goes on keeps training),
and ``shp+gp`` (halving of the promotion type, as ``--scheduler shp``: every trial stops at its
rung with its training state kept, and the run promoted by ``RungLedger.next_promotion`` is
resumed as a new trial of the study before any new configuration is asked), and ``shq+gp`` (the
stopping type with ``RungLedger.blind_quota``: unlearned trials fill only the quota's free places,
as the promotion type fills them; ``--scheduler shq``).
Each run is one process with one torch thread, asking a real Optuna study
(benchmarks/results/multifidelity.db, so a stopped run resumes, its ledger reseeded from the
study as a resumed search does) and running each trial with ``autopeft.trial.run_config``,
duplicates answered from the study (``reuse.Vetting``) as in a search. A run stops once its trials
have used ``--cpu-budget`` CPU-seconds (process time, training + scoring + building).

Hypervolume is over the full-fidelity trials only (stopped trials are not results), in
(1 - metric, log10 trainable params), one reference point per task: the worst metric and the
largest count seen in any run of that task, plus a margin. For each run: the CPU-seconds at which
its hypervolume first reaches 95% of the best final hypervolume of any run on that task. The
issue's target: the median (over seeds) for ``sh+gp`` at most one third of ``gp``'s. ``--report``
also reads each final front up to LoRA r=8's size on a linear params axis (``capped_vs_gp``),
where the metric, not the smallest configuration, decides.

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/multifidelity.py \\
        [--tasks sst2,mr,sick_r] [--seeds 3] [--cpu-budget 2400] [--methods gp,random,sh+gp,sh+random]

Writes multifidelity_trials.csv (every trial), multifidelity.csv (the table) and multifidelity.png
(hypervolume / best against CPU-seconds) under benchmarks/results (AUTOPEFT_BENCH_RESULTS moves
them), and logs one MLflow run. The trials CSV is rewritten as each run finishes and is the
record: a run it holds is not run again (the study database is a git-ignored working file; a
fresh clone without it resumes from the committed CSV; delete a run's rows to rerun it). Runs go
seed by seed (every method at seed 0 first); ``--report`` trains nothing and tabulates the runs
that have spent their budget, so a benchmark stopped part-way can be read.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

METHODS = ("gp", "random", "sh+gp", "sh+random")  # the default set; "sh2+gp": halving over 2 rungs
# The issue's suite; without MR and SICK-R tasks installed, SST-2 and STS-B stand in.
PREFERRED_TASKS, FALLBACK_TASK = ("sst2", "mr", "sick_r"), "stsb"
TARGET = 0.95
STORAGE = f"sqlite:///{common.RESULTS / 'multifidelity.db'}"  # every run's study; a stopped run resumes


def default_tasks() -> list[str]:
    from autopeft.tasks import available_tasks

    have = set(available_tasks())
    tasks = [t for t in PREFERRED_TASKS if t in have]
    return tasks if len(tasks) == len(PREFERRED_TASKS) else tasks + [FALLBACK_TASK] * (FALLBACK_TASK not in tasks)


def parse_method(method: str, rungs: int) -> tuple[int, str]:
    """``"sh+gp"`` -> (``rungs``, "gp"); ``"sh2+gp"`` -> (2, "gp"): a halving method may name its
    own rung count, so runs over other rungs get their own study and rows; ``"gp"`` -> (0, "gp").
    ``"shp+gp"`` is halving of the promotion type (``is_promotion``), with the same rungs.
    A tag after ``@`` (``"sh+gp@v2"``) changes nothing in the run: it names a rerun of the method
    under changed code, with its own study and rows beside the recorded ones."""
    halving, plus, sampler = method.partition("@")[0].partition("+")
    if not plus:
        return 0, halving  # "gp@v2" samples with "gp"
    count = halving.removeprefix("shp" if is_promotion(method) else "shq" if is_blind_quota(method) else "sh")
    count = count.removeprefix("c")  # "shpc+gp": with RungLedger.rank_check (is_rank_checked)
    if not halving.startswith("sh") or not (count == "" or count.isdigit() and int(count) >= 2):
        raise ValueError(f"unknown method {method!r}")
    return int(count or rungs), sampler


def is_promotion(method: str) -> bool:
    """Halving of the promotion type (``"shp+gp"``): a trial stops at each rung below the top with
    its training state kept, and is resumed when it ranks in the top ``floor(n / eta)`` of its rung
    (``RungLedger.next_promotion``); otherwise the stopping type (``"sh+gp"``, the search's)."""
    return method.partition("@")[0].startswith("shp")


def is_rank_checked(method: str) -> bool:
    """``"shc+gp"``, ``"shpc+gp"``, ``"shqc+gp"``: halving with ``RungLedger.rank_check`` (search's
    ``--rank-check``): a rung the next one disagreed with lets every trial on from then."""
    halving = method.partition("@")[0].partition("+")[0]
    return halving.removeprefix("sh").lstrip("pq").startswith("c")


def is_blind_quota(method: str) -> bool:
    """``"shq+gp"``: the stopping type with ``RungLedger.blind_quota`` (unlearned trials fill only
    the quota's free places)."""
    return method.partition("@")[0].startswith("shq")


def run_method(task: str, method: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """Trials of one (task, method, seed) until ``args.cpu_budget`` CPU-seconds are spent."""
    import optuna
    import torch

    from autopeft.config import PeftConfig, TrainBudget
    from autopeft.fidelity import RungLedger, rung_fractions, rung_record
    from autopeft.models import inspect_model
    from autopeft.objectives import resolve_objectives
    from autopeft.reuse import Vetting, tell_reuse
    from autopeft.run_states import RunStates
    from autopeft.spaces import load_space
    from autopeft.study import FIDELITY_ATTR, RUNG_ATTR, RUNG_VALUES_ATTR, STOPPED_ATTR, WARM_START_ATTR, rung_values
    from autopeft.trial import TrialContext, run_config

    common._quiet_worker()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rungs, sampler = parse_method(method, args.rungs)
    halving = rungs > 0
    space = load_space(args.space)
    num_layers = inspect_model(common.MODEL).num_layers
    sample = space.define_by_run(num_layers)
    # Trials score on rows held out of train, as a search with --select-on holdout does (the
    # suite's protocol): the dev split is not what any method here optimises.
    budget = TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples, seed=seed,
                         select_on="holdout", holdout_size=args.holdout)
    objectives = resolve_objectives("metric,trainable_params")
    fractions = rung_fractions(rungs, args.reduction_factor) if halving else ()
    ctx = TrialContext(common.MODEL, task, budget, args.data_dir, rungs=fractions, rung_objectives=tuple(objectives))
    storage, name = STORAGE, f"{args.space}-{task}-{method}-{seed}"
    if args.report:  # what is stored, trains nothing; a run short of its budget is not a result yet
        try:
            study = optuna.load_study(storage=storage, study_name=name)
        except KeyError:
            return []
        return _rows(study, task, method, seed, args.cpu_budget) if _spent(study) >= args.cpu_budget else []
    study = common.resumable_study(storage, name, sampler, seed, args.expected_trials)
    for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):  # left by a stopped run
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if not study.trials:
        for i, point in enumerate(space.warm_start_points(num_layers)):  # as the search does
            study.enqueue_trial(point, user_attrs={WARM_START_ATTR: i})
    ledger = RungLedger(objectives, rungs or args.rungs, args.reduction_factor,  # unused without halving
                        blind_quota=is_blind_quota(method), rank_check=is_rank_checked(method))
    # Warm starts go on to the full budget, as in the search (studies begun before 2026-11-29 23:00
    # enqueued them unmarked: their halving runs ranked warm starts like any trial).
    ledger.references.update(str(t.number) for t in study.trials if WARM_START_ATTR in t.user_attrs)
    for number, rung, values in rung_values(study.trials):
        ledger.record(str(number), rung, values)
    vetting = Vetting(budget)

    def spent() -> float:
        return _spent(study)

    promotion = is_promotion(method)
    # Promotion type: each stopped run's TrainState, kept and claimed as --scheduler shp keeps them.
    states = RunStates(common.RESULTS / "multifidelity_states" / name)
    interrupted = sorted(states.claimed())  # a resume cut off by a stop: it goes first, from its claimed state

    while spent() < args.cpu_budget:
        promote = ledger.next_promotion(states.waiting()) if promotion and not interrupted else None
        if interrupted or (promote is not None and states.claim(promote[0])):
            root = interrupted.pop() if interrupted else promote[0]
            resume(study, int(root), ctx, budget, ledger, objectives, states, rungs, label=(task, method, seed))
            continue
        trial = study.ask()
        config = sample(trial)
        verdict, source = vetting.check(study.trials, trial, config)
        if verdict == "reuse":  # free, as in a search
            trial.set_user_attr("cpu_seconds", 0.0)
            tell_reuse(study, trial, source)
            continue
        if promotion:  # what a later resume of this run builds and trains
            trial.set_user_attr(CONFIG_ATTR, config)

        def at_rung(report: dict, number: int = trial.number, trial=trial) -> bool:
            values = rung_record(report, list(objectives))  # as the search stores them
            trial.set_user_attr(f"{RUNG_VALUES_ATTR}{report['rung']}", values)
            if promotion:  # every run waits at its rung; next_promotion decides later
                ledger.record(str(number), report["rung"], values)
                return False
            return ledger.decide(str(number), report["rung"], values)

        cpu0 = time.process_time()
        try:
            report = run_config(ctx, PeftConfig.from_dict(config["peft_config"]), budget.replace(**config["training"]),
                                on_rung=at_rung if halving else None,
                                keep_state=partial(states.save, trial.number) if promotion else None)
        except Exception as exc:  # a failed trial is recorded and the run goes on, as in autopeft search
            trial.set_user_attr("cpu_seconds", time.process_time() - cpu0)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"{task} {method} seed {seed} trial {trial.number} failed: {exc}", flush=True)
            continue
        trial.set_user_attr("cpu_seconds", time.process_time() - cpu0)
        if halving:
            trial.set_user_attr(RUNG_ATTR, report["rung"])
            trial.set_user_attr(FIDELITY_ATTR, report["fidelity"])
            if report["rung"] < rungs - 1:
                trial.set_user_attr(STOPPED_ATTR, report["rung"])
        study.tell(trial, [report["metric"], report["trainable_params"]])
        print(f"{task} {method} seed {seed} trial {trial.number}: {report['metric']:.4f} "
              f"{report['trainable_params']} params, fidelity {report.get('fidelity', 1.0):.3f}, "
              f"{spent():.0f}/{args.cpu_budget:.0f} CPU-s", flush=True)
    shutil.rmtree(states.folder, ignore_errors=True)  # the run has spent its budget: nothing will resume
    return _rows(study, task, method, seed, args.cpu_budget)


CONFIG_ATTR = "bench_config"  # promotion type: the sampled config, for the trials that resume it


def resume(study, root: int, ctx, budget, ledger, objectives, states, rungs: int, label) -> None:
    """Go on with trial ``root``'s run from the rung it stopped at (its state claimed in ``states``,
    a ``RunStates``), as a new trial of the study (``CONTINUES_ATTR``; same parameters, so the
    sampler sees the config at the higher fidelity) holding this part's CPU-seconds. It stops at
    the next rung (its state kept again) or ends."""
    import optuna

    from autopeft.config import PeftConfig
    from autopeft.fidelity import rung_record
    from autopeft.reuse import CONFIG_KEY_ATTR
    from autopeft.study import CONTINUES_ATTR, FIDELITY_ATTR, RUNG_ATTR, RUNG_VALUES_ATTR, STOPPED_ATTR
    from autopeft.trial import run_config

    first = study.trials[root]  # numbers are positions in one study
    config = first.user_attrs[CONFIG_ATTR]
    attrs = {CONTINUES_ATTR: root, CONFIG_KEY_ATTR: first.user_attrs[CONFIG_KEY_ATTR]}

    def at_rung(report: dict) -> bool:
        values = rung_record(report, list(objectives))
        attrs[f"{RUNG_VALUES_ATTR}{report['rung']}"] = values
        ledger.record(str(root), report["rung"], values)
        return False

    cpu0 = time.process_time()
    try:
        report = run_config(ctx, PeftConfig.from_dict(config["peft_config"]), budget.replace(**config["training"]),
                            on_rung=at_rung, keep_state=partial(states.save, root), resume=states.load_claimed(root))
    except Exception as exc:  # recorded, and not resumed again
        study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                                  state=optuna.trial.TrialState.FAIL,
                                                  user_attrs={**attrs, "cpu_seconds": time.process_time() - cpu0}))
        states.release(root)
        print(f"{' '.join(map(str, label))}: resuming trial {root} failed: {exc}", flush=True)
        return
    states.release(root)  # its next state is kept (or it reached the top)
    attrs.update({"cpu_seconds": time.process_time() - cpu0, RUNG_ATTR: report["rung"],
                  FIDELITY_ATTR: report["fidelity"]})
    if report["rung"] < rungs - 1:
        attrs[STOPPED_ATTR] = report["rung"]
    study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                              values=[report["metric"], report["trainable_params"]], user_attrs=attrs))
    print(f"{' '.join(map(str, label))} trial {root} resumed to rung {report['rung']}: {report['metric']:.4f}, "
          f"{attrs['cpu_seconds']:.1f} CPU-s", flush=True)


CSV_TYPES = {"seed": int, "trial": int, "metric": float, "trainable_params": int, "fidelity": float,
             "full_fidelity": lambda v: v == "True", "cpu_seconds": float, "superseded": lambda v: v == "True",
             "trained": lambda v: float(v) if v else None}  # rows of runs before promotion-type halving lack both


def recorded_runs(path: Path) -> dict[tuple[str, str, int], list[dict]]:
    """The finished runs a trials CSV holds, typed as ``_rows`` makes them, by (task, method, seed)."""
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for r in common.read_csv(path):
        row = {k: CSV_TYPES.get(k, str)(v) for k, v in r.items()}
        runs.setdefault((row["task"], row["method"], row["seed"]), []).append(row)
    return runs


def _spent(study) -> float:
    return sum(t.user_attrs.get("cpu_seconds", 0.0) for t in study.trials)


def _rows(study, task: str, method: str, seed: int, budget: float = math.inf) -> list[dict]:
    """The run's complete trials in order, each with the CPU-seconds spent up to it, up to the trial
    that spent ``budget`` (a run asks none after it; a GP study continued by ``--extend-gp`` holds
    more, which a reading at ``budget`` must not see)."""
    import optuna

    from autopeft.study import CONTINUES_ATTR, FIDELITY_ATTR, RUNG_ATTR, STOPPED_ATTR, rung_values

    trials = sorted(study.trials, key=lambda t: t.number)
    at_rungs: dict[int, dict[int, float]] = {}  # each run's metric at the rungs below the top it passed
    for number, rung, values in rung_values(trials):
        at_rungs.setdefault(number, {})[rung] = values["metric"]
    # Halving of the promotion type: one configuration's run is a chain of trials (the first, then
    # each resume); the last holds the run's whole story, the earlier ones are ``superseded``, and
    # each trained only its own part (``trained``, a share of the full budget).
    chains: dict[int, list] = {}
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            chains.setdefault(t.user_attrs.get(CONTINUES_ATTR, t.number), []).append(t)
    rows, cpu = [], 0.0
    for t in trials:
        if cpu >= budget:
            break
        cpu += t.user_attrs.get("cpu_seconds", 0.0)
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        root = t.user_attrs.get(CONTINUES_ATTR, t.number)
        chain = chains[root]
        before = chain[chain.index(t) - 1] if chain.index(t) else None
        fidelity = t.user_attrs.get(FIDELITY_ATTR, 1.0)
        rung = t.user_attrs.get(RUNG_ATTR, math.inf)
        rows.append({"task": task, "method": method, "seed": seed, "trial": t.number, "metric": t.values[0],
                     "trainable_params": int(t.values[1]), "fidelity": fidelity,
                     "full_fidelity": STOPPED_ATTR not in t.user_attrs, "cpu_seconds": round(cpu, 1),
                     "rung_metrics": " ".join(f"{v:.4f}" for k, v in sorted(at_rungs.get(root, {}).items()) if k <= rung),
                     "superseded": t is not chain[-1],
                     "trained": fidelity - (before.user_attrs.get(FIDELITY_ATTR, 1.0) if before else 0.0)})
    return rows


def reference_points(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Task -> the hypervolume's reference point: the worst metric and the largest count of any
    full-fidelity trial of the task, plus a margin."""
    refs = {}
    for task in sorted({r["task"] for r in rows}):
        full = [r for r in rows if r["task"] == task and r["full_fidelity"]]
        if full:
            refs[task] = (1 - min(r["metric"] for r in full) + 0.01,
                          max(math.log10(r["trainable_params"]) for r in full) + 0.1)
    return refs


def hv_curves(rows: list[dict], refs: dict[str, tuple[float, float]] | None = None
              ) -> dict[tuple[str, str, int], list[tuple[float, float]]]:
    """(task, method, seed) -> [(cumulative CPU-seconds, hypervolume of the full-fidelity front)];
    ``refs``: reference points (default ``reference_points(rows)``)."""
    from autopeft.pareto import hypervolume

    refs = reference_points(rows) if refs is None else refs
    curves = {}
    for task in sorted({r["task"] for r in rows}):
        if task not in refs:
            continue
        ref = refs[task]
        for key in sorted({(r["method"], r["seed"]) for r in rows if r["task"] == task}):
            run = sorted((r for r in rows if (r["task"], r["method"], r["seed"]) == (task, *key)),
                         key=lambda r: r["trial"])
            points, curve = [], []
            for r in run:
                if r["full_fidelity"]:
                    points.append((1 - r["metric"], math.log10(r["trainable_params"])))
                curve.append((r["cpu_seconds"], hypervolume(points, ref)))
            curves[(task, *key)] = curve
    return curves


def cpu_to_reach(curve: list[tuple[float, float]], level: float) -> float:
    return next((cpu for cpu, hv in curve if hv >= level), math.inf)


def reached(x: float, fmt: str = ".2f", unreached: str = "never") -> str:
    """A CPU-s figure or ratio from ``cpu_to_reach`` as printed: ``unreached`` where it is infinite."""
    return unreached if math.isinf(x) else format(x, fmt)


def trial0_clocks(rows: list[dict]) -> dict[tuple[str, str, int], float]:
    """(task, method, seed) -> the CPU-s of the run's trial 0, where it trained the full budget in one
    piece. Trial 0 is the same configuration in every run of a seed (the space's first warm start),
    so its cost is a clock: measured on this machine, runs recorded on other days than GP's ran at
    0.38-1.20x its trial-0 cost, where runs recorded beside it were within 0.86-1.35x (the report
    prints both). Under halving of the promotion type trial 0 stops at rung 0: no clock there."""
    out = {}
    for r in rows:
        if r["trial"] == 0 and r["fidelity"] == 1.0:
            out[(r["task"], r["method"], r["seed"])] = float(r["cpu_seconds"])
    return out


def replayed(rows: list[dict], a: str, b: str) -> list[dict]:
    """Per task and seed, how many first trials of method ``b``'s run repeat ``a``'s (same
    configuration size, fidelity and metric: a seeded sampler told the same values asks the same),
    and what those trials cost in ``b`` against ``a`` (the two runs' clocks, read on identical work)."""
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["trial"]):
        runs.setdefault((r["task"], r["method"], r["seed"]), []).append(r)
    out = []
    for task, seed in sorted({(t, s) for t, m, s in runs if m == b and (t, a, s) in runs}):
        same = 0
        for x, y in zip(runs[(task, a, seed)], runs[(task, b, seed)]):
            if (x["trainable_params"], x["fidelity"], x["metric"]) != (y["trainable_params"], y["fidelity"], y["metric"]):
                break
            same += 1
        if same:
            cpu_a, cpu_b = runs[(task, a, seed)][same - 1]["cpu_seconds"], runs[(task, b, seed)][same - 1]["cpu_seconds"]
            out.append({"task": task, "seed": seed, "trials": same, "of": len(runs[(task, a, seed)]),
                        "cpu_ratio": cpu_b / cpu_a})
    return out


def final_fronts(rows: list[dict]) -> dict[tuple[str, str, int], list[tuple[int, float]]]:
    """(task, method, seed) -> the run's final full-fidelity front, (trainable params, metric) by
    size: what a hypervolume ratio is made of (a larger one may come from the small end alone)."""
    from autopeft.pareto import pareto_front

    runs: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for r in rows:
        if r["full_fidelity"]:
            runs.setdefault((r["task"], r["method"], r["seed"]), []).append((int(r["trainable_params"]), r["metric"]))
    return {key: sorted({points[i] for i in pareto_front(points, ("min", "max"))})
            for key, points in sorted(runs.items())}


def fronts_vs_gp(fronts: dict[tuple[str, str, int], list[tuple[int, float]]]) -> list[dict]:
    """Each run's final front against the same seed's GP front, point by point: how many of GP's
    points one of the run's dominates, and how many of the run's one of GP's dominates. A reading
    the hypervolume on log10 params does not give: there one point at the small end can decide
    the ratio while the other front dominates everywhere else."""
    from autopeft.pareto import dominates

    def beaten(points: list[tuple[int, float]], by: list[tuple[int, float]]) -> int:
        return sum(any(dominates(b, p, ("min", "max")) for b in by) for p in points)

    return [{"task": task, "method": m, "seed": seed, "gp_points": len(gp), "gp_beaten": beaten(gp, front),
             "points": len(front), "beaten": beaten(front, gp)} for task, m, seed, front, gp in with_gp(fronts)]


def with_gp(fronts: dict[tuple[str, str, int], list[tuple[int, float]]]):
    """(task, method, seed, front, the same seed's GP front) for each non-GP run that has one."""
    for (task, m, seed), front in fronts.items():
        gp = fronts.get((task, "gp", seed))
        if m != "gp" and gp:
            yield task, m, seed, front, gp


def lora_r8_sizes(tasks: list[str]) -> dict[str, int]:
    """Task -> LoRA r=8 (q, v)'s trainable count on the benchmark's model: the size users hand-pick,
    so the edge of the range ``capped_vs_gp`` reads. Counted on the meta device (no weights)."""
    from autopeft.build import count_trainable_params
    from autopeft.models import inspect_model
    from autopeft.tasks import load_task

    info = inspect_model(common.MODEL)
    lora = common.baselines(info.num_layers, info.hidden_size)["lora_r8"]
    return {t: count_trainable_params(common.MODEL, lora, load_task(t).num_labels, info) for t in tasks}


def capped_vs_gp(fronts: dict[tuple[str, str, int], list[tuple[int, float]]], caps: dict[str, int],
                 refs: dict[str, tuple[float, float]]) -> list[dict]:
    """Each final front's hypervolume over configurations up to ``caps[task]`` trainable params, on
    a linear params axis, against the same seed's GP front. The headline hypervolume is on log10
    params, where 5k against 50k weighs as much as 50k against 500k, so the smallest points can
    decide it; here a point counts by the metric it holds over the range a user would pick from
    (at most the hand-picked size), so the metric axis decides. The metric reference is the
    task's (``refs``); a front with no point in the range scores 0."""
    from autopeft.pareto import hypervolume

    out = []
    for task, m, seed, front, gp in with_gp(fronts):
        if task not in caps or task not in refs:
            continue
        mine, theirs = ([(n / caps[task], v) for n, v in f if n <= caps[task]] for f in (front, gp))
        # A margin past the cap, as the headline's reference has: a point at the cap counts.
        hv, gp_hv = (hypervolume([(1 - v, x) for x, v in pts], (refs[task][0], 1.01)) for pts in (mine, theirs))
        out.append({"task": task, "method": m, "seed": seed, "cap": caps[task], "hv": hv, "gp_hv": gp_hv,
                    "ratio": hv / gp_hv if gp_hv else math.inf if hv else 1.0,  # both empty in range: a tie
                    "best": max((v for _, v in mine), default=math.nan),
                    "gp_best": max((v for _, v in theirs), default=math.nan)})
    return out


def on_trial0_clock(curves: dict, clocks: dict) -> dict:
    """Each run's curve with its CPU-s counted in its own trial 0's (runs without a clock left out),
    so runs recorded at different machine speeds compare."""
    return {k: [(cpu / clocks[k], hv) for cpu, hv in c] for k, c in curves.items() if k in clocks}


def table(curves: dict, methods: list[str]) -> list[dict]:
    """Per task and method, over the seeds that have a finished run (all of them once the
    benchmark has run; fewer in a ``--report`` of a partial one)."""
    out = []
    for task in sorted({k[0] for k in curves}):
        best = max(c[-1][1] for k, c in curves.items() if k[0] == task and c)

        def reach(method: str) -> list[float]:
            return [cpu_to_reach(c, TARGET * best) for (t, m, _), c in sorted(curves.items()) if (t, m) == (task, method)]

        gp = reach("gp")
        gp_median = statistics.median(gp) if gp else math.nan
        # Where full-fidelity GP never reaches the target inside its budget, "/ gp" is undefined;
        # the CPU-s each method needs to reach what GP ends with still compares them. The level is
        # the lower median of GP's finals, so with an even number of seeds it is one GP reached.
        gp_finals = [c[-1][1] for (t, m, _), c in curves.items() if (t, m) == (task, "gp") and c]
        gp_final = statistics.median_low(gp_finals) if gp_finals else math.nan

        def to_gp_final(method: str) -> float:
            runs = [c for (t, m, _), c in sorted(curves.items()) if (t, m) == (task, method)]
            return statistics.median(cpu_to_reach(c, gp_final) for c in runs) if runs else math.nan

        gp_to_final = to_gp_final("gp")
        for m in methods:
            runs = [c for (t, mm, _), c in sorted(curves.items()) if (t, mm) == (task, m)]
            if not runs:
                continue
            mine = reach(m)
            med = statistics.median(mine)
            to_final = to_gp_final(m)
            out.append({"task": task, "method": m, "seeds": len(runs),
                        "cpu_to_95pct": " ".join(reached(x, ".0f", "-") for x in mine),
                        "median_cpu_to_95pct": med,
                        "vs_gp": round(med / gp_median, 3) if math.isfinite(med) and math.isfinite(gp_median)
                        else math.nan,
                        "median_cpu_to_gp_final": to_final,
                        "vs_gp_to_gp_final": round(to_final / gp_to_final, 3)
                        if math.isfinite(to_final) and math.isfinite(gp_to_final) else math.nan,
                        "final_hv_over_best": " ".join(f"{c[-1][1] / best if c else 0.0:.3f}" for c in runs),
                        "trials": sum(len(c) for c in runs)})
    return out


def per_seed(curves: dict, method: str, extended: dict | None = None) -> list[dict]:
    """The issue's ratio read seed by seed: against the best final hypervolume of that seed's runs,
    not of the task's, so one lucky seed does not set the level for the others. Where GP never
    reaches the level inside its budget its need is censored at the CPU it spent, and the ratio is
    only bounded above (``<``): ``method``'s CPU-s over GP's whole run. ``extended``: (task, seed)
    -> GP's curve continued past the common budget (``--extend-gp``); where one is given, GP's need
    is read on it, while the level stays the best final hypervolume at the common budget."""
    out = []
    for task, seed in sorted({(k[0], k[2]) for k in curves}):
        runs = {m: c for (t, m, s), c in curves.items() if (t, s) == (task, seed) and c}
        runs = {m: c for m, c in runs.items() if m in ("gp", method) or "@" not in m}  # a rerun is compared alone
        if "gp" not in runs or method not in runs:
            continue
        best = max(c[-1][1] for c in runs.values())
        gp_curve = (extended or {}).get((task, seed)) or runs["gp"]
        mine, gp = cpu_to_reach(runs[method], TARGET * best), cpu_to_reach(gp_curve, TARGET * best)
        if math.isinf(mine):
            ratio, bound = "never", math.inf
        elif math.isinf(gp):
            bound = mine / gp_curve[-1][0]
            ratio = f"< {bound:.2f}"
        else:
            bound = mine / gp
            ratio = f"{bound:.2f}"
        out.append({"task": task, "seed": seed, "best_method": max(runs, key=lambda m: runs[m][-1][1]),
                    "method_cpu": mine, "gp_cpu": gp, "gp_spent": gp_curve[-1][0], "ratio": ratio,
                    "ratio_bound": bound})
    return out


def run_jobs(jobs: list[tuple[str, str, int]], args: argparse.Namespace, recorded: dict, path: Path) -> None:
    """Run (or, under ``--report``, read) each (task, method, seed) into ``recorded``; each finished
    run lands in the CSV ``path`` at once, beside what it already held."""
    with ProcessPoolExecutor(args.workers, common.SPAWN) as pool:
        futures = {pool.submit(run_method, task, m, seed, args): (task, m, seed) for task, m, seed in jobs}
        for future in as_completed(futures):
            run = future.result()
            if run:
                recorded[futures[future]] = run
                if not args.report:
                    common.write_csv(path, [r for rows in recorded.values() for r in rows])


def extend_gp(rows: list[dict], refs: dict, args: argparse.Namespace) -> dict[tuple[str, int], list]:
    """``--extend-gp``: each recorded GP run of ``rows`` continued to ``args.extend_gp`` CPU-s (its
    study resumes; ``--report`` reads what is stored), as (task, seed) -> its hypervolume curve
    under the common budget's reference points ``refs``. The continued runs land in their own CSV,
    so the record at the common budget stays as it is."""
    from argparse import Namespace

    longer = Namespace(**{**vars(args), "cpu_budget": args.extend_gp})
    path = common.RESULTS / f"multifidelity_gp_{args.extend_gp:.0f}.csv"
    recorded = recorded_runs(path)
    # Later seeds first: with two workers the third run goes alone, and an extension cut short keeps
    # what it had (its study resumes); the order changes no figure.
    jobs = sorted({(r["task"], r["method"], r["seed"]) for r in rows if r["method"] == "gp"} - set(recorded),
                  key=lambda j: (j[0], -j[2]))
    run_jobs(jobs, longer, recorded, path)
    curves = hv_curves([r for runs in recorded.values() for r in runs], refs)
    return {(task, seed): c for (task, _, seed), c in curves.items()}


def default_sized(run: list[dict], full_trials: float) -> list[dict]:
    """The trials a search of ``full_trials`` (``--full-trials``; the default search's size) asks
    of this run, one at a time: another while what the trials trained, plus one more at their
    mean, fits (``study.target_reached``'s rule). Under fifo that is ``full_trials`` trials."""
    taken: list[dict] = []
    spent, paid, last_cpu = 0.0, 0, 0.0
    for r in run:
        if paid and spent + spent / paid > full_trials:
            break
        taken.append(r)
        if r["cpu_seconds"] > last_cpu:  # a duplicate answered from the study spent and trained nothing
            spent, paid = spent + float(r["fidelity"] if r.get("trained") is None else r["trained"]), paid + 1
        last_cpu = r["cpu_seconds"]
    return taken


def first_trials(rows: list[dict], curves: dict, full_trials: float) -> list[dict]:
    """What a default-sized search of each run gives (``default_sized``): its trials, the
    full-fidelity ones among them, CPU-s spent, the best full-fidelity metric and the front's
    hypervolume. Runs are one trial at a time, so a run's first trials are what a smaller search
    of that method asks."""
    out = []
    for key in sorted({(r["task"], r["method"], r["seed"]) for r in rows}):
        run = default_sized(sorted((r for r in rows if (r["task"], r["method"], r["seed"]) == key),
                                   key=lambda r: r["trial"]), full_trials)
        full = [r["metric"] for r in run if r["full_fidelity"]]
        out.append({"task": key[0], "method": key[1], "seed": key[2], "trials": len(run), "full_fidelity": len(full),
                    "cpu_seconds": run[-1]["cpu_seconds"], "best": max(full, default=math.nan),
                    "hv": curves[key][len(run) - 1][1]})
    return out


def sh_vs_gp(curves: dict, first: list[dict], method: str) -> list[dict]:
    """``method`` against full-fidelity GP, seed by seed: the ratio of their final hypervolumes,
    the CPU-s ``method`` needed to reach that seed's GP final front over what GP needed (the
    level is the seed's own, where the table above takes one level for all seeds), and at the
    default search's size (``first_trials``) the ratios of CPU-s and hypervolume and
    the difference of the best full-fidelity metric."""
    at_default = {(r["task"], r["method"], r["seed"]): r for r in first}
    out = []
    for task, seed in sorted({(k[0], k[2]) for k in curves}):
        mine, gp = curves.get((task, method, seed)), curves.get((task, "gp", seed))
        a, b = at_default.get((task, method, seed)), at_default.get((task, "gp", seed))
        if not (mine and gp and a and b):
            continue
        level = gp[-1][1]
        out.append({"task": task, "seed": seed, "trials": f"{len(mine)} / {len(gp)}", "final_hv": mine[-1][1] / level,
                    "to_gp_final": cpu_to_reach(mine, level) / cpu_to_reach(gp, level),
                    "default_cpu": a["cpu_seconds"] / b["cpu_seconds"], "default_hv": a["hv"] / b["hv"],
                    "default_best": a["best"] - b["best"]})
    return out


def sign_test(wins: int, n: int) -> float:
    """Two-sided sign test: the chance of a split at least this uneven if each seed were a coin."""
    k = max(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def part_costs(rows: list[dict]) -> list[dict]:
    """Halving of the promotion type: the mean CPU-s of a trial by the part of the budget it
    trained (from the rung it started at to the one it reached), per task and method: a resume
    that costs more than its share of training pays fixed cost (rebuilding the model, the state)."""
    parts: dict[tuple[str, str, float, float], list[float]] = {}
    for key in sorted({(r["task"], r["method"], r["seed"]) for r in rows if is_promotion(r["method"])}):
        last = 0.0
        for r in sorted((r for r in rows if (r["task"], r["method"], r["seed"]) == key), key=lambda r: r["trial"]):
            cpu, last = r["cpu_seconds"] - last, r["cpu_seconds"]
            if r.get("trained") is not None and cpu > 0:  # a duplicate answered from the study cost nothing
                start = round(float(r["fidelity"]) - r["trained"], 3)
                parts.setdefault((key[0], key[1], start, round(float(r["fidelity"]), 3)), []).append(cpu)
    return [{"task": t, "method": m, "from": a, "to": b, "trials": len(c), "cpu_mean": statistics.fmean(c),
             "cpu_std": statistics.stdev(c) if len(c) > 1 else 0.0} for (t, m, a, b), c in sorted(parts.items())]


def final_parts(rows: list[dict]) -> list[dict]:
    """One row per configuration's run: a run that promotion-type halving resumed is its last trial."""
    return [r for r in rows if not r.get("superseded")]


def pair_arrivals(rows: list[dict]) -> dict[tuple[str, str, int], list[tuple[int, tuple[float, float], float]]]:
    """(task, method, seed) of each halving run -> its (rung k, (metric at k, at k + 1), CPU-s so
    far) in the order the pairs arrived (at the top rung, the trial's result). The stopping type
    reports every rung it passed in one trial; a promotion-type trial (a resume) adds one rung to
    what its run's earlier trials reported, so over a chain each pair arrives once."""
    out: dict[tuple[str, str, int], list[tuple[int, tuple[float, float], float]]] = {}
    for r in rows:  # trial order: one process ran each run's trials one after another
        if not parse_method(r["method"], 3)[0]:
            continue
        metrics = [float(v) for v in r["rung_metrics"].split()] + ([r["metric"]] if r["full_fidelity"] else [])
        new = range(len(metrics) - 1) if not is_promotion(r["method"]) else range(len(metrics) - 2, len(metrics) - 1)
        arrivals = out.setdefault((r["task"], r["method"], r["seed"]), [])
        arrivals += [(k, (metrics[k], metrics[k + 1]), r["cpu_seconds"]) for k in new if k >= 0]
    return out


def rung_agreement(rows: list[dict]) -> list[dict]:
    """Does a rung order trials as the next rung does? Per task and halving method, pooled over the
    seeds: Spearman's rank correlation between a trial's metric at rung k and at rung k + 1, over
    the trials that reached k + 1 (``pair_arrivals``). Promotion takes the top of rung k, so the
    correlation is over a narrowed range and understates the agreement; near zero it still says
    rung k's order told little about rung k + 1's."""
    from scipy.stats import spearmanr

    pairs: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for (task, method, _), arrivals in pair_arrivals(rows).items():
        for k, xy, _ in arrivals:
            pairs.setdefault((task, method, k), []).append(xy)
    return [{"task": task, "method": method, "rungs": f"{k} -> {k + 1}", "trials": len(xy),
             "spearman": round(float(spearmanr(*zip(*xy)).statistic), 2) if len(xy) > 2 else math.nan}
            for (task, method, k), xy in sorted(pairs.items())]


def rank_check_replay(rows: list[dict]) -> list[dict]:
    """When would ``--rank-check`` have opened each rung of a recorded halving run? Per (task,
    method, seed): the run's ``pair_arrivals`` through ``fidelity.rank_disagreement`` as the
    ledger judges them; the first pair count and CPU-s at which a rung would have opened (the run
    is exact up to there, and would have gone on differently after; for a method with the check,
    ``is_rank_checked``, when it did open), and the Spearman over all its pairs at the end."""
    from autopeft.fidelity import rank_disagreement, spearman

    out = []
    for (task, method, seed), arrivals in sorted(pair_arrivals(rows).items()):
        pairs: dict[int, list[tuple[float, float]]] = {}
        opened: dict[int, tuple[int, float]] = {}
        for k, xy, cpu in arrivals:
            pairs.setdefault(k, []).append(xy)
            if k not in opened and rank_disagreement(pairs[k]) is not None:
                opened[k] = (len(pairs[k]), cpu)
        for k in sorted(pairs):
            rho = spearman(*zip(*pairs[k]))
            out.append({"task": task, "method": method, "seed": seed, "rungs": f"{k} -> {k + 1}",
                        "pairs": len(pairs[k]), "spearman": math.nan if rho is None else round(rho, 2),
                        "opens_at_pairs": opened[k][0] if k in opened else None,
                        "opens_at_cpu": opened[k][1] if k in opened else None})
    return out


def unlearned_at_rung0(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per task, halving method and seed: how many trials' rung-0 metric was no better than a
    constant prediction's on that rung's rows, and how many no better than chance
    (``tasks.chance_score`` at the search's default ``--rung-confidence``). The untagged runs
    predate both rules, so their rung 0 ranked such trials by size."""
    from autopeft.fidelity import rung_fractions
    from autopeft.tasks.metrics import CHANCE_QUANTILE

    floors: dict[tuple[str, int], tuple[float, float]] = {}
    out: dict[tuple[str, str, int], list[int]] = {}
    for r in final_parts(rows):
        metrics = r["rung_metrics"].split()
        if not metrics:
            continue
        key = (r["task"], r["seed"])
        if key not in floors:
            floors[key] = tuple(common.no_skill_at_rung(r["task"], args.data_dir, args.holdout, 0, r["seed"],
                                                        rung_fractions(args.rungs, args.reduction_factor)[0], q)
                                for q in (0.0, CHANCE_QUANTILE))
        counts = out.setdefault((r["task"], r["method"], r["seed"]), [0, 0, 0])
        counts[0] += float(metrics[0]) <= floors[key][0] + 1e-9
        counts[1] += float(metrics[0]) <= floors[key][1] + 1e-9
        counts[2] += 1
    return [{"task": t, "method": m, "seed": s, "constant": round(floors[(t, s)][0], 3), "unlearned": c[0],
             "chance": round(floors[(t, s)][1], 3), "within_chance": c[1], "trials": c[2]}
            for (t, m, s), c in sorted(out.items())]


def promotions(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per task, halving method and rung below the top: trials that reached the rung, those above
    chance there, and how many of each went on, beside the nominal share ``1 / eta``. Asynchronous
    halving promotes more than that share when later trials keep beating earlier ones, and a
    rung that has not seen trials learn promotes them all."""
    from autopeft.fidelity import rung_fractions
    from autopeft.tasks.metrics import CHANCE_QUANTILE

    fractions = rung_fractions(args.rungs, args.reduction_factor)
    floors: dict[tuple[str, int, int], float] = {}
    out: dict[tuple[str, str, int], list[int]] = {}
    for r in final_parts(rows):
        metrics = [float(m) for m in r["rung_metrics"].split()]
        for k, metric in enumerate(metrics[:len(fractions) - 1]):
            key = (r["task"], r["seed"], k)
            if key not in floors:
                floors[key] = common.no_skill_at_rung(r["task"], args.data_dir, args.holdout, 0, r["seed"],
                                                      fractions[k], CHANCE_QUANTILE)
            learned, went_on = metric > floors[key] + 1e-9, float(r["fidelity"]) > fractions[k] + 1e-9
            counts = out.setdefault((r["task"], r["method"], k), [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += learned
            counts[2] += learned and went_on
            counts[3] += (not learned) and went_on
    return [{"task": t, "method": m, "rung": k, "reached": c[0], "learned": c[1], "learned_on": c[2],
             "unlearned_on": c[3], "share_on": round((c[2] + c[3]) / c[0], 2), "nominal": round(1 / args.reduction_factor, 2)}
            for (t, m, k), c in sorted(out.items())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=None, help="comma-separated (default: sst2,mr,sick_r, else sst2,stsb)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="gp, random, sh+gp, sh+random (halving over --rungs), shN+gp (over N rungs), shp+gp "
                         "(halving of the promotion type, as --scheduler shp) or shq+gp (the stopping type, "
                         "unlearned trials only in the quota's free places)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cpu-budget", type=float, default=2400.0, help="CPU-seconds of trials per run")
    ap.add_argument("--space", default="autopeft")
    ap.add_argument("--train-examples", type=int, default=2048)
    ap.add_argument("--eval-examples", type=int, default=None, help="scored rows at the full budget (default all)")
    ap.add_argument("--holdout", type=float, default=500,
                    help="selection split the trials score on: rows held out of train (or a fraction < 1)")
    ap.add_argument("--rungs", type=int, default=3)
    ap.add_argument("--reduction-factor", type=int, default=3)
    ap.add_argument("--expected-trials", type=int, default=40, help="sizes the samplers' random start-up phase")
    ap.add_argument("--extend-gp", type=float, default=None, metavar="CPU_S",
                    help="continue each task's recorded full-fidelity GP runs to this many CPU-s (their studies "
                         "resume; kept in multifidelity_gp_CPU_S.csv) and read per seed when GP reaches the level, "
                         "instead of bounding its need by --cpu-budget; the levels and all else stay at --cpu-budget")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: the table and plot of the runs already finished in multifidelity.db")
    args = common.parse_with_data_dir(ap)
    methods = args.methods.split(",")
    from autopeft.samplers import SAMPLERS

    def known(method: str) -> bool:
        try:
            return parse_method(method, args.rungs)[1] in SAMPLERS
        except ValueError:
            return False

    unknown = [m for m in methods if not known(m)]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}, shN+SAMPLER (N >= 2 rungs) "
                 ", shp+SAMPLER or shq+SAMPLER (a c after the kind, shpc+SAMPLER: with --rank-check)")
    tasks = args.tasks.split(",") if args.tasks else default_tasks()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Seed by seed within a task, every method at each seed: a benchmark stopped part-way (and
    # read with --report) has whole rounds of every method to compare, not one method's seeds.
    trials_csv = common.RESULTS / "multifidelity_trials.csv"
    recorded = recorded_runs(trials_csv)
    wanted = [(task, m, seed) for task in tasks for seed in range(args.seeds) for m in methods]
    jobs = [j for j in wanted if j not in recorded]
    if len(jobs) < len(wanted):
        print(f"{len(wanted) - len(jobs)} of {len(wanted)} runs are recorded in {trials_csv.name}: kept as they are",
              flush=True)
    if jobs and not args.report:  # the schema once, here: two workers creating it at once race ("table studies already exists")
        import optuna

        optuna.storages.RDBStorage(STORAGE)
    run_jobs(jobs, args, recorded, trials_csv)
    rows = [r for key in wanted if key in recorded for r in recorded[key]]
    wall = time.perf_counter() - t0
    if not rows:
        sys.exit(f"no run has spent its {args.cpu_budget:.0f} CPU-s yet: nothing to report")
    refs = reference_points(rows)
    curves = hv_curves(rows, refs)
    extended = extend_gp(rows, refs, args) if args.extend_gp else None
    summary = table(curves, methods)
    table_csv = common.RESULTS / "multifidelity.csv"
    common.write_csv(table_csv, summary)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; space {args.space}, "
          f"{args.train_examples} train examples, {args.rungs} rungs, eta {args.reduction_factor}, "
          f"{args.cpu_budget:.0f} CPU-s per run, {args.seeds} seeds, {wall:.0f} s wall")
    print("| task | method | seeds | CPU-s to 95% of best HV (per seed) | median | / gp | CPU-s to gp's final HV "
          "(median) | / gp | final HV / best (per seed) | trials |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['task']} | {r['method']} | {r['seeds']} | {r['cpu_to_95pct']} | {r['median_cpu_to_95pct']:.0f} | "
              f"{r['vs_gp']} | {r['median_cpu_to_gp_final']:.0f} | {r['vs_gp_to_gp_final']} | "
              f"{r['final_hv_over_best']} | {r['trials']} |")
    from autopeft.search import DEFAULT_FULL_TRIALS

    halving_gp = [m for m in methods if parse_method(m, args.rungs)[0] and parse_method(m, args.rungs)[1] == "gp"]
    all_first = first_trials(rows, curves, DEFAULT_FULL_TRIALS)
    for method in halving_gp:
        seeds = per_seed(curves, method, extended)
        if seeds:
            longer = f", gp's runs continued to {args.extend_gp:.0f} CPU-s" if extended else ""
            print(f"\nRead per seed (95% of the best final HV of that seed's runs at {args.cpu_budget:.0f} CPU-s"
                  f"{longer}): {method} / gp CPU-s")
            print(f"| task | seed | best run | {method} CPU-s | gp CPU-s | gp spent | ratio |\n|---|---|---|---|---|---|---|")
            for r in seeds:
                print(f"| {r['task']} | {r['seed']} | {r['best_method']} | {reached(r['method_cpu'], '.0f', '-')} "
                      f"| {reached(r['gp_cpu'], '.0f', '-')} | {r['gp_spent']:.0f} | {r['ratio']} |")
            for task in sorted({r["task"] for r in seeds}):
                mine = [r for r in seeds if r["task"] == task]
                med = statistics.median(r["ratio_bound"] for r in mine)
                exact = all(not r["ratio"].startswith("<") for r in mine)
                # A bound above 1/3 decides nothing: GP's need was censored, not measured.
                verdict = ("misses" if exact or math.isinf(med) else "undecided on") if med > 1 / 3 else "meets"
                print(f"{task}: median over {len(mine)} seeds {'=' if exact or math.isinf(med) else '<='} "
                      f"{reached(med)} ({verdict} the 1/3 target)")
        first = [r for r in all_first if r["method"] in ("gp", method)]
        if first:
            print(f"\nA default-sized search ({DEFAULT_FULL_TRIALS} full trials' worth of training): its trials, the "
                  "full-fidelity ones, CPU-s spent, best full-fidelity metric and the front's hypervolume, per seed")
            print("| task | method | trials | full-fidelity | CPU-s | best | HV |\n|---|---|---|---|---|---|---|")
            for task, m in sorted({(r["task"], r["method"]) for r in first}):
                mine = [r for r in first if (r["task"], r["method"]) == (task, m)]
                cells = [" ".join(fmt.format(r[k]) for r in mine)
                         for k, fmt in (("trials", "{}"), ("full_fidelity", "{}"), ("cpu_seconds", "{:.0f}"),
                                        ("best", "{:.3f}"), ("hv", "{:.3f}"))]
                print(f"| {task} | {m} | " + " | ".join(cells) + " |")
        paired = sh_vs_gp(curves, first, method)
        if not paired:
            continue
        print(f"\n{method} against gp, seed by seed: trials in the run / GP's; final HV ratio; CPU-s to that seed's "
              "GP final front / GP's; at the default size, CPU-s ratio, HV ratio and best-metric difference")
        print("| task | seed | trials | final HV | to GP's final | default CPU-s | default HV | default best |\n"
              "|---|---|---|---|---|---|---|---|")
        for r in paired:
            print(f"| {r['task']} | {r['seed']} | {r['trials']} | {r['final_hv']:.2f} | {reached(r['to_gp_final'], '.3f')} "
                  f"| {r['default_cpu']:.2f} "
                  f"| {r['default_hv']:.2f} | {r['default_best']:+.3f} |")
        n = len(paired)
        for key, label in (("final_hv", "final front larger"), ("default_hv", "front larger at the default size")):
            wins = sum(r[key] > 1 for r in paired)
            print(f"{label}: {wins} of {n} seeds (ratios {min(r[key] for r in paired):.2f}-"
                  f"{max(r[key] for r in paired):.2f}, median {statistics.median(r[key] for r in paired):.2f}; "
                  f"sign test p = {sign_test(wins, n):.3f})")
        to_final = [r["to_gp_final"] for r in paired]
        print(f"to GP's final front: median {reached(statistics.median(to_final), '.3f')} of GP's CPU-s over {n} "
              f"seeds (never on {sum(map(math.isinf, to_final))})")
        diffs = [r["default_best"] for r in paired]
        print(f"best metric at the default size: higher on {sum(d > 0 for d in diffs)}, equal on "
              f"{sum(d == 0 for d in diffs)}, lower on {sum(d < 0 for d in diffs)} "
              f"(differences {min(diffs):+.3f} to {max(diffs):+.3f}); default CPU-s ratio "
              f"{min(r['default_cpu'] for r in paired):.2f}-{max(r['default_cpu'] for r in paired):.2f}")
    agreement = rung_agreement(rows)
    if agreement:
        print("\nDoes a rung order trials as the next does? (Spearman, pooled over seeds; promoted trials only)")
        print("| task | method | rungs | trials | Spearman |\n|---|---|---|---|---|")
        for r in agreement:
            print(f"| {r['task']} | {r['method']} | {r['rungs']} | {r['trials']} | {r['spearman']} |")
    replay = rank_check_replay(rows)
    if replay:
        print("\nWould --rank-check have opened the rung? Each halving run's rung pairs replayed in arrival order "
              "(opens: 8+ pairs whose Spearman's 95% upper bound is at most 0.3, fidelity.rank_disagreement; after that "
              "point the run would have differed; a method with the check, shpc+...: when it opened)")
        print("| task | method | seed | rungs | pairs | Spearman, all pairs | opens at (pairs, CPU-s) |\n"
              "|---|---|---|---|---|---|---|")
        for r in replay:
            at = f"{r['opens_at_pairs']}, {r['opens_at_cpu']:.0f}" if r["opens_at_pairs"] else "never"
            print(f"| {r['task']} | {r['method']} | {r['seed']} | {r['rungs']} | {r['pairs']} | {r['spearman']} | {at} |")
    clocks = trial0_clocks(rows)
    if clocks:
        print("\nClock check: trial 0 (the same configuration in each run of a seed) CPU-s per run; where runs "
              "differ by more than one trial's spread, CPU-s ratios between them measure the machine too")
        print("| task | seed | " + " | ".join(f"{m} (x gp)" for m in methods) + " |\n|---|---|" + "---|" * len(methods))
        for task, seed in sorted({(k[0], k[2]) for k in clocks}):
            gp = clocks.get((task, "gp", seed))
            cells = [f"{clocks[(task, m, seed)]:.0f}" + (f" ({clocks[(task, m, seed)] / gp:.2f})" if gp else "")
                     if (task, m, seed) in clocks else "-" for m in methods]
            print(f"| {task} | {seed} | " + " | ".join(cells) + " |")
        print("\nOn each run's own clock (CPU-s in units of its trial 0): median trial-0 units to GP's final HV, "
              "and / gp")
        print("| task | method | units to gp's final HV (median) | / gp |\n|---|---|---|---|")
        for r in table(on_trial0_clock(curves, clocks), [m for m in methods if not is_promotion(m)]):
            print(f"| {r['task']} | {r['method']} | {r['median_cpu_to_gp_final']:.1f} | {r['vs_gp_to_gp_final']} |")
    pairs = [(x, y) for i, x in enumerate(methods) for y in methods[i + 1:]]
    repeats = [(x, y, r) for x, y in pairs for r in replayed(rows, x, y) if r["trials"] > 1]
    if repeats:
        print("\nRuns that repeat another's first trials (identical trials), and what those cost in the second run / the first")
        print("| task | seed | first run | second run | identical trials | CPU-s ratio |\n|---|---|---|---|---|---|")
        for x, y, r in repeats:
            print(f"| {r['task']} | {r['seed']} | {x} | {y} | {r['trials']} of {r['of']} | {r['cpu_ratio']:.2f} |")
    fronts = final_fronts(rows)
    print("\nFinal full-fidelity fronts (trainable params: metric, by size), and the best metric")
    print("| task | method | seed | front | best |\n|---|---|---|---|---|")
    for (task, m, seed), front in fronts.items():
        print(f"| {task} | {m} | {seed} | " + ", ".join(f"{n:,}: {v:.3f}" for n, v in front)
              + f" | {front[-1][1]:.3f} ({front[-1][0]:,}) |")
    against_gp = fronts_vs_gp(fronts)
    if against_gp:
        print("\nEach final front against the same seed's GP front, point by point (a point is beaten when one of the "
              "other front's points dominates it: params <= and metric >=, one strictly)")
        print("| task | method | seed | GP's points it beats | its points GP beats |\n|---|---|---|---|---|")
        for r in against_gp:
            print(f"| {r['task']} | {r['method']} | {r['seed']} | {r['gp_beaten']} of {r['gp_points']} "
                  f"| {r['beaten']} of {r['points']} |")
    capped = capped_vs_gp(fronts, lora_r8_sizes(sorted({t for t, _, _ in fronts})), refs)
    if capped:
        print("\nUp to LoRA r=8's size, params on a linear axis: each final front's hypervolume / the same seed's GP "
              "front's, and the best metric within that size (the headline ratio is on log10 params, where the "
              "smallest points weigh most)")
        print("| task | LoRA r=8 params | method | seed | HV / GP's | best | GP's best |\n|---|---|---|---|---|---|---|")
        for r in capped:
            print(f"| {r['task']} | {r['cap']:,} | {r['method']} | {r['seed']} | {reached(r['ratio'])} "
                  f"| {r['best']:.3f} | {r['gp_best']:.3f} |")
        for m in sorted({r["method"] for r in capped}):
            mine = [r for r in capped if r["method"] == m]
            wins = sum(r["ratio"] > 1 for r in mine)
            gaps = [r["best"] - r["gp_best"] for r in mine if not math.isnan(r["best"] - r["gp_best"])]
            better = (f"; best metric in range higher on {sum(g > 0 for g in gaps)} of {len(gaps)} "
                      f"({min(gaps):+.3f} to {max(gaps):+.3f})" if gaps else "")
            print(f"{m}: larger up to LoRA r=8's size on {wins} of {len(mine)} seeds (median ratio "
                  f"{reached(statistics.median(r['ratio'] for r in mine))}; sign test p = {sign_test(wins, len(mine)):.3f})"
                  + better)
    unlearned = unlearned_at_rung0(rows, args)
    if unlearned:
        print("\nRung 0 trials no better than a constant prediction, and no better than chance, on the rung's rows "
              "(untagged runs ranked them by size)")
        print("| task | method | seed | constant prediction | such trials | chance | such trials | trials at rung 0 |\n"
              "|---|---|---|---|---|---|---|---|")
        for r in unlearned:
            print(f"| {r['task']} | {r['method']} | {r['seed']} | {r['constant']} | {r['unlearned']} | {r['chance']} "
                  f"| {r['within_chance']} | {r['trials']} |")
    promoted = promotions(rows, args)
    if promoted:
        print("\nWho went on from each rung (seeds pooled; 'learned': above chance on the rung's rows)")
        print("| task | method | rung | trials there | learned | learned, went on | not learned, went on "
              "| share that went on | nominal |\n|---|---|---|---|---|---|---|---|---|")
        for r in promoted:
            print(f"| {r['task']} | {r['method']} | {r['rung']} | {r['reached']} | {r['learned']} | {r['learned_on']} "
                  f"| {r['unlearned_on']} | {r['share_on']} | {r['nominal']} |")
    costs = part_costs(rows)
    if costs:
        print("\nWhat a trial cost by the part of the budget it trained (promotion type; CPU-s, mean ± std; "
              "a failed trial's CPU-s fall on the next trial)")
        print("| task | method | from | to | trials | CPU-s |\n|---|---|---|---|---|---|")
        for r in costs:
            print(f"| {r['task']} | {r['method']} | {r['from']:.3f} | {r['to']:.3f} | {r['trials']} "
                  f"| {r['cpu_mean']:.1f} ± {r['cpu_std']:.1f} |")
    png = common.RESULTS / "multifidelity.png"
    _plot(curves, png)
    if args.report:  # the runs were logged when they ran
        return
    common.log_mlflow("multifidelity", {k: getattr(args, k) for k in ("seeds", "cpu_budget", "space", "train_examples",
                                                                       "rungs", "reduction_factor")},
                      {re.sub(r"[^\w.-]", "_", f"{r['task']}.{r['method']}.vs_gp"): r["vs_gp"] for r in summary},  # MLflow refuses "+", "@"
                      [trials_csv, table_csv, png])


# One colour per method in every plot, whatever else a reading holds; a rerun (``@tag``) takes its
# method's colour, dashed. Methods not listed take one from their name, so it too never changes.
COLOURS = {"gp": "tab:red", "random": "tab:gray", "sh+gp": "tab:blue", "sh+random": "tab:green",
           "shp+gp": "tab:purple", "shq+gp": "tab:olive", "shp+random": "tab:brown", "shq+random": "tab:cyan"}


def method_colour(method: str) -> str:
    import zlib

    base = method.partition("@")[0]
    if base in COLOURS:
        return COLOURS[base]
    spare = ("tab:pink", "gold", "navy", "teal", "maroon", "darkorange", "lime", "black")
    return spare[zlib.crc32(base.encode()) % len(spare)]


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        best = max(c[-1][1] for k, c in curves.items() if k[0] == task and c) or 1.0
        for (t, m, seed), c in sorted(curves.items()):
            if t == task and c:
                ax.step([x for x, _ in c], [y / best for _, y in c], where="post", color=method_colour(m), alpha=0.8,
                        linestyle="--" if "@" in m else "-", label=m if seed == 0 else None)
        ax.set_title(f"{task} (full-fidelity trials)")
    common.finish_hv_plot(fig, axes[0], TARGET, "CPU-seconds", path)


if __name__ == "__main__":
    main()
