"""Short training and evaluation of one configured model: a plain torch loop, no Ray, no MLflow."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from autopeft.config import TrainBudget
from autopeft.errors import AutopeftError
from autopeft.fidelity import rung_rows, rung_steps
from autopeft.memory import PeakMemory, TrialOutOfMemory
from autopeft.tasks import Split, TaskSpec, chance_score, compute_metrics
from autopeft.tasks.metrics import CHANCE_QUANTILE


class TrainingDiverged(AutopeftError):
    """The loss became NaN, infinite or exploded: the configuration or learning rate is unstable."""


# A loss this many times its first value (or 1) has left any basin; LayerNorm can keep such a
# run finite for a long time, so waiting for NaN would waste the trial's budget.
DIVERGENCE_FACTOR = 100.0


@dataclass
class Batches:
    """Tokenised examples, padded per batch (short GLUE sentences waste little)."""

    input_ids: list[list[int]]
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int, seed: int) -> "Batches":
        """``n`` examples drawn with ``seed`` (all when ``n`` covers them); files are often sorted,
        so a prefix would not stand for the split."""
        if n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return Batches([self.input_ids[i] for i in idx], [self.labels[i] for i in idx])

    def batch(self, idx: list[int], pad_id: int, regression: bool) -> dict[str, torch.Tensor]:
        rows = [self.input_ids[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        dtype = torch.float if regression else torch.long
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([self.labels[i] for i in idx], dtype=dtype)}


def tokenize(split: Split, tokenizer: Any, max_length: int) -> Batches:
    columns = list(zip(*split.texts))  # one list per text field
    enc = tokenizer(*columns, truncation=True, max_length=max_length)
    return Batches(enc["input_ids"], list(split.labels))


def subsample(split: Split, n: int | None, seed: int) -> Split:
    """The first ``n`` examples of a seeded shuffle (all of them when ``n`` is None)."""
    if n is None or n >= len(split):
        return split
    idx = sorted(random.Random(seed).sample(range(len(split)), n))
    return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])


@dataclass(frozen=True)
class TargetScale:
    """Mean and std of a regression task's training targets: the model trains on z-scores.

    Why: a fresh regression head outputs ~0 while targets sit at, say, 3.5 +- 1 (SICK relatedness
    1-5); with raw targets the short budgets spent their steps chasing the mean under gradient
    clipping, and LoRA r=8 reached SICK-R Pearson 0.037 where z-scored targets reach 0.81.
    Predictions are mapped back with ``restore`` before anything is scored or returned, so metrics
    and outputs stay on the task's own scale.
    """

    mean: float
    std: float

    @classmethod
    def fit(cls, targets: list[float]) -> "TargetScale":
        n = len(targets)
        mean = sum(targets) / n
        std = math.sqrt(sum((y - mean) ** 2 for y in targets) / n)
        # Constant targets (a tiny or degenerate subset) have no spread to divide by: only centre them.
        return cls(mean, std if std > 0 else 1.0)

    def standardise(self, targets: list[float]) -> list[float]:
        return [(y - self.mean) / self.std for y in targets]

    def restore(self, values: Any) -> Any:
        """Model outputs (floats or a tensor) back on the task's scale."""
        if isinstance(values, list):
            return [v * self.std + self.mean for v in values]
        return values * self.std + self.mean

    def attach(self, model: torch.nn.Module) -> Any:
        """Make ``model``'s returned logits come out on the task's scale (inference after loading)."""
        def hook(module, args, output):
            output.logits = self.restore(output.logits)
            return output

        return model.register_forward_hook(hook)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> "TargetScale":
        return cls(float(data["mean"]), float(data["std"]))


@dataclass
class TrainResult:
    metrics: dict[str, float]
    train_loss: float
    steps: int
    train_seconds: float
    eval_seconds: float
    peak_memory_mb: float
    memory_measure: str
    history: list[dict[str, float]] = field(default_factory=list)
    target_scale: TargetScale | None = None  # regression: what the targets were standardised with
    # At a rung below the top: the primary metric a model without skill reaches on the rows scored
    # there (tasks.chance_score; successive halving does not rank trials that have not beaten it).
    no_skill: float | None = None
    # A run stopped at a rung with ``keep_state``: what resumes it (``train_and_evaluate(resume=)``).
    state: "TrainState | None" = None


@dataclass
class TrainState:
    """Everything a run stopped at a rung needs to go on as if it had never stopped: the trainable
    weights, the optimizer's moments, the schedule, the data order and the random streams.

    Why not retrain from step 0: halving of the promotion type (a trial waits at its rung until it
    ranks in the top 1/eta there) would pay every promoted trial's lower rungs twice. A PEFT run's
    state is small (the trainable weights three times over: weights, two Adam moments); the frozen
    base is rebuilt from the same seed. ``tests/test_multifidelity.py`` checks that a run stopped and
    resumed at each rung ends exactly where the uninterrupted run does.
    """

    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    step: int
    epoch: int
    perm: list[int]  # this epoch's example order
    start: int  # where in ``perm`` the next batch begins
    order_rng: torch.Tensor  # the shuffling generator, ready for the next epoch's permutation
    torch_rng: torch.Tensor  # dropout's stream
    losses: list[float]
    history: list[dict[str, float]]


