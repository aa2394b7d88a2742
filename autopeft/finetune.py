"""Full-budget training of an exported (or hand-written) configuration: ``autopeft train``.

The model trains with a dev evaluation after every epoch; the best epoch's trainable weights are
kept and restored at the end. A configuration peft can hold trains as a peft model and is saved as
a peft adapter folder (``peft/``: ``PeftModel.from_pretrained`` loads it, task head included); any
other keeps the `adapters` form (one ``save_adapter`` folder per adapter, plus the trained
non-adapter parameters, i.e. the task head and any BitFit biases, as safetensors). ``load_trained``
reloads either. The run is logged to MLflow as a child of the search it came from, with the trained
model as an MLflow Model (``autopeft/mlflow_model.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from autopeft.config import TrainBudget
from autopeft.errors import AutopeftError
from autopeft.export import ExportedConfig

TRAIN_CONFIG = "train_config.json"  # the export plus the budget it was trained with
BASE_PARAMS_FILE = "trained_base_params.safetensors"  # task head (+ BitFit biases)
FULL_MODEL_DIR = "model"  # full fine-tuning: a plain save_pretrained folder
# How an output folder holds the model: a peft adapter, `adapters` folders, or a full save_pretrained.
PEFT_FORM, ADAPTERS_FORM, FULL_FORM = "peft", "adapters", "full"
TARGET_SCALE_KEY = "target_scale"  # train_config.json: a regression head's target mean/std


def full_budget(found_with: TrainBudget, train_examples: int | None = None, epochs: float = 3.0,
                eval_examples: int | None = None, learning_rate: float | None = None,
                batch_size: int | None = None, seed: int | None = None) -> TrainBudget:
    """The search's settings (sequence length, learning rate, ...) at full size: all data, more epochs."""
    changes: dict[str, Any] = {"train_examples": train_examples, "eval_examples": eval_examples, "epochs": epochs,
                               "max_steps": None}
    if learning_rate is not None:
        changes["learning_rate"] = learning_rate
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if seed is not None:
        changes["seed"] = seed
    return found_with.replace(**changes)


