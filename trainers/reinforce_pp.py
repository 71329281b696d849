"""REINFORCE++ with baseline, as OpenRLHF defines its ``reinforce_baseline`` estimator (Hu 2025).

k answers per prompt:

    centred score  c_i = r_i - (1/k) sum_j r_j                   (group mean; no division by the std)
    rewards        rew_t = -beta * (log pi(a_t) - log pi_ref(a_t)) + [t == T] * clip(c_i)    (token-level KL, k1)
    returns        G_t = sum_{j >= t} gamma^(j - t) * rew_j
    advantages     A_t = (G_t - mean(G)) / std(G)                 (over every response token of the global batch)
    loss           L = - sum_t A_t * log pi(a_t) / (number of response tokens)

OpenRLHF trains this with PPO's clipped ratio; with one gradient step per rollout batch (as here) the ratio
is exactly 1 and the clipped loss reduces to the line above.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import StageRun, stage_main
from trainers.critic_free import group_mean, train_reinforce_family
from trainers.sequences import masked_mean


def reinforce_pp_advantages(returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Global batch normalisation of the returns over all response tokens (population std); padding gets 0."""
    mean = masked_mean(returns, response_mask)
    var = masked_mean((returns - mean) ** 2, response_mask)
    return ((returns - mean) * var.clamp(min=1e-8).rsqrt() * response_mask).detach()


def _advantages(ro, kl_shaped_returns):
    baselines = group_mean(ro.scores, ro.samples_per_prompt)
    returns = kl_shaped_returns(ro.scores - baselines)
    return reinforce_pp_advantages(returns, ro.mask), {"baseline_reward_mean": baselines.mean().item()}


def train(run: StageRun) -> dict:
    return train_reinforce_family(run, _advantages)


if __name__ == "__main__":
    raise SystemExit(stage_main("reinforce_pp", train))
