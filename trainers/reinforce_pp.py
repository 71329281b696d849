"""REINFORCE++ with baseline, as OpenRLHF defines its ``reinforce_baseline`` estimator (Hu 2025).

k answers per prompt:

    centred score  c_i = r_i - (1/k) sum_j r_j                   (group mean; no division by the std)
    returns        G_t = gamma^(T - t) * clip(c_i) + the KL's share (shared.kl; OpenRLHF: k1 in the return)
    advantages     A_t = (G_t - mean(G)) / std(G)                 (over every response token of the global batch)
    loss           L = - sum_t A_t * log pi(a_t) / (number of response tokens)

OpenRLHF trains this with PPO's clipped ratio; with one gradient step per rollout batch (as here) the ratio
is exactly 1 and the clipped loss reduces to the line above. The normalisation is over the global batch
(``stats``), whatever the number of ranks.
"""

from __future__ import annotations

from remax_bench.core.stage import stage_main
from trainers import online
from trainers.policy_gradient import group_mean


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    baseline = group_mean(exp.scores, exp.k)
    return online.Estimate(stats.whiten(exp.returns(exp.scores - baseline, cfg.gamma), exp.mask), baseline=baseline)


if __name__ == "__main__":
    raise SystemExit(stage_main("reinforce_pp", online.train))
