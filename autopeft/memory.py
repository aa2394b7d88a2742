"""Peak training memory, measured the same way for every configuration.

CPU: peak resident set size above the RSS at entry (the loaded model), from a sampling thread
combined with ``ru_maxrss`` (exact when the peak is a new process high). It includes allocator
slack, so compare trials that each run in a fresh process (Ray gives every trial its own).
GPU: ``torch.cuda.max_memory_allocated`` after resetting the peak: weights, gradients, optimizer
state and activations as the caching allocator saw them.
"""

from __future__ import annotations

import resource
import sys
import threading

import psutil
import torch

from autopeft.errors import AutopeftError

_MB = 1024 * 1024


class TrialOutOfMemory(AutopeftError):
    """A trial needed more memory than its limit (or than the device had)."""


def _maxrss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Context manager; ``peak_mb`` holds the result after exit."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005,
                 limit_mb: float | None = None) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.limit_mb = limit_mb
        self.peak_mb = float("nan")
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_above_model"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._maxrss_before = _maxrss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def current_peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / _MB
        return (max(self._peak, self._proc.memory_info().rss) - self._base) / _MB

    def check(self) -> None:
        """Raise TrialOutOfMemory once the peak so far passes ``limit_mb``."""
        if self.limit_mb is not None and (peak := self.current_peak_mb()) > self.limit_mb:
            raise TrialOutOfMemory(
                f"out of memory: peak training memory {peak:.0f} MB passed the per-trial limit of "
                f"{self.limit_mb:.0f} MB; raise --trial-memory-limit-mb, or lower the batch size or the size"
            )

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / _MB
            return
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, self._proc.memory_info().rss)
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss_before:  # a new process high was reached inside: exact
            peak = max(peak, maxrss)
        self.peak_mb = (peak - self._base) / _MB