def predict(model: torch.nn.Module, data: Batches, task: TaskSpec, pad_id: int, batch_size: int,
            device: torch.device, target_scale: TargetScale | None = None) -> list[Any]:
    """Class ids, or for regression floats on the task's scale (``target_scale`` undone)."""
    model.eval()
    preds: list[Any] = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.batch(list(range(start, min(start + batch_size, len(data)))), pad_id, task.is_regression)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            preds += logits.squeeze(-1).tolist() if task.is_regression else logits.argmax(-1).tolist()
    return target_scale.restore(preds) if target_scale is not None else preds


def evaluate(model: torch.nn.Module, data: Batches, task: TaskSpec, pad_id: int,
             batch_size: int, device: torch.device, target_scale: TargetScale | None = None) -> dict[str, float]:
    """Every task metric of ``model`` on ``data`` (whose labels are on the task's own scale)."""
    preds = predict(model, data, task, pad_id, batch_size, device, target_scale)
    return compute_metrics(task, preds, data.labels)


def score_split(model: torch.nn.Module, tokenizer: Any, task: TaskSpec, split: Split, budget: TrainBudget,
                device: torch.device | str = "cpu", target_scale: TargetScale | None = None) -> dict[str, float]:
    """Every task metric of a trained ``model`` on ``split`` (``budget.eval_examples`` of it), as
    ``train_and_evaluate`` scores its own eval split: for a later look at another split."""
    data = tokenize(subsample(split, budget.eval_examples, budget.seed), tokenizer, budget.max_seq_length)
    return evaluate(model, data, task, tokenizer.pad_token_id, budget.batch_size * 2, torch.device(device),
                    target_scale)


def train_and_evaluate(model: torch.nn.Module, tokenizer: Any, task: TaskSpec, train: Split, dev: Split,
                       budget: TrainBudget, device: torch.device | str = "cpu",
                       on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                       memory_limit_mb: float | None = None,
                       on_step: Callable[[int, int, float], None] | None = None,
                       rungs: Sequence[float] = (),
                       on_rung: Callable[[int, TrainResult], bool] | None = None,
                       rung_confidence: float = CHANCE_QUANTILE, keep_state: bool = False,
                       resume: TrainState | None = None) -> TrainResult:
    """Train the trainable parameters of ``model`` under ``budget``; score it on ``dev``.

    ``dev`` is whatever split scores the run: the task's dev split, or the held-out selection
    split (``autopeft.tasks.selection``). A regression task trains on standardised targets
    (``TargetScale``, returned in the result); its scores are on the task's own scale.

    ``on_epoch(epoch, metrics)``, when given, is called after a dev evaluation at each epoch end
    (full-budget training keeps its best epoch with it); otherwise dev is scored once at the end.
    Raises TrainingDiverged on a NaN/exploding loss and TrialOutOfMemory past ``memory_limit_mb``
    (peak training memory, measured as PeakMemory does) or when the device runs out.
    ``on_step(step, total, loss)``, when given, is called after each optimizer step (progress bars).
    ``rungs`` (shares of the budget, the last 1.0; ``fidelity.rung_fractions``) with ``on_rung``:
    at each rung but the last, ``rung_rows`` of the scoring split are scored and
    ``on_rung(rung, result so far)`` is called; training goes on (same weights, optimizer and
    schedule) if it returns True, else that result is returned. Each rung's result carries the
    score a model without skill reaches there (``no_skill``; ``tasks.chance_score`` at
    ``rung_confidence``). ``keep_state``: a run stopped at a rung returns its ``TrainState``
    (``TrainResult.state``); ``resume`` with such a state (and ``model`` built as the stopped run's
    was) goes on from its step instead of from the start.
    """
    try:
        return _train(model, tokenizer, task, train, dev, budget, torch.device(device), on_epoch, memory_limit_mb,
                      on_step, rungs, on_rung, rung_confidence, keep_state, resume)
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        raise TrialOutOfMemory(f"out of memory on {device}: {exc}; lower the batch size or the size") from None


