"""The optimizer every trained model uses, under either engine (trainers/engine.py, trainers/deepspeed_engine.py)."""

from __future__ import annotations

import torch


def adamw(params: list[torch.Tensor], learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the device has one (CPU and CUDA), as DeepSpeed's FusedAdam on
    GPUs: one pass per tensor and no temporaries, where the default multi-tensor step holds a copy of every
    weight tensor at once (on a 27M-parameter model: 110 MB more at the step, and a 5x slower step on 2 cores)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused or None)
