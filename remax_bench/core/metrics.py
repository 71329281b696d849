"""What a stage measures: peak memory, the bytes of each model's states, and time per phase."""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import psutil
import torch


def _maxrss_bytes() -> int:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryTracker:
    """Peak memory of one stage.

    On CUDA: ``torch.cuda.max_memory_allocated`` since ``start`` (exact, allocator-level).
    On CPU: the process's peak resident set size above the baseline taken at ``start`` (after imports),
    which counts model states, activations, the generation cache and allocator slack alike.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.baseline = 0

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "rss_above_baseline"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = _maxrss_bytes()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, _maxrss_bytes() - self.baseline)

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return int(psutil.Process().memory_info().rss)

    def details(self) -> dict[str, int]:
        if self.device.type == "cuda":
            return {"cuda_max_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device))}
        return {"rss_baseline_bytes": self.baseline, "rss_peak_bytes": _maxrss_bytes()}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def model_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Exact bytes of one model's states: parameters, gradients and optimizer states.

    Gradients are counted for every trainable parameter (their buffers exist from the first backward on,
    whatever their state at the moment of the call); a frozen model has none.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad] if optimizer is not None else []
    optimizer_bytes = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optimizer_bytes += tensor_bytes(state.values())
    return {
        "params": tensor_bytes(params),
        "grads": tensor_bytes(trainable),
        "optimizer": optimizer_bytes,
    }


class PhaseTimer:
    """Wall time per phase (generate / score / train), accumulated; CUDA work is synchronised first."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(name):  # the phase's mark in a profile (core/profiling.py)
                yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """Totals since the last pop, and reset."""
        out = dict(self.totals)
        self.totals.clear()
        return out
