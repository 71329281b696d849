"""ReMax: REINFORCE with the greedy response's reward as baseline (Li et al. 2023, Algorithm 1).

For each prompt x, sample a ~ pi(.|x) and decode the greedy answer a_g, in one batched generation pass.

    baseline       b(x) = r(x, a_g)                                  (reward-model score alone)
    centred score  s = clip(r(x, a) - b(x), -c, c), placed on the last response token T
    returns        G_t = gamma^(T-t) * s  -  beta * (log pi(a_t) - log pi_ref(a_t))     (kl_mode per_token)
                   G_t = sum_{k>=t} gamma^(k-t) * rew_k                                  (kl_mode return_to_go)
    loss           L = - sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens)

No value model, no clipping, no GAE; one gradient step per rollout batch. Because the policy changes only
once per batch, the log-probs that form the KL penalty are those of the training forward pass (detached):
no separate scoring pass of the policy is needed.
"""

from __future__ import annotations

import torch

from trainers.common import StageRun, stage_main
from trainers.rollout import (
    frozen_states,
    generate_responses,
    kl_penalty,
    last_token_index,
    load_online_models,
    online_loop,
    reference_logprobs,
    reward_scores,
    sequence_kl,
)
from trainers.sequences import entropy, forward_logits, masked_mean, token_logprobs


def remax_returns(scores: torch.Tensor, baseline_scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor,
                  gamma: float = 1.0, reward_clip: float | None = 5.0, kl_mode: str = "per_token") -> torch.Tensor:
    """Per-token returns [B, R] (detached). ``kl`` is the per-token penalty -beta * (log pi - log pi_ref)."""
    centred = scores - baseline_scores
    if reward_clip is not None:
        centred = centred.clamp(-reward_clip, reward_clip)
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = last_token_index(response_mask).unsqueeze(-1)
    kl = kl * response_mask
    if kl_mode == "per_token":
        discount = gamma ** (last - positions).clamp(min=0).float()
        returns = centred.unsqueeze(-1) * discount + kl
    elif kl_mode == "return_to_go":
        rewards = kl.clone()
        rewards[torch.arange(len(scores)), last.squeeze(-1)] += centred
        returns = torch.zeros_like(rewards)
        running = torch.zeros_like(centred)
        for t in reversed(range(rewards.shape[1])):
            running = rewards[:, t] + gamma * running
            returns[:, t] = running
    else:
        raise ValueError(f"kl_mode must be per_token or return_to_go, got {kl_mode!r}")
    return (returns * response_mask).detach()


def remax_loss(logprobs: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return -(returns * logprobs * response_mask).sum() / response_mask.sum().clamp(min=1)


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.remax
    models = load_online_models(run)
    policy = models.policy

    def step(iteration: int, prompts: list[str]) -> dict:
        n = len(prompts)
        # Sampled answers for the first copy of the prompts, greedy ones for the second: one pass.
        greedy = torch.tensor([False] * n + [True] * n)
        both = generate_responses(run, models, prompts + prompts, greedy=greedy)
        sampled = both.select(slice(0, n))
        with run.timer.phase("score"):
            scores = reward_scores(run, models, prompts + prompts, both)
            ref_logprobs = reference_logprobs(run, models, sampled)
        with run.timer.phase("train"):
            with run.autocast():
                logits = forward_logits(policy.module, sampled)
                logprobs = token_logprobs(logits, sampled.response_ids)
            kl = kl_penalty(logprobs.detach(), ref_logprobs, suite.shared.kl_coef)
            returns = remax_returns(scores[:n], scores[n:], kl, sampled.response_mask, cfg.gamma,
                                    suite.shared.reward_clip, cfg.kl_mode)
            loss = remax_loss(logprobs, returns, sampled.response_mask)
            grad_norm = policy.step(loss)
        mask = sampled.response_mask
        with torch.no_grad():
            token_entropy = masked_mean(entropy(logits.detach()), mask).item()
        return {
            "reward_mean": scores[:n].mean().item(),
            "reward_std": scores[:n].std().item(),
            "baseline_reward_mean": scores[n:].mean().item(),
            "advantage_mean": (scores[:n] - scores[n:]).mean().item(),
            "kl": sequence_kl(logprobs.detach(), ref_logprobs, mask),
            "policy_loss": loss.item(),
            "grad_norm": grad_norm,
            "entropy": token_entropy,
            "response_length": mask.sum(-1).float().mean().item(),
            "tokens": int(both.response_mask.sum().item()),
        }

    def states() -> dict:
        return {"policy": policy.state_bytes(), **frozen_states(models)}

    return online_loop(run, models, step, states)


if __name__ == "__main__":
    raise SystemExit(stage_main("remax", train))
