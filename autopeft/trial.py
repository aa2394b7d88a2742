"""One trial: build the configured model, short-train it, evaluate it, report.

``run_config`` is plain Python (the benchmarks and ``autopeft train`` call it); ``ray_trainable``
is the thin Ray Tune function around it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from autopeft.config import PeftConfig, TrainBudget
from autopeft.objectives import METRIC, PEAK_MEMORY_MB, TRAINABLE_PARAMS, available_objectives, measure_all
from autopeft.run_states import RunStates
from autopeft.schema import (CPU_SECONDS, CPU_SECONDS_NOTE, EVAL_SPLIT, FIDELITY, NO_SKILL, RESUME_OF, RESUME_RUNG, RUNG,
                             RUNGS, TRAINED)
from autopeft.tasks.metrics import CHANCE_QUANTILE


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (no sampled values)."""

    model: str
    task: str
    budget: TrainBudget = field(default_factory=TrainBudget)
    data_dir: str | None = None
    memory_limit_mb: float | None = None  # peak training memory above which a trial fails
    # Successive halving: each rung's share of the budget (``fidelity.rung_fractions``; empty =
    # one report at the end), and the objectives to measure at the rungs below the top (the
    # search's: a rung decides on them only, and measuring latency there would cost a model copy).
    rungs: tuple[float, ...] = ()
    rung_objectives: tuple[str, ...] = ()
    # Seeds a config is trained with at the full budget (the top rung): its metric is their mean,
    # the spread is reported beside it. One seed's result at a short budget is luck as often as not.
    seeds: int = 1
    # How sure a rung must be that a trial learned before ranking it on its metric (train.py).
    rung_confidence: float = CHANCE_QUANTILE
    # Halving of the promotion type: where stopped runs keep their training state (run_states.py);
    # None = the stopping type (a trial goes on in its own process or ends at its rung).
    states_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget": self.budget.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialContext":
        return cls(d["model"], d["task"], TrainBudget.from_dict(d["budget"]), d.get("data_dir"),
                   d.get("memory_limit_mb"), tuple(d.get("rungs", ())), tuple(d.get("rung_objectives", ())),
                   d.get("seeds", 1), d.get("rung_confidence", CHANCE_QUANTILE), d.get("states_dir"))


@dataclass
class TrainedTrial:
    """A trained trial, as objective measurements see it (``Objective.measure`` takes one)."""

    built: Any  # build.BuiltModel: model, tokenizer, counts
    task: Any  # tasks.TaskSpec
    budget: TrainBudget
    device: str
    result: Any  # train.TrainResult


