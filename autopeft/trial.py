"""One trial: build the configured model, short-train it, evaluate it, report.

``run_config`` is plain Python (the benchmarks and ``autopeft train`` call it); ``ray_trainable``
is the thin Ray Tune function around it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from autopeft.config import PeftConfig, TrainBudget
from autopeft.objectives import METRIC, PEAK_MEMORY_MB, TRAINABLE_PARAMS, measure_all
from autopeft.schema import EVAL_SPLIT


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (no sampled values)."""

    model: str
    task: str
    budget: TrainBudget = field(default_factory=TrainBudget)
    data_dir: str | None = None
    memory_limit_mb: float | None = None  # peak training memory above which a trial fails

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget": self.budget.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialContext":
        return cls(d["model"], d["task"], TrainBudget.from_dict(d["budget"]), d.get("data_dir"),
                   d.get("memory_limit_mb"))


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
               device: str = "cpu", full_finetune: bool = False, report_dev: bool = False) -> dict[str, Any]:
    """Build, train and evaluate ``peft`` on ``ctx``; return the report of one trial.

    ``full_finetune`` trains every weight instead (``peft`` is then ignored): the reference the
    benchmarks compare PEFT against, trained by the same loop. ``report_dev`` with a budget that
    selects on a holdout also scores the trained model on the dev split (keys ``dev_<metric>``):
    the benchmarks choose by the holdout metric and report the dev one of the same run.
    """
    from autopeft.build import build_full_model, build_model
    from autopeft.tasks import HOLDOUT, load_splits, load_task
    from autopeft.train import score_split, train_and_evaluate

    budget = budget or ctx.budget
    task = load_task(ctx.task)
    splits = load_splits(task, ctx.data_dir, budget.select_on, budget.holdout_size, budget.holdout_seed)
    if full_finetune:
        built = build_full_model(ctx.model, task.num_labels, seed=budget.seed)
    else:
        built = build_model(ctx.model, peft, task.num_labels, seed=budget.seed)
    # Scored on the selection split (dev, or rows held out of train): what the search chooses by.
    result = train_and_evaluate(built.model, built.tokenizer, task, splits.train, splits.select, budget,
                                device=device, memory_limit_mb=ctx.memory_limit_mb)
    dev: dict[str, float] = {}
    if report_dev and splits.select_on == HOLDOUT:
        dev = score_split(built.model, built.tokenizer, task, splits.dev, budget, device, result.target_scale)
    measured = measure_all(TrainedTrial(built, task, budget, device, result))
    return {
        METRIC: result.metrics[task.primary_metric],
        **result.metrics,
        EVAL_SPLIT: splits.select_on,  # which split every metric above is on (dev_* keys: dev's)
        **{f"dev_{k}": v for k, v in dev.items()},
        TRAINABLE_PARAMS: built.trainable_params,
        "trainable_percent": built.trainable_percent,
        "base_params": built.base_params,
        PEAK_MEMORY_MB: result.peak_memory_mb,
        "memory_measure": result.memory_measure,  # cuda_max_allocated on GPU, RSS on CPU
        "device": device,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "train_loss": result.train_loss,
        "steps": result.steps,
        **measured,
    }


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
    report = run_config(ctx, peft, budget, device=pick_device(resources.get("GPU", 0)))
    report["node_id"] = ray.get_runtime_context().get_node_id()
    tune.report(report)
