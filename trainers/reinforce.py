"""REINFORCE without a baseline: the control of the variance comparison (Williams 1992, with RLHF's KL).

    centred score  c_i = r(x, a_i)                                    (no baseline)
    rewards        rew_t = -beta * (log pi(a_t) - log pi_ref(a_t)) + [t == T] * clip(c_i)
    returns        G_t = sum_{j >= t} gamma^(j - t) * rew_j
    loss           L = - sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens)

Every other member of the family (ReMax, RLOO, REINFORCE++, GRPO) subtracts a baseline from r; this one does
not, so its gradient has their expectation and, per the ReMax paper's argument, a larger variance.
"""

from __future__ import annotations

from remax_bench.core.stage import StageRun, stage_main
from trainers.critic_free import train_reinforce_family


def reinforce_returns(ro, kl_shaped_returns):
    """Advantages A_t = G_t of the raw scores: nothing is subtracted."""
    return kl_shaped_returns(ro.scores), {}


def train(run: StageRun) -> dict:
    return train_reinforce_family(run, reinforce_returns)


if __name__ == "__main__":
    raise SystemExit(stage_main("reinforce", train))
