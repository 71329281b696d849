"""GRPO (Shao et al. 2024, DeepSeekMath), outcome supervision, as verl's grpo estimator runs it.

k answers per prompt, each scored once (reward model or reward function):

    advantage      A_i = (clip(r_i) - mean_j clip(r_j)) / (std_j clip(r_j) + eps)   (within the group, on every token)
                   + the KL's share where shared.kl puts it in the reward
    ratio          rho_t = pi(a_t) / pi_old(a_t)
    loss           L = mean_t max(-A_i rho_t, -A_i clip(rho_t, 1 - eps_c, 1 + eps_c))
                   + beta * mean_t k3_t                  (its paper's KL: ``kl_override: paper``, or shared.kl)

means over every response token of the global batch (verl's token-mean), std the unbiased one (torch.std),
``epochs`` passes (mu) over mini-batches of shared.train_batch_size answers. With one pass over one mini-batch
pi_old is the policy itself, so no separate scoring pass of it is spent.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import stage_main
from trainers import online
from trainers.policy_gradient import clipped_policy_loss, group_mean

EPS = 1e-6
policy_loss = clipped_policy_loss


def grpo_advantages(scores: torch.Tensor, k: int, std_normalize: bool = True) -> torch.Tensor:
    """A_i = (s_i - group mean) / (group std + eps), one entry per row [n]."""
    groups = scores.view(-1, k)
    centred = groups - groups.mean(-1, keepdim=True)
    if std_normalize:
        centred = centred / (groups.std(-1, keepdim=True) + EPS)
    return centred.reshape(-1).detach()


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    scores = exp.clip(exp.scores)
    sequence_advantage = grpo_advantages(scores, exp.k, cfg.std_normalize)
    token_advantages = sequence_advantage.unsqueeze(-1) * exp.mask + exp.kl_advantage(gamma=1.0)
    return online.Estimate(token_advantages, baseline=group_mean(scores, exp.k))


if __name__ == "__main__":
    raise SystemExit(stage_main("grpo", online.train))
