"""What the critic-free REINFORCE family shares (REINFORCE, RLOO, REINFORCE++; GRPO reuses the pieces).

Each member differs only in the centred score c_i it gives sampled answer i; the rest is common:

    rewards    rew_t = -beta * (log pi(a_t) - log pi_ref(a_t)) + [t == T] * clip(c_i)     (KL in the reward)
    returns    G_t   = sum_{j >= t} gamma^(j - t) * rew_j                                 (return-to-go)
    loss       L     = - sum_t A_t * log pi(a_t) / (number of response tokens)             (A_t = G_t, or a
                                                                                          normalised G_t)

One gradient step per rollout batch, as ReMax takes: the log-probs that form the KL penalty are those of the
training forward pass (detached), so no separate scoring pass of the policy is needed. Rows come in groups of
k answers per prompt (Rollout.groups).
"""

from __future__ import annotations

from typing import Callable

import torch

from remax_bench.core.stage import StageRun, check_finite
from trainers.rollout import (
    Rollout,
    RolloutEngine,
    frozen_states,
    kl_penalised_rewards,
    load_online_models,
    online_loop,
    sequence_kl,
)
from trainers.sequences import entropy, forward_logits, masked_mean, token_logprobs


def returns_to_go(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = rew_t + gamma * G_{t+1} over each row's response tokens [B, R], detached; padding gets 0."""
    rewards = rewards * response_mask
    returns, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return (returns * response_mask).detach()


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                         mean=None) -> torch.Tensor:
    """L = -sum_t A_t * log pi(a_t) / (number of response tokens in the batch).

    ``mean``: the masked mean to take; with several ranks, StageRun.token_mean (tokens of the global batch)."""
    if mean is not None:
        return -mean(advantages * logprobs, response_mask)
    return -(advantages * logprobs * response_mask).sum() / response_mask.sum().clamp(min=1)


def group_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's group mean (1/k) sum_j r_j, one entry per row [n]."""
    return scores.view(-1, k).mean(-1).repeat_interleave(k)


# Advantages of one batch: (rollout, centred-score -> KL-shaped returns) -> (advantages [n, R], extra metrics).
AdvantageFn = Callable[[Rollout, Callable[[torch.Tensor], torch.Tensor]], tuple[torch.Tensor, dict]]


def train_reinforce_family(run: StageRun, advantages_fn: AdvantageFn) -> dict:
    """The online loop of a REINFORCE-family member: sample k answers per prompt, score, one update."""
    suite = run.suite
    cfg = getattr(suite, run.stage)
    models = load_online_models(run)
    policy = models.policy
    rollouts = RolloutEngine(run, models)

    def step(iteration: int, prompts: list[str]) -> dict:
        ro = rollouts.collect(prompts, iteration, samples_per_prompt=cfg.samples_per_prompt, policy_logprobs=False)
        mask = ro.mask
        with run.timer.phase("train"):
            with run.autocast():
                logits = forward_logits(policy.module, ro.batch)
                logprobs = token_logprobs(logits, ro.batch.response_ids)

            def kl_shaped_returns(centred: torch.Tensor) -> torch.Tensor:
                rewards = kl_penalised_rewards(centred, logprobs.detach(), ro.ref_logprobs, mask,
                                               suite.shared.kl_coef, suite.shared.reward_clip)
                return returns_to_go(rewards, mask, cfg.gamma)

            advantages, extra = advantages_fn(ro, kl_shaped_returns)
            loss = policy_gradient_loss(logprobs, advantages, mask, run.token_mean)
            check_finite("policy_loss", loss, iteration)  # before the update: bad numbers never reach the weights
            grad_norm = policy.step(loss)
        with torch.no_grad():
            token_entropy = masked_mean(entropy(logits.detach()), mask).item()
        return {**shared_metrics(ro, logprobs.detach(), loss, grad_norm, token_entropy),
                "advantage_mean": masked_mean(advantages, mask).item(), **extra}

    def states() -> dict:
        return {"policy": policy.state_bytes(), **frozen_states(models)}  # no value model

    return online_loop(run, models, step, states)


def shared_metrics(ro: Rollout, logprobs: torch.Tensor, loss: torch.Tensor, grad_norm: float,
                   token_entropy: float) -> dict:
    """The rollout-side figures of SHARED_DIAGNOSTICS every online algorithm logs."""
    mask = ro.mask
    return {
        "reward_mean": ro.raw_scores.mean().item(),
        "reward_std": ro.raw_scores.std().item() if len(ro.prompts) > 1 else 0.0,
        "kl": sequence_kl(logprobs, ro.ref_logprobs, mask),
        "policy_loss": loss.item(),
        "grad_norm": grad_norm,
        "entropy": token_entropy,
        "response_length": mask.sum(-1).float().mean().item(),
        "tokens": ro.generated_tokens,
        "sampled_tokens": int(mask.sum().item()),
    }
