"""The suite's ``runtime`` block as DeepSpeed JSON, the ``deepspeed`` launcher command, and one-process setup.

Training config (``stage="train"``), after DeepSpeed-Chat's ``get_train_ds_config``:

- ``zero_optimization.stage`` 0-3: 1 partitions the optimizer states over the data-parallel ranks, 2 also the
  gradients, 3 also the parameters (ZeRO, Rajbhandari et al. 2020).
- ``offload_optimizer`` (stage >= 1) keeps optimizer states and the fp32 master weights in CPU memory and runs the
  update there; ``offload_param`` (stage 3 only) keeps the parameter partitions in CPU memory too.
- ``bf16.enabled`` from ``shared.precision``; fp16 (loss scaling) is never used.
- ``train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size``, which is
  the identity DeepSpeed checks at ``initialize``.

Inference config (``stage="inference"``) for the frozen reference and reward models, after DeepSpeed-Chat's
``get_eval_ds_config``: no optimizer, so stages 1 and 2 would change nothing; the frozen models are ZeRO-3
sharded (parameters partitioned, gathered layer by layer in the forward) when the trained model uses stage 3,
and replicated (stage 0) otherwise.

Nothing here imports deepspeed at module level: the CPU path without DeepSpeed never loads it.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

DEFAULT_MASTER_PORT = 29500
# "Never" for a run of this size: progress is logged by the trainers, not by DeepSpeed.
STEPS_PER_PRINT = 10**9
BUCKET_SIZE = int(5e8)  # DeepSpeed's default reduce / all-gather bucket (elements)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a pydantic model, a plain object or a dict (the resolved suite is a dict)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _offload_device(value: Any) -> str:
    """``offload_*`` may be a bool (``true`` means CPU) or a device name (``cpu``, ``nvme``, ``none``)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "cpu"
    text = str(value).lower()
    if text in ("", "none", "false", "off"):
        return "none"
    if text not in ("cpu", "nvme"):
        raise ValueError(f"offload device must be true/false, 'cpu', 'nvme' or 'none'; got {value!r}")
    return text