@dataclass
class TrainedModel:
    output_dir: Path
    metric_name: str
    metric: float  # dev metric of the kept (best) epoch, measured after restoring it
    best_epoch: int
    history: list[dict[str, float]]
    trainable_params: int
    trainable_percent: float
    peak_memory_mb: float
    train_seconds: float
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    target_scale: dict[str, float] | None = None  # regression: the training targets' mean and std
    select_on: str = "dev"  # the split ``history`` (and the best-epoch choice) is on; ``metrics`` are dev's
    form: str = ADAPTERS_FORM  # PEFT_FORM | ADAPTERS_FORM | FULL_FORM
    note: str | None = None  # why a PEFT config kept the `adapters` form (no peft form), one line
    examples: list[tuple[str, ...]] = field(default_factory=list)  # a few dev texts: the MLflow input example


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_exported(exp: ExportedConfig, budget: TrainBudget, output_dir: str | Path, data_dir: str | None = None,
                   full_finetune: bool = False, device: str = "cpu",
                   on_step: Callable[[int, int, float], None] | None = None,
                   on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainedModel:
    """Train ``exp`` under ``budget``, keep the best epoch, save it to ``output_dir``."""
    from autopeft.build import build_full_model, build_model
    from autopeft.peft_export import to_peft
    from autopeft.tasks import load_splits, load_task
    from autopeft.train import score_split, train_and_evaluate

    task = load_task(exp.task)
    # A config found on held-out rows picks its best epoch on the same rows (the budget carries
    # them); either way the dev split is scored once, at the end, for the report.
    splits = load_splits(task, data_dir, budget.select_on, budget.holdout_size, budget.holdout_seed)
    note = None
    if full_finetune:
        built, form = build_full_model(exp.model, task.num_labels, seed=budget.seed), FULL_FORM
    else:
        peft_form, built = to_peft(exp.model, exp.peft, task.num_labels, seed=budget.seed)
        form = PEFT_FORM if built is not None else ADAPTERS_FORM
        if built is None:
            note = peft_form.note()
            built = build_model(exp.model, exp.peft, task.num_labels, seed=budget.seed)
    model, tokenizer, names = built.model, built.tokenizer, built.adapter_names
    trainable, base = built.trainable_params, built.base_params

    best: dict[str, Any] = {"metric": float("-inf"), "epoch": 0, "state": None}

    def keep_best(epoch: int, metrics: dict[str, float]) -> None:
        if metrics[task.primary_metric] > best["metric"]:
            best.update(metric=metrics[task.primary_metric], epoch=epoch, state=_trainable_state(model))
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    result = train_and_evaluate(model, tokenizer, task, splits.train, splits.select, budget, device=device,
                                on_epoch=keep_best, on_step=on_step)
    if best["state"] is not None:  # restore the best epoch (the last one may be worse)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, value in best["state"].items():
                params[n].copy_(value)
    metrics = score_split(model, tokenizer, task, splits.dev, budget, device, result.target_scale)

    target_scale = result.target_scale.to_dict() if result.target_scale else None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save(model, tokenizer, names, out, form)
    from autopeft.export import HUB_IDS

    (out / TRAIN_CONFIG).write_text(json.dumps({
        "export": exp.to_dict(), "budget": budget.to_dict(), "full_finetune": full_finetune, "form": form,
        "adapters": [] if form == PEFT_FORM else names, "num_labels": task.num_labels,
        "base_model": HUB_IDS.get(exp.model, exp.model),  # what a user without autopeft loads the base from
        "labels": list(task.labels) if task.labels else None, "text_columns": list(_text_columns(task)),
        "metric_name": task.primary_metric, "metrics": metrics,
        "best_epoch": best["epoch"], "history": result.history, "trainable_params": trainable,
        "select_on": splits.select_on,  # the split of `history` (best-epoch choice); `metrics` are dev's
        # Regression: the head outputs z-scores; load_trained maps them back with these.
        TARGET_SCALE_KEY: target_scale,
    }, indent=2, sort_keys=True) + "\n")
    return TrainedModel(out, task.primary_metric, metrics[task.primary_metric], best["epoch"], result.history,
                        trainable, 100.0 * trainable / base, result.peak_memory_mb, result.train_seconds,
                        metrics=metrics, target_scale=target_scale, select_on=splits.select_on, form=form,
                        note=note, examples=list(splits.dev.texts[:2]))


def _text_columns(task: Any) -> tuple[str, ...]:
    """The input column names a served model takes: the task's own text columns."""
    return tuple((task.local or task.hub).text_columns)  # a task has at least one of them


def _save(model: torch.nn.Module, tokenizer: Any, names: list[str], out: Path, form: str) -> None:
    from safetensors.torch import save_file

    from autopeft.build import ADAPTER_NAME
    from autopeft.peft_export import PEFT_DIR

    tokenizer.save_pretrained(out / "tokenizer")
    if form == FULL_FORM:
        model.save_pretrained(out / FULL_MODEL_DIR)
        return
    if form == PEFT_FORM:  # adapter_config.json + adapter_model.safetensors, the task head included
        model.save_pretrained(out / PEFT_DIR)
        return
    for name in names:
        model.save_adapter(str(out / name), name)
    # save_adapter keeps only adapter modules (its with_head needs adapters' own heads, which a
    # Hugging Face AutoModelForSequenceClassification does not have): save the rest ourselves.
    rest = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
            if p.requires_grad and ADAPTER_NAME not in n}
    save_file(rest, str(out / BASE_PARAMS_FILE))


