"""Rollouts through vLLM (shared.rollout_backend: vllm): an engine colocated with the trainer, in its process.

The engine starts from the SFT checkpoint and, after every optimizer step, takes the trained policy's weights
in memory: ``reload_weights`` with an iterator over the policy's tensors, copied into vLLM's own (fused)
layout by its weight loaders, with no file and no process boundary in between. The engine runs in the
trainer's process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the tensors pass by reference; its memory (a
copy of the weights and a KV cache sized for one rollout batch) is then part of the stage's peak memory.

Semantics are the hf path's (trainers.sequences.generate): the same chat-formatted prompt tokens (one BOS
where the tokenizer adds one), the same sampling settings, at most shared.max_response_length tokens,
stopping at the tokenizer's eos and nothing else; greedy rows decode with temperature 0. The answers come
back in the shared layout (SequenceBatch), so every log-prob the loss uses is recomputed by the trainer;
vLLM's own log-probs are never used.

What needs CUDA: with the CUDA build the same code runs on a GPU (tensor parallel 1: one engine per rank,
each generating its rank's share). There the engine sleeps between rollouts (vLLM's sleep mode, CUDA only:
weights offloaded to CPU memory, KV cache released), so training, the peak phase, does not carry it; it wakes,
takes the new weights and generates. That branch is tested at its seam (a recording stand-in for the engine);
on the CPU build there is no sleep mode and the engine's memory stays allocated. Under ZeRO-3 the weights are
gathered module by module for the sync (``_full_weights``), proven on the CPU with one rank
(tests/test_vllm_rollout.py); several ranks with an engine each need vLLM's external-launcher mode and are
refused by the preflight (remax_bench/preflight.py).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Iterator

import torch

from remax_bench.core.vllm_support import ENGINE_KV_SLACK, build_engine_kwargs, scheduler_record, vllm_is_cpu_build
from trainers.sequences import SequenceBatch, answers_batch, encode_prompts

BLOCK_TOKENS = 16  # vLLM's KV cache block: a sequence's cache is rounded up to whole blocks


def kv_cache_bytes(model_config, rows: int, max_tokens: int, dtype_bytes: int) -> int:
    """KV cache for ``rows`` sequences of at most ``max_tokens`` tokens each: keys and values of every
    layer, rounded up to whole blocks, with ENGINE_KV_SLACK more for the allocator's alignment."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    per_token = 2 * model_config.num_hidden_layers * heads * head_dim * dtype_bytes
    tokens = rows * math.ceil(max_tokens / BLOCK_TOKENS) * BLOCK_TOKENS
    return int(tokens * per_token * ENGINE_KV_SLACK)


def sampling_kwargs(shared, greedy: bool, seed: int, eos_token_id: int) -> dict:
    """``vllm.SamplingParams`` of one row, the hf path's settings: the suite's temperature, top-p and top-k
    (top-k 0: off), at most max_response_length tokens, stop at the tokenizer's eos only."""
    generation = shared.generation
    kwargs = {
        "n": 1,
        "max_tokens": shared.max_response_length,
        "ignore_eos": True,  # the model config's eos list may hold more ids than the tokenizer's one;
        "stop_token_ids": [eos_token_id],  # hf's generate stops at eos_token_id only, so this does too
        "detokenize": False,  # the trainer decodes what it needs
        "seed": seed,
    }
    if greedy:
        kwargs.update(temperature=0.0)
    else:
        kwargs.update(temperature=generation.temperature, top_p=generation.top_p,
                      top_k=generation.top_k if generation.top_k > 0 else -1)
    return kwargs


def to_sequence_batch(prompts: dict[str, torch.Tensor], answers: list[list[int]], eos_token_id: int,
                      pad_token_id: int) -> SequenceBatch:
    """Each row's generated tokens (up to and including eos, as vLLM returns them), right-padded to the longest,
    then laid out as ``sequences.generate`` lays its answers out. A row shorter than the longest ended at its
    eos (the only stop), so the pad after it is masked like anything after an eos."""
    width = max(1, max(len(a) for a in answers))
    ids = torch.full((len(answers), width), pad_token_id, dtype=torch.long)
    for row, answer in enumerate(answers):
        ids[row, : len(answer)] = torch.tensor(answer, dtype=torch.long)
    return answers_batch(prompts, ids, eos_token_id, pad_token_id)


