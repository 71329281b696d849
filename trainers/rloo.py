"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024).

k answers per prompt; each answer's baseline is the mean score of the other k - 1:

    baseline       b_i = (sum_j r_j - r_i) / (k - 1)          (so r_i - b_i = k / (k - 1) * (r_i - mean_j r_j))
    rewards        rew_t = -beta * (log pi(a_t) - log pi_ref(a_t)) + [t == T] * clip(r_i - b_i)
    returns        G_t = sum_{j >= t} gamma^(j - t) * rew_j
    loss           L = - sum_t G_t * log pi(a_t) / (number of response tokens)          (plain REINFORCE)

b_i does not depend on answer i, so the gradient stays unbiased (the group mean used by GRPO and REINFORCE++
includes r_i itself and shrinks it by (k - 1) / k). KL in the reward and the return-to-go follow OpenRLHF's
rloo estimator.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import StageRun, stage_main
from trainers.critic_free import train_reinforce_family


def rloo_baselines(scores: torch.Tensor, k: int) -> torch.Tensor:
    """b_i = mean of the other k - 1 scores of row i's group, one entry per row [n]."""
    groups = scores.view(-1, k)
    return ((groups.sum(-1, keepdim=True) - groups) / (k - 1)).reshape(-1)


def rloo_advantages(ro, kl_shaped_returns):
    baselines = rloo_baselines(ro.scores, ro.samples_per_prompt)
    return kl_shaped_returns(ro.scores - baselines), {"baseline_reward_mean": baselines.mean().item()}


def train(run: StageRun) -> dict:
    return train_reinforce_family(run, rloo_advantages)


if __name__ == "__main__":
    raise SystemExit(stage_main("rloo", train))
