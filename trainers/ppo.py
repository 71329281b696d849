"""PPO for RLHF (InstructGPT / DeepSpeed-Chat recipe): a critic initialised from the reward model, GAE,
a clipped policy ratio and a clipped value loss, ``ppo_epochs`` passes over each rollout batch.

    rew_t    = -beta * (log pi_old(a_t) - log pi_ref(a_t)) + [t == T] * clip(r(x, a))    (the rollout engine)
    delta_t  = rew_t + gamma * V(s_{t+1}) - V(s_t),            V(s_{T+1}) = 0
    A_t      = sum_k (gamma * lambda)^k delta_{t+k}                   (GAE),   returns R_t = A_t + V(s_t)
    L_policy = E[max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))],      rho_t = pi / pi_old
    L_value  = 1/2 E[max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)]

Advantages are whitened over the rollout batch; actor and critic have their own optimizers (engines).
"""

from __future__ import annotations

import torch

from remax_bench.core.models import load_reward_model
from remax_bench.core.stage import StageError, StageRun, check_finite, stage_main
from trainers.engine import build_engine, without_dropout
from trainers.rollout import RolloutEngine, frozen_states, load_online_models, online_loop, sequence_kl
from trainers.sequences import SequenceBatch, forward_logits, masked_mean, position_ids, token_logprobs


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens. Returns (advantages, returns), both [B, R].

    Rewards and values past a row's last token count as 0 (the episode has ended), so padding never leaks in."""
    rewards, values = rewards * response_mask, values * response_mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * response_mask
    return advantages.detach(), (advantages + values).detach()


def whiten(values: torch.Tensor, mask: torch.Tensor, mean_of=masked_mean) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; masked entries become 0. ``mean_of``: with several ranks,
    StageRun.global_mean, so the statistics are those of the global rollout batch."""
    mean = mean_of(values, mask)
    var = mean_of((values - mean) ** 2, mask)
    return ((values - mean) * torch.rsqrt(var + 1e-8)) * mask


def ppo_policy_loss(logprobs, old_logprobs, advantages, response_mask, clip_range: float,
                    mean=masked_mean) -> torch.Tensor:
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return mean(torch.maximum(unclipped, clipped), response_mask)


def ppo_value_loss(values, old_values, returns, response_mask, clip_range: float,
                   mean=masked_mean) -> torch.Tensor:
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * mean(torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), response_mask)


@torch.no_grad()
def ppo_diagnostics(logprobs, old_logprobs, values, returns, response_mask, clip_range: float) -> dict[str, float]:
    """What PPO's logs usually show, over response tokens:
    approx_kl = E[(rho - 1) - log rho] (non-negative, ~ KL(pi_old || pi)), clipfrac = share of tokens whose ratio
    left [1 - eps, 1 + eps], explained variance = 1 - Var(R - V) / Var(R) of the critic."""
    log_ratio = (logprobs - old_logprobs).float()
    ratio = torch.exp(log_ratio)
    residual = (returns - values).float()
    return {
        "approx_kl": masked_mean((ratio - 1) - log_ratio, response_mask).item(),
        "clipfrac": masked_mean(((ratio - 1).abs() > clip_range).float(), response_mask).item(),
        "explained_variance": 1.0 - (_masked_var(residual, response_mask) / _masked_var(returns.float(), response_mask)
                                     .clamp(min=1e-8)).item(),
    }


def _masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean((values - masked_mean(values, mask)) ** 2, mask)


def critic_values(critic, batch: SequenceBatch) -> torch.Tensor:
    """V(s_t) [B, R]: the reward model's scalar head on the hidden state that predicts response token t."""
    body = getattr(critic, critic.base_model_prefix)
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
    return critic.score(hidden).squeeze(-1)[:, batch.prompt_width - 1 : -1].float()


def train(run: StageRun) -> dict:
    suite, cfg = run.suite, run.suite.ppo
    models = load_online_models(run)
    policy = models.policy
    critic_model = run.record_dtype("critic", load_reward_model(run.inputs["reward_model"], seed=run.seed).to(run.device))
    if not hasattr(critic_model, "score"):
        raise StageError("PPO's critic needs a reward model with a `score` head (a *ForSequenceClassification model)")
    without_dropout(critic_model)
    mini_batch = run.per_rank("shared.train_batch_size")  # this rank's share of each global mini-batch
    critic = build_engine(critic_model, cfg.critic_learning_rate, suite, mini_batch)
    rollouts = RolloutEngine(run, models)

    def step(iteration: int, prompts: list[str]) -> dict:
        ro = rollouts.collect(prompts, iteration)
        mask = ro.mask
        with run.timer.phase("score"), torch.no_grad(), run.autocast():
            old_values = critic_values(critic.module, ro.batch)
        with run.timer.phase("train"):
            rewards = ro.rewards(suite.shared.kl_coef, suite.shared.reward_clip)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
            advantages = whiten(advantages, mask, run.global_mean)
            policy_losses, value_losses, grad_norms, diagnostics = [], [], [], []
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(len(prompts))
                for start in range(0, len(prompts), mini_batch):
                    rows = order[start : start + mini_batch]
                    part, part_mask = ro.batch.select(rows), mask[rows]
                    with run.autocast():
                        logprobs = token_logprobs(forward_logits(policy.module, part), part.response_ids)
                        policy_loss = ppo_policy_loss(logprobs, ro.old_logprobs[rows], advantages[rows], part_mask,
                                                      cfg.clip_range, run.token_mean)
                    check_finite("policy_loss", policy_loss, iteration)  # before the update
                    grad_norms.append(policy.step(policy_loss))
                    with run.autocast():
                        values = critic_values(critic.module, part)
                        value_loss = ppo_value_loss(values, old_values[rows], returns[rows], part_mask,
                                                    cfg.value_clip_range, run.token_mean)
                    check_finite("value_loss", value_loss, iteration)
                    critic.step(value_loss)
                    # With several ranks a rank's loss is its scaled part of the global mean; their mean is it.
                    policy_losses.append(run.mean_over_ranks(policy_loss.detach()))
                    value_losses.append(run.mean_over_ranks(value_loss.detach()))
                    diagnostics.append(ppo_diagnostics(logprobs, ro.old_logprobs[rows], values, returns[rows],
                                                       part_mask, cfg.clip_range))
        return {
            "reward_mean": ro.raw_scores.mean().item(),
            "reward_std": ro.raw_scores.std().item() if len(prompts) > 1 else 0.0,
            "kl": sequence_kl(ro.old_logprobs, ro.ref_logprobs, mask),
            "policy_loss": sum(policy_losses) / len(policy_losses),
            "value_loss": sum(value_losses) / len(value_losses),
            "value_mean": masked_mean(old_values, mask).item(),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            **{key: sum(d[key] for d in diagnostics) / len(diagnostics) for key in diagnostics[0]},
            "entropy": ro.entropy,
            "response_length": mask.sum(-1).float().mean().item(),
            "tokens": ro.generated_tokens,
            "sampled_tokens": int(mask.sum().item()),
        }

    def states() -> dict:
        return {"policy": policy.state_bytes(), "critic": critic.state_bytes(), **frozen_states(models)}

    return online_loop(run, models, step, states)


if __name__ == "__main__":
    raise SystemExit(stage_main("ppo", train))