def load_trained(folder: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Model, tokenizer and train config of an ``autopeft train`` output folder, ready for inference.

    A regression model's logits come out on the task's own scale: the target mean/std it was
    trained with (``train_config.json``'s ``target_scale``) are applied by a forward hook.
    """
    from autopeft.train import TargetScale

    folder = Path(folder)
    try:
        info = json.loads((folder / TRAIN_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AutopeftError(f"{folder} is not an autopeft train output ({TRAIN_CONFIG}: {exc})") from None
    model, tokenizer = _load_weights(folder, info)
    if info.get(TARGET_SCALE_KEY):  # absent in folders written before targets were standardised
        TargetScale.from_dict(info[TARGET_SCALE_KEY]).attach(model)
    return model.eval(), tokenizer, info


def _load_weights(folder: Path, info: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    form = info.get("form", FULL_FORM if info["full_finetune"] else ADAPTERS_FORM)  # older outputs lack it
    if form == FULL_FORM:
        return AutoModelForSequenceClassification.from_pretrained(folder / FULL_MODEL_DIR), tokenizer
    from autopeft.build import load_base

    if form == PEFT_FORM:
        from peft import PeftModel

        from autopeft.peft_export import PEFT_DIR

        base, _, _ = load_base(info["export"]["model"], info["num_labels"])
        return PeftModel.from_pretrained(base, str(folder / PEFT_DIR)), tokenizer
    import adapters
    from safetensors.torch import load_file

    model, _, _ = load_base(info["export"]["model"], info["num_labels"])
    adapters.init(model)
    for name in info["adapters"]:
        model.load_adapter(str(folder / name))
    if info["adapters"]:
        names = info["adapters"]
        model.set_active_adapters(names[0] if len(names) == 1 else adapters.Stack(*names))
    missing = set(load_file(str(folder / BASE_PARAMS_FILE))) - set(dict(model.named_parameters()))
    if missing:
        raise AutopeftError(f"{folder}: saved parameters {sorted(missing)[:3]} do not exist in the rebuilt model")
    model.load_state_dict(load_file(str(folder / BASE_PARAMS_FILE)), strict=False)
    return model, tokenizer


def check_register(full_finetune: bool, register: str | None) -> None:
    """Refuse, before any training, a registration that could not happen."""
    if full_finetune and register:
        raise AutopeftError("--register needs a PEFT result: a full fine-tune is not logged as an MLflow Model "
                            "(drop --register, or train the PEFT config)")


def log_training(result: TrainedModel, exp: ExportedConfig, budget: TrainBudget, full_finetune: bool,
                 tracking_uri: str | None, experiment: str = "autopeft", name: str | None = None,
                 register: str | None = None) -> str:
    """Record the run in MLflow, nested under the search it came from when that run is in the store.

    A PEFT result is logged as the run's MLflow Model ``model`` (registered as ``register`` when given);
    a full fine-tune is not copied into the store.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from autopeft.schema import (EVAL_SPLIT_TAG, EXPERIMENT_TAGS, FORM_TAG, KIND_TAG, KIND_TRAIN, MODEL_TAG, PARENT_TAG,
                                 PEFT_TAG,
                                 SEARCH_TAG, SELECT_SPLIT_TAG, SOURCE_RUN_TAG, TASK_TAG)
    from autopeft.tracking import local_artifact_root, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri or exp.source.get("tracking_uri"))
    client = MlflowClient(uri)
    exp_obj = client.get_experiment_by_name(experiment)
    experiment_id = exp_obj.experiment_id if exp_obj else client.create_experiment(
        experiment, artifact_location=local_artifact_root(uri), tags=EXPERIMENT_TAGS)
    check_register(full_finetune, register)
    tags = {KIND_TAG: KIND_TRAIN, FORM_TAG: result.form, PEFT_TAG: "full fine-tuning" if full_finetune else exp.peft.describe(),
            MODEL_TAG: exp.model, TASK_TAG: exp.task, EVAL_SPLIT_TAG: "dev", SELECT_SPLIT_TAG: result.select_on}
    if exp.source.get("search"):
        tags[SEARCH_TAG] = exp.source["search"]
    parent = exp.source.get("parent_run_id")
    if parent and _run_exists(client, parent):
        tags[PARENT_TAG] = parent  # the MLflow UI then shows it under its search
    if exp.source.get("run_id"):
        tags[SOURCE_RUN_TAG] = exp.source["run_id"]
    run = client.create_run(experiment_id, run_name=name or f"train-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    run_id = run.info.run_id
    params = {"model": exp.model, "task": exp.task, "full_finetune": full_finetune,
              **{f"budget/{k}": v for k, v in budget.to_dict().items()},
              **{f"{TARGET_SCALE_KEY}/{k}": v for k, v in (result.target_scale or {}).items()}}
    now = int(time.time() * 1000)
    # Per-epoch scores are named by their split (dev_accuracy, holdout_accuracy); the final ones are dev's.
    metrics = [Metric(f"{result.select_on}_{k}", float(v), now, int(h["epoch"])) for h in result.history
               for k, v in h.items() if k not in ("epoch", "step")]
    final = {"metric": result.metric, **result.metrics, "best_epoch": result.best_epoch,
             "trainable_params": result.trainable_params, "trainable_percent": result.trainable_percent,
             "peak_memory_mb": result.peak_memory_mb, "train_seconds": result.train_seconds}
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run_id, exp.to_dict(), "export.json")
    if not full_finetune:  # PEFT weights are small; a full model is not copied into the store
        from autopeft.mlflow_model import input_example, log_trained_model

        info = json.loads((result.output_dir / TRAIN_CONFIG).read_text())
        log_trained_model(uri, run_id, result.output_dir, input_example(info["text_columns"], result.examples),
                          register)
    client.set_terminated(run_id, "FINISHED")
    result.run_id = run_id
    return run_id


def _run_exists(client: Any, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        return False