class VLLMRollouts:
    """A vLLM engine that generates the rollouts of one stage and follows the trained policy's weights."""

    def __init__(self, checkpoint: str, tokenizer, shared, seed: int, rows: int, device: torch.device):
        from transformers import AutoConfig
        from vllm import LLM  # only on this path

        self.tokenizer, self.shared, self.seed = tokenizer, shared, seed
        # fp32 weights generate in fp32 (greedy answers identical to the hf path's); a bf16 suite on a GPU
        # generates in bf16, as verl and OpenRLHF do; the trainer recomputes every log-prob either way.
        bf16 = shared.precision == "bf16" and device.type == "cuda"
        max_tokens = shared.max_prompt_length + shared.max_response_length
        self.kv_cache_bytes = kv_cache_bytes(AutoConfig.from_pretrained(checkpoint), rows, max_tokens, 2 if bf16 else 4)
        self.engine_kwargs = {
            "model": str(checkpoint),
            "tokenizer": str(checkpoint),
            "dtype": "bfloat16" if bf16 else "float32",
            "seed": seed,
            "tensor_parallel_size": 1,
            "max_model_len": max_tokens,
            "max_num_seqs": rows,  # one rollout batch is one scheduling round
            "kv_cache_memory_bytes": self.kv_cache_bytes,  # sized for the batch, not a share of the device
            "enable_prefix_caching": False,  # cached prefixes would outlive a weight update
            "enforce_eager": True,  # no graph capture or compilation: weights change every step
            **build_engine_kwargs(vllm_is_cpu_build()),  # seeded rows at any prompt length on the CPU build
        }
        # Sleep between rollouts where vLLM can (CUDA's allocator): the memory goes back while the trainer trains.
        self.sleeps = device.type == "cuda"
        if self.sleeps:
            self.engine_kwargs["enable_sleep_mode"] = True
        start = time.perf_counter()
        # The engine core in this process (not a worker process): the policy's tensors pass by reference.
        before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            self.llm = LLM(**self.engine_kwargs)
        finally:
            if before is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before
        self.start_s = time.perf_counter() - start
        self.scheduler = scheduler_record(self.llm)
        self.weight_bytes = sum(self.llm.apply_model(_parameter_bytes))
        self.asleep = False
        self.sleep()
        self.sync_s: list[float] = []
        self.calls = 0

    def generate(self, instructions: list[str], greedy: torch.Tensor | bool = False) -> SequenceBatch:
        """Answers to ``instructions`` (``greedy``: all rows, or a per-row mask), in the shared layout."""
        from vllm import SamplingParams

        shared, tokenizer = self.shared, self.tokenizer
        prompts = encode_prompts(tokenizer, instructions, shared.max_prompt_length)
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"])]
        flags = [bool(greedy)] * len(rows) if isinstance(greedy, bool) else [bool(g) for g in greedy.tolist()]
        # Per-row seeds from the stage seed and this call's number: a re-run samples the same answers.
        self.calls += 1
        params = [SamplingParams(**sampling_kwargs(shared, g, self.seed * 1_000_003 + self.calls * 4099 + i,
                                                   tokenizer.eos_token_id)) for i, g in enumerate(flags)]
        self.wake_up()
        outputs = self.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
        self.sleep()  # until the next rollout: the trainer's forward and backward passes get the memory
        answers = [list(o.outputs[0].token_ids) for o in outputs]
        return to_sequence_batch(prompts, answers, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def sync(self, model: torch.nn.Module) -> float:
        """The trained policy's current weights into the engine, in memory; returns the seconds it took."""
        start = time.perf_counter()
        self.wake_up()  # level-1 sleep keeps the weights in CPU memory: they come back, then are overwritten
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _full_weights(model)})
        self.sync_s.append(time.perf_counter() - start)
        return self.sync_s[-1]

    def sleep(self) -> None:
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)  # weights to CPU memory, KV cache released
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def record(self) -> dict:
        return {
            "backend": "vllm",
            "engine_start_s": round(self.start_s, 3),
            "weight_syncs": len(self.sync_s),
            "weight_sync_mean_s": round(sum(self.sync_s) / max(len(self.sync_s), 1), 4),
            "engine_weight_bytes": self.weight_bytes,
            "engine_kv_cache_bytes": self.kv_cache_bytes,
            "vllm_llm_kwargs": self.engine_kwargs,
            "vllm_scheduler": self.scheduler,
        }

    def close(self) -> None:
        from remax_bench.core.vllm_support import shut_down_vllm

        self.llm = None
        shut_down_vllm()


def _parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight in the checkpoint's naming. Under ZeRO-3 each module's partitioned
    parameters are gathered while its tensors are handed over, one module at a time, so at most one
    module is ever whole on a rank."""
    zero3 = any(hasattr(p, "ds_id") for p in model.parameters())
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        buffers = [(n, b) for n, b in module.named_buffers(recurse=False)
                   if n not in module._non_persistent_buffers_set]  # what state_dict holds
        if not own and not buffers:
            continue
        gather = nullcontext()
        if zero3 and own:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None)
        with gather, torch.no_grad():
            prefix = f"{module_name}." if module_name else ""
            for name, tensor in own + buffers:
                yield prefix + name, tensor.detach()
