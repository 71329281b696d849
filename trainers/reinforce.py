"""REINFORCE without a baseline: the control of the variance comparison (Williams 1992, with RLHF's KL).

    centred score  c_i = r(x, a_i)                                    (no baseline)
    returns        G_t = gamma^(T - t) * clip(c_i) + the KL's share (shared.kl)
    loss           L = - sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens)

Every other member of the family (ReMax, RLOO, REINFORCE++, GRPO) subtracts a baseline from r; this one does
not, so its gradient has their expectation and, per the ReMax paper's argument, a larger variance.
"""

from __future__ import annotations

from remax_bench.core.stage import stage_main
from trainers import online


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    """A_t = G_t of the raw scores: nothing is subtracted."""
    return online.Estimate(exp.returns(exp.scores, cfg.gamma))


if __name__ == "__main__":
    raise SystemExit(stage_main("reinforce", online.train))
