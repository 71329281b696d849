"""ReMax: REINFORCE with the greedy response's reward as baseline (Li et al. 2023, Algorithm 1).

For each prompt x, sample a ~ pi(.|x) and decode the greedy answer a_g, in one batched generation pass.

    baseline       b(x) = r(x, a_g)                                  (reward-model score alone)
    centred score  s = clip(r(x, a) - b(x), -c, c)
    KL penalty     k_t = -beta * (log pi(a_t) - log pi_ref(a_t))
    returns        G_t = k_t + gamma^(T-t+1) * s                             (kl_mode per_token, default)
                   G_t = sum_{j>=t} gamma^(j-t) * (k_j + [j == T] * clip(r(x, a))) - b(x)   (return_to_go)
    loss           L = - sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens)

per_token is the authors' DeepSpeed-Chat code (its compute_returns multiplies the running score by gamma
before adding it, so even the last token T carries gamma^1 of s; the 7B script uses gamma 0.99).
return_to_go is verl's ReMax estimator: the reverse cumulative sum of the token-level rewards (each token's KL
penalty, the score on the last), minus the greedy baseline, which is not clipped; with gamma 1 and
shared.reward_clip null it is verl's formula exactly.

No value model, no ratio clipping, no GAE; one gradient step per rollout batch. Because the policy changes
only once per batch, the log-probs that form the KL penalty are those of the training forward pass
(detached): no separate scoring pass of the policy is needed. With shared.reward_normalize, r(x, a) and
b(x) are standardised with the same running statistics, so s = (r(x, a) - b(x)) / std before clipping.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import StageRun, check_finite, stage_main
from trainers.rollout import (
    RolloutEngine,
    frozen_states,
    kl_penalty,
    last_token_index,
    load_online_models,
    online_loop,
    sequence_kl,
)
from trainers.sequences import entropy, forward_logits, masked_mean, token_logprobs


def remax_returns(scores: torch.Tensor, baseline_scores: torch.Tensor, kl_penalty: torch.Tensor,
                  response_mask: torch.Tensor, gamma: float = 1.0, reward_clip: float | None = 5.0,
                  kl_mode: str = "per_token") -> torch.Tensor:
    """Per-token returns G_t [B, R], detached. ``kl_penalty`` is -beta * (log pi - log pi_ref) per token."""
    kl_penalty = kl_penalty * response_mask  # padding after eos carries nothing
    last = last_token_index(response_mask)  # each row's own last token T
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    if kl_mode == "per_token":
        centred = scores - baseline_scores  # r(x, a) - r(x, a_greedy)
        if reward_clip is not None:
            centred = centred.clamp(-reward_clip, reward_clip)
        discount = gamma ** (last.unsqueeze(-1) - positions + 1).clamp(min=0).float()  # gamma^(T - t + 1)
        returns = centred.unsqueeze(-1) * discount + kl_penalty
    elif kl_mode == "return_to_go":
        score = scores.clamp(-reward_clip, reward_clip) if reward_clip is not None else scores
        rewards = kl_penalty.clone()
        rewards[torch.arange(len(scores)), last] += score
        to_go, running = torch.zeros_like(rewards), torch.zeros_like(score)
        for t in reversed(range(rewards.shape[1])):  # sum_{j>=t} gamma^(j-t) rew_j
            running = rewards[:, t] + gamma * running
            to_go[:, t] = running
        returns = to_go - baseline_scores.unsqueeze(-1)
    else:
        raise ValueError(f"kl_mode must be per_token or return_to_go, got {kl_mode!r}")
    return (returns * response_mask).detach()


def remax_loss(logprobs: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor, mean=None) -> torch.Tensor:
    """L = -sum_t G_t * log pi(a_t) / (number of response tokens in the batch).

    ``mean``: the masked mean to take; with several ranks, StageRun.token_mean (tokens of the global batch)."""
    if mean is not None:
        return -mean(returns * logprobs, response_mask)
    return -(returns * logprobs * response_mask).sum() / response_mask.sum().clamp(min=1)


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.remax
    models = load_online_models(run)
    policy = models.policy
    rollouts = RolloutEngine(run, models)

    def step(iteration: int, prompts: list[str]) -> dict:
        # Sampled and greedy answers in one generation pass, both scored by the reward model. The policy's
        # log-probs come from the training forward below (one gradient step per batch: they are the
        # rollout policy's), so no separate no_grad pass of the policy is spent on them.
        ro = rollouts.collect(prompts, iteration, samples_per_prompt=cfg.samples_per_prompt, greedy_baseline=True,
                              policy_logprobs=False)
        # ReMax's one addition to REINFORCE: the greedy answer a_g to each prompt (decoded in the same batched
        # generate call as the sampled one: sequences.GreedyRows makes its rows pick the argmax) and its
        # reward-model score as the baseline b(x) = r(x, a_g). With k > 1 samples per prompt (as verl runs it)
        # the k answers to x share that one greedy baseline (ro.greedy_scores has one entry per row).
        baseline = ro.greedy_scores
        mask = ro.mask
        with run.timer.phase("train"):
            with run.autocast():
                logits = forward_logits(policy.module, ro.batch)
                logprobs = token_logprobs(logits, ro.batch.response_ids)
            kl = kl_penalty(logprobs.detach(), ro.ref_logprobs, suite.shared.kl_coef)
            returns = remax_returns(ro.scores, baseline, kl, mask, cfg.gamma, suite.shared.reward_clip, cfg.kl_mode)
            loss = remax_loss(logprobs, returns, mask, run.token_mean)
            check_finite("policy_loss", loss, iteration)  # before the update: bad numbers never reach the weights
            grad_norm = policy.step(loss)
        with torch.no_grad():
            token_entropy = masked_mean(entropy(logits.detach()), mask).item()
        return {
            "reward_mean": ro.raw_scores.mean().item(),
            "reward_std": ro.raw_scores.std().item() if len(ro.prompts) > 1 else 0.0,
            "baseline_reward_mean": ro.raw_greedy_scores.mean().item(),
            "advantage_mean": (ro.scores - baseline).mean().item(),
            "kl": sequence_kl(logprobs.detach(), ro.ref_logprobs, mask),
            "policy_loss": run.mean_over_ranks(loss.detach()),  # the global batch's loss
            "grad_norm": grad_norm,
            "entropy": token_entropy,
            "response_length": mask.sum(-1).float().mean().item(),
            "tokens": ro.generated_tokens,
            "sampled_tokens": int(mask.sum().item()),
        }

    def states() -> dict:
        # No value model: the policy (with its optimizer) and the two frozen scorers are all there is.
        return {"policy": policy.state_bytes(), **frozen_states(models)}

    return online_loop(run, models, step, states)


if __name__ == "__main__":
    raise SystemExit(stage_main("remax", train))
