"""What the trainers and the eval stage share about vLLM: sizing a colocated engine's KV cache, and ending an
engine. Imports vLLM only when called."""

from __future__ import annotations

import gc

ENGINE_KV_SLACK = 1.25  # a vLLM rollout engine's KV cache: one batch's blocks, and a quarter more (the trainers' sizing)


def shut_down_vllm() -> None:
    """Free what a dropped vLLM engine held (its parallel state, cached GPU memory); the eval generators and the
    rollout engine (trainers/vllm_rollout.py) both end their engines here."""
    gc.collect()
    try:
        import torch
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort: the next engine or the judge server needs the memory
        pass
