"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024).

k answers per prompt; each answer's baseline is the mean score of the other k - 1:

    baseline       b_i = (sum_j r_j - r_i) / (k - 1)          (so r_i - b_i = k / (k - 1) * (r_i - mean_j r_j))
    returns        G_t = gamma^(T - t) * clip(r_i - b_i) + the KL's share (shared.kl)
    loss           L = - sum_t G_t * log pi(a_t) / (number of response tokens)          (plain REINFORCE)

b_i does not depend on answer i, so the gradient stays unbiased (the group mean used by GRPO and REINFORCE++
includes r_i itself and shrinks it by (k - 1) / k). OpenRLHF's rloo estimator puts the KL in the reward and the
return-to-go.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import stage_main
from trainers import online


def rloo_baselines(scores: torch.Tensor, k: int) -> torch.Tensor:
    """b_i = mean of the other k - 1 scores of row i's group, one entry per row [n]."""
    groups = scores.view(-1, k)
    return ((groups.sum(-1, keepdim=True) - groups) / (k - 1)).reshape(-1)


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    baseline = rloo_baselines(exp.scores, exp.k)
    return online.Estimate(exp.returns(exp.scores - baseline, cfg.gamma), baseline=baseline)


if __name__ == "__main__":
    raise SystemExit(stage_main("rloo", online.train))