def pick_device(gpus: float = 0) -> str:
    import torch

    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def run_config(ctx: TrialContext, peft: PeftConfig, budget: TrainBudget | None = None,
               device: str = "cpu", full_finetune: bool = False, report_dev: bool = False,
               on_rung: Callable[[dict[str, Any]], bool] | None = None,
               keep_state: Callable[[Any], None] | None = None, resume: Any = None) -> dict[str, Any]:
    """Build, train and evaluate ``peft`` on ``ctx``; return the report of one trial.

    ``full_finetune`` trains every weight instead (``peft`` is then ignored): the reference the
    benchmarks compare PEFT against, trained by the same loop. The report's metrics are on the
    budget's selection split (dev, or rows held out of train: ``EVAL_SPLIT`` says which);
    ``report_dev`` with a holdout also scores the trained model on the dev split (keys
    ``dev_<metric>``): the benchmarks choose by the holdout metric and report the dev one of the
    same run. With ``ctx.rungs`` and ``on_rung``, each rung below the top hands ``on_rung`` the
    report so far; False stops the trial there and that report is returned (its ``rung`` says where).
    Halving of the promotion type: ``keep_state`` is handed the stopped run's ``train.TrainState``,
    and a later call with it as ``resume`` (same ``ctx``, ``peft`` and ``budget``) goes on from that
    rung; its report's CPU-seconds are its own.
    """
    from autopeft.build import build_full_model, build_model
    from autopeft.tasks import HOLDOUT
    from autopeft.train import score_split, train_and_evaluate

    budget = budget or ctx.budget
    t0, cpu0 = time.perf_counter(), time.process_time()
    task, splits = _task_data(ctx.task, ctx.data_dir, budget.select_on, budget.holdout_size, budget.holdout_seed)
    if full_finetune:
        built = build_full_model(ctx.model, task.num_labels, seed=budget.seed)
    else:
        built = build_model(ctx.model, peft, task.num_labels, seed=budget.seed)
    stopped: list[dict[str, Any]] = []  # the report of the rung that stopped the trial

    def at_rung(rung: int, partial: Any) -> bool:
        # Measured objectives may change the model (latency merges LoRA): measure on a copy.
        keys = [k for k in ctx.rung_objectives if available_objectives()[k].measure is not None]
        model = copy.deepcopy(built.model) if keys else built.model
        trained = TrainedTrial(dataclasses.replace(built, model=model), task, budget, device, partial)
        report = _report(trained, measure_all(trained, keys), rung, ctx.rungs, splits.select_on)
        report[CPU_SECONDS] = time.process_time() - cpu0
        if on_rung(report):
            return True
        stopped.append(report)
        return False

    # Scored on the selection split (dev, or rows held out of train): what the search chooses by.
    result = train_and_evaluate(built.model, built.tokenizer, task, splits.train, splits.select, budget, device=device,
                                memory_limit_mb=ctx.memory_limit_mb, rungs=ctx.rungs,
                                on_rung=at_rung if on_rung is not None and ctx.rungs else None,
                                rung_confidence=ctx.rung_confidence, keep_state=keep_state is not None,
                                resume=resume)
    if stopped:
        if keep_state is not None:
            keep_state(result.state)
        return stopped[0]
    dev: dict[str, float] = {}
    if report_dev and splits.select_on == HOLDOUT:  # before measuring: latency may merge LoRA in place
        dev = score_split(built.model, built.tokenizer, task, splits.dev, budget, device, result.target_scale)
    trained = TrainedTrial(built, task, budget, device, result)
    setup = time.perf_counter() - t0 - result.train_seconds - result.eval_seconds
    t1 = time.perf_counter()
    measured = measure_all(trained)
    # Where a trial's time goes besides training and scoring (benchmarks/overhead.py): data and
    # model loading (with the rung reports), and measuring the objectives after training.
    measured.update(setup_seconds=setup, measure_seconds=time.perf_counter() - t1)
    report = _report(trained, measured, len(ctx.rungs) - 1 if ctx.rungs else None, ctx.rungs, splits.select_on)
    report.update({f"dev_{k}": v for k, v in dev.items()})
    report[CPU_SECONDS] = time.process_time() - cpu0
    if ctx.seeds > 1:
        others = [run_config(dataclasses.replace(ctx, rungs=(), seeds=1), peft, budget.replace(seed=budget.seed + i),
                             device, full_finetune) for i in range(1, ctx.seeds)]
        report.update(over_seeds([report, *others]))
    return report


def over_seeds(reports: list[dict[str, Any]]) -> dict[str, float]:
    """One config trained with several seeds, as one result: the metric is the mean (what the
    front ranks), its spread (std, min, max, each seed's) beside it, memory the largest, and
    the training and scoring time of all runs together."""
    import statistics

    metrics = [r[METRIC] for r in reports]
    out: dict[str, float] = {f"{METRIC}_seed{i}": m for i, m in enumerate(metrics)}
    out.update({METRIC: statistics.fmean(metrics), f"{METRIC}_std": statistics.stdev(metrics),
                f"{METRIC}_min": min(metrics), f"{METRIC}_max": max(metrics), "seeds": len(reports),
                PEAK_MEMORY_MB: max(r[PEAK_MEMORY_MB] for r in reports),
                "train_seconds": sum(r["train_seconds"] for r in reports),
                "eval_seconds": sum(r["eval_seconds"] for r in reports),
                CPU_SECONDS: sum(r[CPU_SECONDS] for r in reports)})
    return out


@functools.lru_cache(maxsize=4)
def _task_data(task_ref: str, data_dir: str | None, select_on: str, holdout_size: float,
               holdout_seed: int) -> tuple[Any, Any]:
    """The task and its splits (``tasks.Splits``), read once per process: a reused Ray worker
    (actor reuse) runs many trials of one search, and re-reading SST-2's 67k rows each time is
    fixed cost. Splits are never modified (training subsamples into new lists)."""
    from autopeft.tasks import load_splits, load_task

    task = load_task(task_ref)
    return task, load_splits(task, data_dir, select_on, holdout_size, holdout_seed)


