"""Held-out quality of a policy during and after training.

On the synthetic task the gold scorer is known, so every policy stage (SFT, PPO, ReMax, DPO) reports the
mean gold reward of its greedy answers to the held-out evaluation prompts: the true answer to "did RL help?".
"""

from __future__ import annotations

import torch

from remax_bench.core.data import load_prompts
from remax_bench.core.task import gold_score
from trainers.sequences import decode_responses, generate


def is_synthetic(suite) -> bool:
    return suite.data.eval_prompts.source == "synthetic"


def heldout_prompts(suite, limit: int | None = None) -> list[str]:
    rows = load_prompts(suite.data.eval_prompts, suite.data.synthetic, split_kind="eval")
    prompts = [row["prompt"] for row in rows]
    return prompts[:limit] if limit else prompts


@torch.no_grad()
def gold_reward_of(model, tokenizer, suite, prompts: list[str], batch_size: int = 64) -> dict[str, float]:
    """Mean gold reward of greedy answers, and their mean length in tokens."""
    shared = suite.shared
    ds = suite.runtime.deepspeed
    # Under ZeRO-3 every rank must run the same number of forwards (see rollout.synced_generation).
    synced = (ds.enabled and ds.zero_stage == 3 and torch.distributed.is_initialized()
              and torch.distributed.get_world_size() > 1)
    scores, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = generate(model, tokenizer, chunk, shared.max_prompt_length, shared.max_response_length, greedy=True,
                         synced_gpus=synced)
        for prompt, response in zip(chunk, decode_responses(tokenizer, batch)):
            scores.append(gold_score(prompt, response))
        lengths.extend(batch.response_lengths.tolist())
    return {
        "heldout_gold_reward": float(sum(scores) / len(scores)),
        "heldout_response_length": float(sum(lengths) / len(lengths)),
    }
