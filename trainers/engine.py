"""The optimizer seam: the algorithms call ``engine.step(loss)`` and never touch an optimizer directly.

``TorchEngine`` is plain AdamW with gradient clipping. ``DeepSpeedEngine`` wraps ``deepspeed.initialize``
(ZeRO stages 0-3, offload, bf16, gradient accumulation) behind the same calls, so switching a suite
to DeepSpeed changes no algorithm code. Both save and load their whole training state (``save_state``,
``load_state``) for the stage's checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from remax_bench.core.metrics import model_state_bytes, tensor_bytes
from trainers.optimizer import adamw

ENGINE_STATE = "engine.pt"  # a TorchEngine's checkpoint file: model, optimizer and step count


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off, as RLHF trainers do for the policy and critic (TRL, the ReMax authors' scripts): the
    log-probs of the rollout, of the reference and of the training forward must be those of one function.
    Llama-family attention reads its own ``attention_dropout`` rather than an nn.Dropout module."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


class TorchEngine:
    def __init__(self, model: torch.nn.Module, learning_rate: float, weight_decay: float = 0.0,
                 max_grad_norm: float | None = 1.0):
        # from_pretrained hands back a model in eval mode, and gradient checkpointing only acts in train mode.
        self.module = model.train()
        self.max_grad_norm = max_grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(params, learning_rate, weight_decay)
        self.steps = 0  # optimizer steps taken (a vLLM rollout engine syncs its weights when this moves)

    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip, update. Returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.steps += 1
        return float(norm)

    def state_bytes(self) -> dict[str, int]:
        return model_state_bytes(self.module, self.optimizer)

    def save_pretrained(self, out_dir, tokenizer=None) -> None:
        self.module.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)

    # The training state of a mid-stage checkpoint (remax_bench/core/checkpoint.py): the weights and AdamW's
    # moments and step counts as they are, so the resumed updates are the uninterrupted ones bit for bit.
    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.steps},
                   directory / ENGINE_STATE)

    def load_state(self, directory: Path) -> None:
        state = torch.load(directory / ENGINE_STATE, map_location=next(self.module.parameters()).device,
                           weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]


def build_engine(model: torch.nn.Module, learning_rate: float, suite, batch_size: int):
    """The engine the suite's runtime block asks for, with shared.gradient_checkpointing on the model it trains
    (every trained model comes through here; the engines put it in train mode, where checkpointing acts)."""
    shared = suite.shared
    if shared.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if suite.runtime.deepspeed.enabled:
        from trainers.deepspeed_engine import DeepSpeedEngine  # imported only on the DeepSpeed path

        return DeepSpeedEngine(model, learning_rate, suite, batch_size)
    return TorchEngine(model, learning_rate, shared.weight_decay, shared.max_grad_norm)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A scoring-only model (reference, reward): eval mode, no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


def place_frozen(model: torch.nn.Module, suite, batch_size: int):
    """A frozen model placed as ``runtime.deepspeed.frozen_models`` says: replicated (the model itself), or a
    DeepSpeed inference engine with its parameters ZeRO-3 partitioned over the ranks (optionally offloaded)."""
    model = freeze(model)
    ds = suite.runtime.deepspeed
    if not ds.enabled or ds.frozen_placement == "replicated":
        return model
    from trainers.deepspeed_engine import frozen_engine  # imported only on the DeepSpeed path

    return frozen_engine(model, suite, batch_size)


def frozen_state_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of a frozen model's parameters on this rank: under ZeRO-3 its own partitions (``ds_tensor``)."""
    states = model_state_bytes(model)
    states["params"] = tensor_bytes([getattr(p, "ds_tensor", p) for p in model.parameters()])
    return states