def _world_size(runtime: Any) -> int:
    """Data-parallel ranks: the live process group, else the launcher's env, else the suite's GPU count."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is always installed
        pass
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return max(1, int(_get(runtime, "num_gpus", 1) or 1)) * max(1, int(_get(runtime, "num_nodes", 1) or 1))


def zero_settings(runtime: Any) -> dict[str, Any]:
    """The ``runtime.deepspeed`` choices that shape ZeRO, normalised and checked."""
    ds = _get(runtime, "deepspeed")
    stage = int(_get(ds, "zero_stage", 0) or 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"runtime.deepspeed.zero_stage must be 0, 1, 2 or 3; got {stage}")
    offload_optimizer = _offload_device(_get(ds, "offload_optimizer", False))
    offload_params = _offload_device(_get(ds, "offload_params", False))
    if offload_optimizer != "none" and stage == 0:
        raise ValueError("runtime.deepspeed.offload_optimizer needs zero_stage >= 1 (ZeRO-Offload moves the "
                         "partitioned optimizer states)")
    if offload_params != "none" and stage != 3:
        raise ValueError("runtime.deepspeed.offload_params needs zero_stage 3 (only ZeRO-3 partitions parameters)")
    accumulation = int(_get(ds, "gradient_accumulation_steps", 1) or 1)
    if accumulation < 1:
        raise ValueError(f"runtime.deepspeed.gradient_accumulation_steps must be >= 1; got {accumulation}")
    return {"stage": stage, "offload_optimizer": offload_optimizer, "offload_params": offload_params,
            "gradient_accumulation_steps": accumulation}


def frozen_placement(runtime: Any) -> str:
    """Where the frozen models live: replicated, zero3 or zero3_offload (``runtime.deepspeed.frozen_models``;
    "auto" follows the trained models: ZeRO-3 sharded under stage 3, offloaded with offload_params)."""
    ds = _get(runtime, "deepspeed")
    chosen = _get(ds, "frozen_models", "auto") or "auto"
    if chosen not in ("auto", "replicated", "zero3", "zero3_offload"):
        raise ValueError(f"runtime.deepspeed.frozen_models must be auto, replicated, zero3 or zero3_offload; "
                         f"got {chosen!r}")
    if chosen != "auto":
        return chosen
    zero = zero_settings(runtime)
    if zero["stage"] == 3:
        return "zero3_offload" if zero["offload_params"] != "none" else "zero3"
    return "replicated"


def deepspeed_config(runtime: Any, shared: Any, train_batch_size_per_gpu: int, stage: str = "train",
                     world_size: int | None = None) -> dict[str, Any]:
    """DeepSpeed JSON for one engine: ``stage="train"`` for a trained model, ``"inference"`` for a frozen one.

    ``train_batch_size_per_gpu`` is the micro batch one rank feeds to one forward/backward.
    ``world_size`` defaults to the live process group (or ``WORLD_SIZE``, or the suite's GPU count).
    """
    if stage not in ("train", "inference"):
        raise ValueError(f"stage must be 'train' or 'inference'; got {stage!r}")
    micro = int(train_batch_size_per_gpu)
    if micro < 1:
        raise ValueError(f"train_batch_size_per_gpu must be >= 1; got {train_batch_size_per_gpu}")
    zero = zero_settings(runtime)
    world = int(world_size) if world_size is not None else _world_size(runtime)
    accumulation = zero["gradient_accumulation_steps"] if stage == "train" else 1
    bf16 = _get(shared, "precision", "fp32") == "bf16"
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world,
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
    }
    if stage == "inference":
        # A frozen model has no gradients or optimizer states: only ZeRO-3 (sharded parameters) saves memory.
        placement = frozen_placement(runtime)
        frozen_stage = 3 if placement.startswith("zero3") else 0
        zero_block: dict[str, Any] = {"stage": frozen_stage}
        if frozen_stage == 3:
            zero_block["stage3_param_persistence_threshold"] = int(1e4)
            offload = "cpu" if placement == "zero3_offload" else "none"
            zero_block["offload_param"] = {"device": offload, "pin_memory": True}
        config["zero_optimization"] = zero_block
        return config

    max_grad_norm = _get(shared, "max_grad_norm", 1.0)
    config["gradient_clipping"] = float(max_grad_norm) if max_grad_norm else 0.0  # 0 turns clipping off
    zero_block = {"stage": zero["stage"]}
    if zero["stage"] >= 1:
        zero_block.update({
            "offload_optimizer": {"device": zero["offload_optimizer"], "pin_memory": True},
            "overlap_comm": True,  # reduce gradients while the backward goes on
            "contiguous_gradients": True,  # copy reduced gradients into one buffer: less fragmentation
            "reduce_scatter": True,
            "reduce_bucket_size": BUCKET_SIZE,
            "allgather_bucket_size": BUCKET_SIZE,
        })
    if zero["stage"] == 3:
        zero_block.update({
            "offload_param": {"device": zero["offload_params"], "pin_memory": True},
            "stage3_param_persistence_threshold": int(1e5),  # small params (norms) stay whole on every rank
            "stage3_max_live_parameters": int(1e8),
            "stage3_prefetch_bucket_size": int(1e8),
            # save_pretrained gathers the shards into an ordinary 16-bit HF checkpoint.
            "stage3_gather_16bit_weights_on_model_save": True,
        })
        zero_block.pop("allgather_bucket_size")  # a ZeRO-1/2 knob; stage 3 prefetches by the keys above
    config["zero_optimization"] = zero_block
    config["zero_allow_untested_optimizer"] = True
    if zero["offload_optimizer"] != "none":
        # The trainers hand DeepSpeed a torch AdamW (no compiled ops needed); under ZeRO-Offload it steps the
        # CPU partitions. DeepSpeed refuses that unless told: its own DeepSpeedCPUAdam is faster but must be
        # compiled on first use.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def launch_command(module: str, stage_config_path: str, out_dir: str, runtime: Any, gpus: list[int] | None = None,
                   master_port: int | None = None) -> list[str]:
    """The command that starts one stage: the ``deepspeed`` launcher, or plain python for one CPU process.

    ``deepspeed --num_gpus N [--num_nodes M --hostfile H] --master_port P --module trainers.<stage> --config C
    --out O``. The launcher starts one process per GPU and sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* for each.
    ``gpus``: this stage's share of the machine's GPUs (``--include localhost:i,j`` in place of ``--num_gpus``,
    which would take the first N whatever else runs); ``master_port``: a port the caller holds for it.
    """
    num_gpus = int(_get(runtime, "num_gpus", 0) or 0)
    num_nodes = int(_get(runtime, "num_nodes", 1) or 1)
    device = str(_get(runtime, "device", "auto") or "auto")
    stage_args = ["--config", str(stage_config_path), "--out", str(out_dir)]
    if (num_gpus < 1 or (device == "cpu" and num_gpus == 1)) and num_nodes <= 1:
        return [sys.executable, "-m", module, *stage_args]
    # On CPU, --num_gpus N starts N processes all the same (DeepSpeed's CPU accelerator, gloo): the path the
    # multi-rank tests run.
    if num_gpus < 1:
        raise ValueError("runtime.num_nodes > 1 needs runtime.num_gpus >= 1 (GPUs per node)")
    if gpus is not None:
        if num_nodes > 1 or len(gpus) != num_gpus:
            raise ValueError(f"a share of this machine's GPUs is for one node and runtime.num_gpus={num_gpus} of them "
                             f"(got {len(gpus)} GPUs, num_nodes={num_nodes})")
        command = ["deepspeed", "--include", "localhost:" + ",".join(str(g) for g in gpus)]
    else:
        command = ["deepspeed", "--num_gpus", str(num_gpus)]
    hostfile = _get(runtime, "hostfile")
    if num_nodes > 1:
        if not hostfile:
            raise ValueError("runtime.num_nodes > 1 needs runtime.hostfile (lines 'host slots=N')")
        command += ["--num_nodes", str(num_nodes), "--hostfile", str(hostfile)]
        master_addr = _get(runtime, "master_addr")
        if master_addr:
            command += ["--master_addr", str(master_addr)]
    port = master_port or _get(runtime, "master_port") or DEFAULT_MASTER_PORT
    command += ["--master_port", str(int(port)), "--module", module, *stage_args]
    return command


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed_single_process(timeout_s: float | None = None) -> str:
    """Start a one-rank process group when no launcher set one up; returns the backend.

    Under the ``deepspeed`` launcher the env variables are already set and are kept. gloo on CPU (DeepSpeed's
    CPU accelerator), nccl on CUDA.
    """
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if dist.is_available() and dist.is_initialized():
        return dist.get_backend()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    import deepspeed

    if backend == "gloo":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op on first use (about 20 s and a C++
        # toolchain); with one rank there is nothing to reduce, and CPU ranks (the tests' multi-rank runs) are
        # served by gloo alone. Edits to this dict are what deepspeed.ops documents as persistent.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if timeout_s is None:
        deepspeed.init_distributed(dist_backend=backend)
    else:
        from datetime import timedelta

        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
    return backend