def _report(trained: TrainedTrial, measured: dict[str, float], rung: int | None,
            rungs: tuple[float, ...], select_on: str) -> dict[str, Any]:
    """A trial's report: every objective, the task's own metrics, timings, and where it stopped."""
    built, result = trained.built, trained.result
    report = {
        METRIC: result.metrics[trained.task.primary_metric],
        **result.metrics,
        EVAL_SPLIT: select_on,  # which split every metric above is on (dev_* keys: dev's)
        TRAINABLE_PARAMS: built.trainable_params,
        "trainable_percent": built.trainable_percent,
        "base_params": built.base_params,
        PEAK_MEMORY_MB: result.peak_memory_mb,
        "memory_measure": result.memory_measure,  # cuda_max_allocated on GPU, RSS on CPU
        "device": trained.device,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "train_loss": result.train_loss,
        "steps": result.steps,
        **measured,
    }
    if rung is not None:  # successive halving: the rung reached and its share of the full budget
        report.update({RUNG: rung, RUNGS: len(rungs), FIDELITY: rungs[rung]})
        if result.no_skill is not None:
            report[NO_SKILL] = result.no_skill
    return report


def ray_trainable(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable: the config carries the sampled ``peft_config``."""
    import ray
    import torch
    from ray import tune

    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ctx = TrialContext.from_dict(context)
    peft = PeftConfig.from_dict(config["peft_config"])
    budget = ctx.budget.replace(**config.get("training", {}))
    node = ray.get_runtime_context().get_node_id()
    global _TRIALS_IN_PROCESS
    device = pick_device(resources.get("GPU", 0))
    reused = _TRIALS_IN_PROCESS > 0
    _TRIALS_IN_PROCESS += 1

    # Halving of the promotion type: every run stops at its rung with its state kept, and a
    # promoted one is resumed by a later trial (``RESUME_OF``: the run's first trial number).
    states = RunStates(ctx.states_dir) if ctx.states_dir else None
    root = config.get(RESUME_OF)
    run = root if root is not None else config["trial_number"]

    def send(report: dict[str, Any]) -> None:
        # What --full-trials counts for this trial: the share of the full budget it trained itself
        # (a resumed run only from the rung it resumed at), and each further --top-seeds seed, one
        # more full-budget training.
        share = report.get(FIDELITY, 1.0) - (ctx.rungs[config[RESUME_RUNG]] if root is not None else 0.0)
        report[TRAINED] = share + report.get("seeds", 1) - 1
        tune.report(_mark_reuse(report, node, reused, device))

    def at_rung(report: dict[str, Any]) -> bool:
        # The stopping type: the scheduler answers by stopping this trial (Ray ends the thread
        # inside report); a trial it lets go on simply continues training.
        send(report)
        return states is None

    cpu0 = time.process_time()
    try:
        report = run_config(ctx, peft, budget, device=device, on_rung=at_rung,
                            keep_state=(lambda state: states.save(run, state)) if states else None,
                            resume=states.load_claimed(root) if states and root is not None else None)
    except Exception as exc:  # a failed trial reports nothing else: say what it cost (ray_glue reads it)
        exc.add_note(f"{CPU_SECONDS_NOTE} {time.process_time() - cpu0:.3f}")
        raise
    if states is not None and root is not None:
        states.release(root)  # its next state is kept (or it reached the top): the claimed one is spent
    if report.get(RUNG) is not None and report[RUNG] < len(ctx.rungs) - 1:
        return  # stopped at a rung, where it reported
    send(report)


# Trials this process has run: Ray reuses a trial's process for the next (actor reuse).
_TRIALS_IN_PROCESS = 0


def _mark_reuse(report: dict[str, Any], node: str, reused: bool, device: str) -> dict[str, Any]:
    # On CPU the peak is RSS above the loaded model; in a reused process the allocator may still
    # hold an earlier trial's memory, so the figure is a lower bound: say so beside it.
    if reused and device == "cpu":
        report = {**report, "memory_measure": f"{report['memory_measure']}_reused_process"}
    return {**report, "node_id": node}
