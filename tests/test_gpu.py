"""The GPU path of a trial: device choice, mixed precision, CUDA peak memory, {"gpu": n} resources.

Runs only where CUDA is available; skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch

from autopeft.config import PeftConfig, TrainBudget
from autopeft.methods.seq_bn import SeqBnConfig
from autopeft.objectives import PEAK_MEMORY_MB
from autopeft.trial import TrialContext, pick_device, run_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BUDGET = TrainBudget(train_examples=64, eval_examples=32, batch_size=16, max_seq_length=32)
CONFIG = PeftConfig((SeqBnConfig((0, 1, 2), 8),))


def test_fp16_loss_scaling_path_trains(tiny_bert, tiny_task, monkeypatch):
    """GPUs without bf16 train in fp16 with a GradScaler; CPU autocast runs the same code here."""
    import autopeft.train as train

    monkeypatch.setattr(train, "autocast_dtype", lambda device: torch.float16)
    report = run_config(TrialContext(tiny_bert, tiny_task, BUDGET), CONFIG, device="cpu")
    assert report["steps"] == 4 and report["train_loss"] == report["train_loss"]


@pytest.mark.gpu
@needs_cuda
def test_trial_trains_on_cuda_with_autocast_and_reports_cuda_memory(tiny_bert, tiny_task):
    from autopeft.train import autocast_dtype

    assert pick_device(1) == "cuda" and pick_device(0) == "cpu"
    assert autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
    report = run_config(TrialContext(tiny_bert, tiny_task, BUDGET), CONFIG, device="cuda")
    assert report["device"] == "cuda"
    assert report["memory_measure"] == "cuda_max_allocated"
    assert 0 < report[PEAK_MEMORY_MB] < torch.cuda.get_device_properties(0).total_memory / 2**20
    assert report["steps"] == 4 and report["train_loss"] == report["train_loss"]  # finite, not NaN


@pytest.mark.gpu
@pytest.mark.integration
@needs_cuda
def test_search_trials_take_gpu_resources(tiny_bert, tiny_task, tmp_path):
    from autopeft.search import SearchSettings, run_search

    settings = SearchSettings(name="gpu-search", model=tiny_bert, task=tiny_task, space="lora", num_samples=2, scheduler="fifo",
                              max_concurrent_trials=1, gpus_per_trial=1, budget=BUDGET,
                              workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = run_search(settings, show_progress=False)
    assert [r["status"] for r in result.trials] == ["COMPLETE", "COMPLETE"]
    assert {r["device"] for r in result.trials} == {"cuda"}
    assert {r["memory_measure"] for r in result.trials} == {"cuda_max_allocated"}