def _train(model, tokenizer, task, train, dev, budget, device, on_epoch, memory_limit_mb, on_step,
           rungs=(), on_rung=None, rung_confidence=CHANCE_QUANTILE, keep_state=False, resume=None) -> TrainResult:
    model.to(device)
    pad_id = tokenizer.pad_token_id
    train_data = tokenize(subsample(train, budget.train_examples, budget.seed), tokenizer, budget.max_seq_length)
    dev_data = tokenize(subsample(dev, budget.eval_examples, budget.seed), tokenizer, budget.max_seq_length)
    # The statistics of the examples actually trained on: nothing of dev (or the holdout) leaks in.
    scale = TargetScale.fit(train_data.labels) if task.is_regression else None
    if scale is not None:
        train_data = Batches(train_data.input_ids, scale.standardise(train_data.labels))

    steps_per_epoch = math.ceil(len(train_data) / budget.batch_size)
    total = budget.total_steps(len(train_data))
    warmup = int(budget.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    dtype = autocast_dtype(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    torch.manual_seed(budget.seed)  # dropout and shuffling: same seed, same run
    order = torch.Generator().manual_seed(budget.seed)
    step, epoch, losses, history = 0, 0, [], []
    perm, first = None, 0  # a resumed run's current epoch order and where in it to go on
    if resume is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, value in resume.trainable.items():
                named[n].copy_(value)
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict(resume.scheduler)
        scaler.load_state_dict(resume.scaler)
        order.set_state(resume.order_rng)
        torch.set_rng_state(resume.torch_rng)
        step, epoch, perm, first = resume.step, resume.epoch, list(resume.perm), resume.start
        losses, history = list(resume.losses), list(resume.history)

    def state(perm: list[int], start: int) -> TrainState:
        return TrainState({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                          copy.deepcopy(opt.state_dict()), sched.state_dict(), scaler.state_dict(), step, epoch,
                          perm, start, order.get_state(), torch.get_rng_state(), list(losses), list(history))
    t0 = time.perf_counter()
    eval_seconds = 0.0
    # Rungs below the top: step -> rung index. The schedule above spans the full budget, so a
    # trial that goes on continues the very run it would have been without rungs.
    rung_at = {s: k for k, s in enumerate(rung_steps(rungs, total)[:-1])} if rungs and on_rung else {}
    with PeakMemory(device, limit_mb=memory_limit_mb) as mem:
        while step < total:
            model.train()
            if perm is None:
                perm, first = torch.randperm(len(train_data), generator=order).tolist(), 0
            for start in range(first, len(perm), budget.batch_size):
                if step >= total:
                    break
                batch = {k: v.to(device) for k, v in
                         train_data.batch(perm[start:start + budget.batch_size], pad_id, task.is_regression).items()}
                with autocast:
                    loss = model(**batch).loss
                value = loss.item()
                first = losses[0] if losses else value
                if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(1.0, first):
                    raise TrainingDiverged(
                        f"training diverged: loss {value:.4g} at step {step + 1}/{total} (first step {first:.4g}, "
                        f"learning rate {budget.learning_rate}); lower the learning rate or the size"
                    )
                scaler.scale(loss).backward()
                mem.check()  # after backward: activations and gradients are both alive
                scaler.unscale_(opt)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(value)
                step += 1
                if on_step is not None:
                    on_step(step, total, value)
                if step in rung_at:
                    k = rung_at[step]
                    te = time.perf_counter()
                    rows = dev_data.sample(rung_rows(rungs[k], len(dev_data)), budget.seed)
                    metrics = evaluate(model, rows, task, pad_id, budget.batch_size * 2, device, scale)
                    eval_seconds += time.perf_counter() - te
                    model.train()
                    tail = losses[-max(1, steps_per_epoch):]
                    partial = TrainResult(metrics, sum(tail) / len(tail), step, time.perf_counter() - t0 - eval_seconds,
                                          eval_seconds, mem.current_peak_mb(), mem.kind, history, scale,
                                          chance_score(task, rows.labels, rung_confidence))
                    if not on_rung(k, partial):
                        if keep_state:
                            partial.state = state(perm, start + budget.batch_size)
                        return partial
            perm = None
            epoch += 1
            if on_epoch is not None:
                te = time.perf_counter()
                metrics = evaluate(model, dev_data, task, pad_id, budget.batch_size * 2, device, scale)
                eval_seconds += time.perf_counter() - te
                history.append({"epoch": epoch, "step": step, **metrics})
                on_epoch(epoch, metrics)
    train_seconds = time.perf_counter() - t0 - eval_seconds

    te = time.perf_counter()
    metrics = evaluate(model, dev_data, task, pad_id, budget.batch_size * 2, device, scale)
    eval_seconds += time.perf_counter() - te
    tail = losses[-max(1, steps_per_epoch):]  # mean over the last epoch's worth of steps
    return TrainResult(metrics, sum(tail) / len(tail), step, train_seconds, eval_seconds,
                       mem.peak_mb, mem.kind, history, scale)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype of training on ``device``; None = fp32.

    GPUs: bf16 where the GPU has it (Ampere and later), else fp16 with loss scaling. CPU autocast
    slows small models, so it stays fp32.
    """
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
