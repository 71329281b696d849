"""GRPO (Shao et al. 2024, DeepSeekMath), outcome supervision, as verl's grpo estimator runs it.

k answers per prompt, each scored once (reward model or reward function):

    score          s_i = clip(r_i)                      (kl_mode loss, GRPO's)
                   s_i = clip(r_i) - beta * sum_t (log pi_old(a_t) - log pi_ref(a_t))    (kl_mode reward)
    advantage      A_i = (s_i - mean_j s_j) / (std_j s_j + eps)       (within the group; the same on every token)
    ratio          rho_t = pi(a_t) / pi_old(a_t)
    loss           L = mean_t max(-A_i rho_t, -A_i clip(rho_t, 1 - eps_c, 1 + eps_c))
                       + beta * mean_t k3_t                              (kl_mode loss only)
    k3 estimator   k3_t = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1         (>= 0, unbiased for KL)

means over every response token of the mini-batch (verl's token-mean), std the unbiased one (torch.std),
``epochs`` passes (mu) over mini-batches of shared.train_batch_size answers. With one pass over one mini-batch
pi_old is the policy itself, so no separate scoring pass of it is spent.
"""

from __future__ import annotations

import torch

from remax_bench.core.stage import StageRun, check_finite, stage_main
from trainers.critic_free import shared_metrics
from trainers.ppo import ppo_policy_loss
from trainers.rollout import RolloutEngine, frozen_states, load_online_models, online_loop
from trainers.sequences import entropy, forward_logits, masked_mean, token_logprobs

EPS = 1e-6


def grpo_advantages(scores: torch.Tensor, k: int, std_normalize: bool = True) -> torch.Tensor:
    """A_i = (s_i - group mean) / (group std + eps), one entry per row [n]."""
    groups = scores.view(-1, k)
    centred = groups - groups.mean(-1, keepdim=True)
    if std_normalize:
        centred = centred / (groups.std(-1, keepdim=True) + EPS)
    return centred.reshape(-1).detach()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, response_mask, clip_range: float,
              kl_coef: float) -> torch.Tensor:
    """Clipped surrogate with the sequence advantage on every token, plus beta * k3 (kl_coef 0: none)."""
    token_advantages = advantages.unsqueeze(-1) * response_mask
    loss = ppo_policy_loss(logprobs, old_logprobs, token_advantages, response_mask, clip_range)
    if kl_coef:
        loss = loss + kl_coef * masked_mean(k3_kl(logprobs, ref_logprobs), response_mask)
    return loss


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.grpo
    beta = suite.shared.kl_coef
    models = load_online_models(run)
    policy = models.policy
    rollouts = RolloutEngine(run, models)
    mini_batch = suite.shared.train_batch_size

    def step(iteration: int, prompts: list[str]) -> dict:
        n = len(prompts) * cfg.samples_per_prompt
        one_update = cfg.epochs == 1 and mini_batch >= n  # then pi_old is the policy of the training forward
        ro = rollouts.collect(prompts, iteration, samples_per_prompt=cfg.samples_per_prompt,
                              policy_logprobs=not one_update)
        mask, clip = ro.mask, suite.shared.reward_clip
        losses, grad_norms = [], []

        def advantages_of(old: torch.Tensor) -> torch.Tensor:
            scores = ro.scores.clamp(-clip, clip) if clip is not None else ro.scores
            if cfg.kl_mode == "reward":
                scores = scores - beta * ((old - ro.ref_logprobs) * mask).sum(-1)
            return grpo_advantages(scores, cfg.samples_per_prompt, cfg.std_normalize)

        def update(rows, logprobs, old, advantages) -> None:
            loss = grpo_loss(logprobs, old[rows], ro.ref_logprobs[rows], advantages[rows], mask[rows],
                             cfg.clip_range, beta if cfg.kl_mode == "loss" else 0.0)
            check_finite("policy_loss", loss, iteration)  # before the update
            grad_norms.append(policy.step(loss))
            losses.append(loss.item())

        with run.timer.phase("train"):
            if one_update:
                rows = torch.arange(n)
                with run.autocast():
                    logits = forward_logits(policy.module, ro.batch)
                    logprobs = token_logprobs(logits, ro.batch.response_ids)
                old = logprobs.detach()
                advantages = advantages_of(old)
                update(rows, logprobs, old, advantages)
                with torch.no_grad():
                    token_entropy = masked_mean(entropy(logits.detach()), mask).item()
            else:
                old, token_entropy = ro.old_logprobs, ro.entropy
                advantages = advantages_of(old)
                for _ in range(cfg.epochs):
                    order = torch.randperm(n)
                    for start in range(0, n, mini_batch):
                        rows = order[start : start + mini_batch]
                        with run.autocast():
                            part = ro.batch.select(rows)
                            logprobs = token_logprobs(forward_logits(policy.module, part), part.response_ids)
                        update(rows, logprobs, old, advantages)
        mean_loss = torch.tensor(sum(losses) / len(losses))
        return {**shared_metrics(ro, old, mean_loss, sum(grad_norms) / len(grad_norms), token_entropy),
                "advantage_mean": advantages.mean().item(), "advantage_abs_mean": advantages.abs().mean().item()}

    def states() -> dict:
        return {"policy": policy.state_bytes(), **frozen_states(models)}  # no value model

    return online_loop(run, models, step, states)


if __name__ == "__main__":
    raise SystemExit(stage_main("grpo", train))
