"""PPO for RLHF (InstructGPT / DeepSpeed-Chat recipe): a critic initialised from the reward model, GAE,
a clipped policy ratio and a clipped value loss, ``ppo_epochs`` passes over each rollout batch.

    rew_t    = [t == T] * clip(r(x, a))  + the KL's per-token rewards when shared.kl sums them into the return
    delta_t  = rew_t + gamma * V(s_{t+1}) - V(s_t),            V(s_{T+1}) = 0
    A_t      = sum_k (gamma * lambda)^k delta_{t+k}                   (GAE),   returns R_t = A_t + V(s_t)
             (+ kl_t on its own token when shared.kl's shape is per_token)
    A_t      <- (A_t - mean A) / std A                               (over the global rollout batch)
    L_policy = E[max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))],      rho_t = pi / pi_old
    L_value  = 1/2 E[max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)]

Actor and critic have their own optimizers (engines); the loop (trainers/online.py) trains the critic after each
policy step of a mini-batch.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import stage_main
from trainers import online
from trainers.policy_gradient import at_last_token, clipped_policy_loss

policy_loss = clipped_policy_loss


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens. Returns (advantages, returns), both [B, R].

    Rewards and values past a row's last token count as 0 (the episode has ended), so padding never leaks in."""
    rewards, values = rewards * response_mask, values * response_mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * response_mask
    return advantages.detach(), (advantages + values).detach()


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    rewards = at_last_token(exp.clip(exp.scores), exp.mask) + exp.kl_in_return()
    advantage, returns = gae(rewards, exp.values, exp.mask, cfg.gamma, cfg.gae_lambda)
    return online.Estimate(stats.whiten(advantage + exp.kl_per_token(), exp.mask), returns=returns)


def value_loss(values, old_values, returns, mask, cfg, stats) -> torch.Tensor:
    """The clipped value loss: the critic's values move at most cfg.value_clip_range from the rollout's."""
    clipped_values = old_values + (values - old_values).clamp(-cfg.value_clip_range, cfg.value_clip_range)
    return 0.5 * stats.loss_mean(torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), mask)


if __name__ == "__main__":
    raise SystemExit(stage_main("ppo", online.train))
