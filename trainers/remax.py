"""ReMax: REINFORCE with the greedy response's reward as baseline (Li et al. 2023, Algorithm 1).

For each prompt x, sample a ~ pi(.|x) and decode the greedy answer a_g, in one batched generation pass (k > 1
sampled answers per prompt share the one greedy answer, as verl runs it).

    baseline       b(x) = r(x, a_g)                                  (reward-model score alone)
    centred score  s = clip(r(x, a) - b(x), -c, c)
    returns        G_t = gamma^(T - t + 1) * s  + the KL's share (shared.kl)
    loss           L = - sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens)

The discount follows the authors' DeepSpeed-Chat code (its compute_returns multiplies the running score by gamma
before adding it, so even the last token T carries gamma^1 of s; the 7B script uses gamma 0.99). Their KL
treatment (``kl_override: paper``) gives each token only its own penalty -beta * (log pi - log pi_ref); verl's
ReMax sums the penalties into the return-to-go (shared.kl's return_to_go). No value model, no ratio clipping,
no GAE; one gradient step per rollout batch. With shared.reward_normalize, r(x, a) and b(x) are standardised
with the same running statistics, so s = (r(x, a) - b(x)) / std before clipping.
"""

from __future__ import annotations

from remax_bench.core.stage import stage_main
from trainers import online


def advantages(exp: online.Experience, cfg, stats) -> online.Estimate:
    """A_t = G_t: the greedy answer's score is the baseline of every sampled answer to its prompt."""
    baseline = exp.greedy_scores
    return online.Estimate(exp.returns(exp.scores - baseline, cfg.gamma, offset=1), baseline=baseline)


if __name__ == "__main__":
    raise SystemExit(stage_main("remax", online.train))
