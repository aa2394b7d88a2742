"""Inference latency of a trained trial: what a deployed model pays per example.

After training, LoRA / (IA)3 modules are merged into the base weights where the backend can
(``build.merge_for_inference``), so a merged LoRA costs what the base model costs, while serial
adapters, prefixes and prompts keep their extra work. The model then runs fixed-size batches of
full-length inputs under ``torch.inference_mode``; the first ``WARMUP`` batches (allocator and
kernel warm-up) are dropped and the median of the rest, divided by the batch size, is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

# Stated with every figure (reported beside it): 8 × max_seq_length tokens keeps one measurement
# under ~2 s for MiniLM on one CPU core while several timed batches still give a stable median.
BATCH_SIZE = 8
WARMUP = 2
REPEATS = 7


@dataclass(frozen=True)
class Latency:
    ms_per_example: float  # median batch time / batch size
    batch_size: int
    seq_length: int
    merged_layers: int  # LoRA/(IA)3 layers folded into the base weights before timing

    def to_report(self) -> dict[str, float]:
        return {"latency_ms": self.ms_per_example, "latency_batch_size": self.batch_size,
                "latency_seq_length": self.seq_length, "latency_merged_layers": self.merged_layers}


def time_forward(model: torch.nn.Module, seq_length: int, device: str | torch.device = "cpu",
                 batch_size: int = BATCH_SIZE, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds per example of ``model``'s forward pass on full-length batches."""
    device = torch.device(device)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1000
    # Fixed token ids (not padding): every position is real work, as in a full-length request.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_length), generator=gen).to(device)
    mask = torch.ones_like(ids)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch_size


def measure_latency(model: torch.nn.Module, seq_length: int, device: str | torch.device = "cpu",
                    merge: bool = True) -> Latency:
    """Latency of ``model`` as deployed: merged first (this changes ``model`` in place) unless ``merge`` is False."""
    from autopeft.build import merge_for_inference

    merged = merge_for_inference(model) if merge else 0
    return Latency(time_forward(model, seq_length, device), BATCH_SIZE, seq_length, merged)
