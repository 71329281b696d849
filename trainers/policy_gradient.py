"""The formulas every online algorithm shares: returns, KL estimates and the two policy losses.

Tensors are [n, R]: n sampled answers (k per prompt: rows i*k .. i*k + k - 1 answer prompt i), R response tokens,
``mask`` 1 on each answer's tokens up to and including its eos. Token means of a loss are taken over the global
batch by ``stats`` (remax_bench.core.global_batch.GlobalBatch), whatever the number of ranks.
"""

from __future__ import annotations

import torch


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = rew_t + gamma * G_{t+1} over each row's response tokens, detached; padding gets 0."""
    rewards = rewards * mask
    returns, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return (returns * mask).detach()


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index T of each row's last response token (its eos, or the length limit)."""
    return (mask.sum(-1).long() - 1).clamp(min=0)


def at_last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n] values placed on each row's last response token: [t == T] * value, [n, R]."""
    out = torch.zeros_like(mask, dtype=values.dtype)
    out[torch.arange(len(values), device=mask.device), last_token_index(mask)] = values
    return out


def discounted_to_each_token(values: torch.Tensor, mask: torch.Tensor, gamma: float, offset: int = 0) -> torch.Tensor:
    """gamma^(T - t + offset) * value on every token t <= T of its row: the return of a score received at T."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    exponent = (last_token_index(mask).unsqueeze(-1) - positions + offset).clamp(min=0).float()
    return values.unsqueeze(-1) * gamma**exponent * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from d = log pi - log pi_ref (Schulman, "Approximating KL"):
    k1 = d (unbiased, any sign), k2 = d^2 / 2, k3 = exp(-d) + d - 1 (unbiased and >= 0)."""
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.exp(-d) + d - 1
    raise ValueError(f"KL estimator must be k1, k2 or k3, got {estimator!r}")


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n] summed log-ratio of each answer: its sample estimate of KL(pi || pi_ref) over the whole response."""
    return ((logprobs - ref_logprobs) * mask).sum(-1)


def group_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's group mean (1/k) sum_j r_j over the k answers to its prompt, one entry per row [n]."""
    return scores.view(-1, k).mean(-1).repeat_interleave(k)


def policy_gradient_loss(logprobs, old_logprobs, advantages, mask, cfg, stats) -> torch.Tensor:
    """REINFORCE: L = -sum_t A_t * log pi(a_t) / (response tokens of the global batch)."""
    return -stats.loss_mean(advantages * logprobs, mask)


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cfg, stats) -> torch.Tensor:
    """PPO's surrogate: L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)), rho_t = pi / pi_old,
    eps = cfg.clip_range. With one update per batch rho = 1 and its gradient is REINFORCE's."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
    return stats.loss_mean(torch.maximum(-advantages * ratio, -advantages * clipped), mask)


@torch.no_grad()
def ratio_diagnostics(logprobs, old_logprobs, mask, stats, clip_range: float | None = None) -> dict[str, float]:
    """What a clipped-ratio update's logs show: approx_kl = E[(rho - 1) - log rho] (>= 0, ~ KL(pi_old || pi)) and,
    with a clip range, clipfrac = the share of tokens whose ratio left [1 - eps, 1 + eps]."""
    log_ratio = (logprobs - old_logprobs).float()
    ratio = torch.exp(log_ratio)
    figures = {"approx_kl": stats.mean((ratio - 1) - log_ratio, mask).item()}
    if clip_range is not None:
        figures["clipfrac"] = stats.mean(((ratio - 1).abs() > clip_range).float(), mask).item()
    return figures


@torch.no_grad()
def explained_variance(values, returns, mask, stats) -> float:
    """1 - Var(R - V) / Var(R): how much of the returns' spread the critic's values account for."""
    return 1.0 - (stats.var(returns - values, mask) / stats.var(returns, mask).clamp(min=1e-8)).item()
