"""DeepSpeed behind the trainers' engine seam: the same ``step`` / ``state_bytes`` / ``save_pretrained`` /
``save_state`` / ``load_state``.

Imported only when a suite sets ``runtime.deepspeed.enabled``. The ZeRO JSON comes from the suite's runtime
block (``remax_bench.core.deepspeed_config``) and is recorded in the stage manifest. The algorithms call
``engine.module`` for forward and generate: DeepSpeed's engine passes unknown attributes (``generate``,
``config``, ``gradient_checkpointing_enable``) through to the wrapped model, and under ZeRO-3 its hooks
gather the partitioned parameters for every forward.

On a machine without GPUs this runs on DeepSpeed's CPU accelerator in one process (gloo), which is how the
test suite exercises it; multi-GPU runs are started by the ``deepspeed`` launcher (see the runner).
"""

from __future__ import annotations

import torch

from remax_bench.core.metrics import tensor_bytes
from remax_bench.core.stage import ENGINE_CONFIGS, TRAINED_ENGINES, StageError
from trainers.optimizer import adamw

DEEPSPEED_TAG = "zero"  # the folder DeepSpeed writes a checkpoint's files into


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, learning_rate: float, suite, batch_size: int):
        import deepspeed

        from remax_bench.core.deepspeed_config import deepspeed_config, init_distributed_single_process

        # Under the deepspeed launcher the env it set is kept; collectives time out after the suite's limit.
        init_distributed_single_process(suite.runtime.collective_timeout_s)
        self.config = deepspeed_config(suite.runtime, suite.shared, batch_size, stage="train")
        ENGINE_CONFIGS.append(self.config)
        self.zero_stage = self.config["zero_optimization"]["stage"]
        params = [p for p in model.parameters() if p.requires_grad]
        # A torch optimizer keeps the CPU path free of DeepSpeed's compiled Adam ops; DeepSpeed wraps it
        # in its ZeRO optimizer all the same (states partitioned, optionally offloaded).
        optimizer = adamw(params, learning_rate, suite.shared.weight_decay)
        model.train()  # from_pretrained's eval mode would leave gradient checkpointing off
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        self.module = self.engine
        self.steps = 0  # step calls so far (a vLLM rollout engine syncs its weights when this moves)
        TRAINED_ENGINES.append(self)

    def step(self, loss: torch.Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        self.steps += 1
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def state_bytes(self) -> dict[str, int]:
        """Bytes of this rank's model states: its share of parameters, gradients and optimizer states."""
        module = self.engine.module
        params = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in module.parameters()]
        trainable = [p for p in module.parameters() if p.requires_grad]
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        optimizer_bytes = sum(tensor_bytes(state.values()) for state in inner.state.values())
        # Mixed precision keeps fp32 master weights beside the 16-bit ones; each ZeRO stage names them
        # differently (stages 1-2, stage 0 with bf16, stage 3).
        for attr in ("single_partition_of_fp32_groups", "fp32_groups", "fp32_partitioned_groups_flat"):
            groups = getattr(self.optimizer, attr, None) or []
            optimizer_bytes += sum(tensor_bytes(g if isinstance(g, (list, tuple)) else [g]) for g in groups)
        grad_divisor = torch.distributed.get_world_size() if self.zero_stage >= 2 else 1
        grad_bytes = sum(p.numel() * p.element_size() for p in trainable) // grad_divisor
        return {"params": tensor_bytes(params), "grads": grad_bytes, "optimizer": optimizer_bytes}

    def weights_digest(self) -> str:
        """SHA-256 of this rank's full weights, gathered one parameter at a time under ZeRO-3 (memory stays
        at one parameter): equal digests on all ranks show data parallelism kept the replicas identical."""
        import hashlib

        import deepspeed

        digest = hashlib.sha256()
        for name, param in self.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], enabled=self.zero_stage == 3):
                digest.update(name.encode())
                digest.update(param.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def save_pretrained(self, out_dir, tokenizer=None) -> None:
        module = self.engine.module
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            if torch.distributed.get_rank() == 0:
                module.save_pretrained(out_dir, state_dict=state)
        elif torch.distributed.get_rank() == 0:
            module.save_pretrained(out_dir)
        if tokenizer is not None and torch.distributed.get_rank() == 0:
            tokenizer.save_pretrained(out_dir)


    # The training state of a mid-stage checkpoint, through DeepSpeed's own checkpointing: every rank writes its
    # ZeRO partition of the parameters and optimizer states (and the scheduler's, where there is one).
    def save_state(self, directory) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, client_state={"steps": self.steps},
                                    save_latest=False)

    def load_state(self, directory) -> None:
        path, client = self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise StageError(f"DeepSpeed found no checkpoint in {directory}/{DEEPSPEED_TAG}")
        self.steps = client["steps"]


def frozen_engine(model: torch.nn.Module, suite, batch_size: int):
    """A frozen model as a DeepSpeed engine without optimizer (DeepSpeed-Chat's reference and reward models):
    the inference config partitions its parameters over the ranks under ZeRO-3 and, with zero3_offload, keeps
    the partitions in CPU memory; every forward gathers them layer by layer."""
    import deepspeed

    from remax_bench.core.deepspeed_config import deepspeed_config, init_distributed_single_process

    init_distributed_single_process(suite.runtime.collective_timeout_s)
    config = deepspeed_config(suite.runtime, suite.shared, batch_size, stage="inference")
    ENGINE_CONFIGS.append(config)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
