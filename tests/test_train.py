"""The short-training loop: deterministic on CPU, learns, stops on divergence, measures memory."""

from __future__ import annotations

import math

import pytest
import torch

from autopeft.config import PeftConfig, TrainBudget
from autopeft.methods.seq_bn import SeqBnConfig
from autopeft.objectives import METRIC, PEAK_MEMORY_MB, TRAINABLE_PARAMS
from autopeft.trial import TrialContext, run_config
from autopeft.train import TargetScale, TrainingDiverged

CONFIG = PeftConfig((SeqBnConfig((0, 1, 2), 8),))
BUDGET = TrainBudget(train_examples=64, eval_examples=48, batch_size=16, epochs=1, learning_rate=5e-3, seed=1)


def test_trial_report_has_every_key_and_is_deterministic(tiny_bert, tiny_task):
    torch.set_num_threads(1)
    ctx = TrialContext(tiny_bert, tiny_task, BUDGET)
    a = run_config(ctx, CONFIG)
    b = run_config(ctx, CONFIG)
    for key in (METRIC, "accuracy", TRAINABLE_PARAMS, "trainable_percent", PEAK_MEMORY_MB,
                "train_seconds", "eval_seconds", "train_loss", "steps"):
        assert key in a and math.isfinite(a[key]), key
    assert a[METRIC] == a["accuracy"]
    assert a["steps"] == 4
    assert a[PEAK_MEMORY_MB] > 0
    for key in (METRIC, "train_loss", TRAINABLE_PARAMS):
        assert a[key] == b[key], f"{key} differs between same-seed runs"
    c = run_config(ctx, CONFIG, BUDGET.replace(seed=2))
    assert c["train_loss"] != a["train_loss"]


def test_absurd_learning_rate_diverges_with_a_clear_error(tiny_bert, tiny_task):
    ctx = TrialContext(tiny_bert, tiny_task, BUDGET.replace(learning_rate=1e6, epochs=3))
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        run_config(ctx, CONFIG)


def test_target_scale_round_trip():
    scale = TargetScale.fit([1.0, 3.0, 5.0])
    assert scale.mean == pytest.approx(3.0) and scale.std == pytest.approx(math.sqrt(8 / 3))
    z = scale.standardise([1.0, 3.0, 5.0])
    assert sum(z) == pytest.approx(0.0) and sum(v * v for v in z) / 3 == pytest.approx(1.0)
    assert scale.restore(z) == pytest.approx([1.0, 3.0, 5.0])
    assert scale.restore(torch.tensor(z)).tolist() == pytest.approx([1.0, 3.0, 5.0])
    assert TargetScale.from_dict(scale.to_dict()) == scale
    assert TargetScale.fit([2.0, 2.0]) == TargetScale(2.0, 1.0)  # no spread: centred only


def test_regression_trains_on_standard_scores_and_is_scored_on_the_task_scale(tiny_bert, tiny_regression_task,
                                                                               monkeypatch):
    """The loss sees z-scored targets; the metric sees predictions mapped back to SICK's 1-5 scale."""
    import autopeft.train as train_module
    from autopeft.tasks import load_split, load_task

    seen_losses, scored = [], []
    real_metrics = train_module.compute_metrics
    monkeypatch.setattr(train_module, "compute_metrics",
                        lambda task, preds, refs: scored.append((list(preds), list(refs))) or real_metrics(task, preds, refs))
    torch.set_num_threads(1)
    ctx = TrialContext(tiny_bert, tiny_regression_task, BUDGET)
    report = run_config(ctx, CONFIG)
    assert math.isfinite(report[METRIC]) and report[METRIC] == report["pearson"]

    task = load_task(tiny_regression_task)
    train = train_module.subsample(load_split(task, "train"), BUDGET.train_examples, BUDGET.seed)
    expected = TargetScale.fit(train.labels)
    assert 3.0 < expected.mean < 4.0 and 0.5 < expected.std < 1.5  # SICK relatedness, as a check on the data
    preds, refs = scored[-1]
    assert min(refs) >= 1.0 and max(refs) <= 5.0  # references untouched
    # A barely trained model predicts about the training mean: on the task's scale that is ~3.5,
    # where unmapped z-score outputs would sit around 0.
    assert abs(sum(preds) / len(preds) - expected.mean) < 1.0

    from autopeft.build import build_model
    from autopeft.train import train_and_evaluate

    built = build_model(tiny_bert, CONFIG, task.num_labels, seed=BUDGET.seed)
    result = train_and_evaluate(built.model, built.tokenizer, task, load_split(task, "train"),
                                load_split(task, "dev"), BUDGET,
                                on_step=lambda step, total, loss: seen_losses.append(loss))
    assert result.target_scale == expected  # the statistics of the rows actually trained on
    # MSE on z-scores starts near 1 (a fresh head outputs ~0); on raw 1-5 targets it would be ~13.
    assert seen_losses[0] < 4.0


def test_trial_on_holdout_trains_without_the_held_out_rows(tiny_bert, tiny_task, monkeypatch):
    """A trial that selects on a holdout trains on train minus those rows and scores on them."""
    import autopeft.train as train_module
    from autopeft.tasks import load_split, load_task, split_holdout
    from autopeft.schema import EVAL_SPLIT

    seen = []
    real = train_module.train_and_evaluate
    monkeypatch.setattr(train_module, "train_and_evaluate",
                        lambda model, tok, task, train, dev, *a, **k: seen.append((train, dev)) or real(
                            model, tok, task, train, dev, *a, **k))
    budget = BUDGET.replace(select_on="holdout", holdout_size=24, holdout_seed=3)
    report = run_config(TrialContext(tiny_bert, tiny_task, budget), CONFIG, report_dev=True)
    assert report[EVAL_SPLIT] == "holdout"
    assert round(report["accuracy"] * 24, 6).is_integer() and round(report["dev_accuracy"] * 48, 6).is_integer()
    train, scored = seen[-1]
    task = load_task(tiny_task)
    rest, held = split_holdout(load_split(task, "train"), 24, seed=3)
    assert scored == held and train == rest and len(train) == 72  # the tiny task has 96 training rows
    assert len(scored) == 24 and not set(scored.texts) & set(train.texts)
    on_dev = run_config(TrialContext(tiny_bert, tiny_task, BUDGET), CONFIG, report_dev=True)
    assert on_dev[EVAL_SPLIT] == "dev" and "dev_accuracy" not in on_dev  # its metrics are dev's already
    assert seen[-1][1] == load_split(task, "dev")


@pytest.mark.slow
def test_embedded_model_learns_sst2(data_dir):
    """The default budget separates a good config from chance on real data (about a minute)."""
    from autopeft.models import DEFAULT_MODEL

    torch.set_num_threads(2)
    ctx = TrialContext(DEFAULT_MODEL, "sst2", TrainBudget(eval_examples=400), str(data_dir))
    report = run_config(ctx, PeftConfig((SeqBnConfig(tuple(range(6)), 24),)))
    assert report[METRIC] >= 0.7
