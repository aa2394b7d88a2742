"""The short-training loop: deterministic on CPU, learns, stops on divergence, measures memory."""

from __future__ import annotations

import math

import pytest
import torch

from autopeft.config import PeftConfig, TrainBudget
from autopeft.methods.seq_bn import SeqBnConfig
from autopeft.objectives import METRIC, PEAK_MEMORY_MB, TRAINABLE_PARAMS
from autopeft.trial import TrialContext, run_config
from autopeft.train import TrainingDiverged

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


@pytest.mark.slow
def test_embedded_model_learns_sst2(data_dir):
    """The default budget separates a good config from chance on real data (about a minute)."""
    from autopeft.models import DEFAULT_MODEL

    torch.set_num_threads(2)
    ctx = TrialContext(DEFAULT_MODEL, "sst2", TrainBudget(eval_examples=400), str(data_dir))
    report = run_config(ctx, PeftConfig((SeqBnConfig(tuple(range(6)), 24),)))
    assert report[METRIC] >= 0.7
