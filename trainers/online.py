"""The one online loop every online algorithm runs (PPO, ReMax, REINFORCE, GRPO, RLOO, REINFORCE++).

Each iteration, on each rank's share of the global rollout batch:

    collect      k sampled answers per prompt (+ one greedy answer per prompt where the estimator needs it),
                 scored by the reward model (or function) and the frozen reference        (trainers/rollout.py)
    score        the critic's values V(s_t), where the algorithm trains one
    advantages   the algorithm's estimator: advantages(exp, cfg, stats) -> Estimate       (trainers/<name>.py)
    update       ``epochs`` passes over mini-batches of shared.train_batch_size answers (one pass over the whole
                 batch for an algorithm without epochs): the policy loss (REINFORCE's, or the algorithm's own),
                 plus beta * KL where shared.kl puts the KL in the loss; the critic's value loss
    log          the figures every algorithm logs, over the global batch

What an algorithm needs (greedy answers, k, a critic, epochs) comes from its registry entry
(remax_bench/core/algorithms.py); its module holds only its formula. The KL regularisation is applied here, in one
place, as the suite's shared.kl (or the algorithm's kl_override) says:

    kl_t       = -beta * k(log pi_old(a_t), log pi_ref(a_t))          (k1, k2 or k3; placement "reward")
    in return  sum_{j >= t} gamma^(j - t) kl_j  added to A_t            (shape return_to_go; inside GAE for PPO)
    per token  kl_t added to A_t                                        (shape per_token)
    in loss    L += beta * token mean of k(log pi(a_t), log pi_ref(a_t))  (placement "loss", with its gradient)

Every statistic that crosses rows (loss token means, whitening, logged means) is taken by ``stats``
(remax_bench.core.global_batch.GlobalBatch) over the global batch, so N ranks compute what one process computes.
When a batch gets exactly one update (one epoch, one mini-batch) pi_old is the policy of the training forward
itself: its log-probs are taken from that forward (detached) and no separate scoring pass of the policy is spent.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from remax_bench.core import algorithms
from remax_bench.core.algorithms import KL
from remax_bench.core.checkpoint import Accumulators, TrainingState
from remax_bench.core.models import load_reward_model
from remax_bench.core.stage import StageError, StageRun, check_finite
from trainers.engine import build_engine, without_dropout
from trainers.heldout import gold_reward_of, heldout_prompts, is_synthetic
from trainers.policy_gradient import (
    discounted_to_each_token,
    explained_variance,
    kl_estimate,
    policy_gradient_loss,
    ratio_diagnostics,
    returns_to_go,
    sequence_kl,
)
from trainers.rollout import OnlineModels, PromptSampler, Rollout, RolloutEngine, frozen_states, load_online_models
from trainers.sequences import SequenceBatch, entropy, forward_logits, position_ids, token_logprobs


# -- what an estimator reads and returns ------------------------------------------------------------
@dataclass
class Experience:
    """One rollout batch on this rank as an estimator sees it; every tensor detached, [n] or [n, R]."""

    scores: torch.Tensor  # [n] reward (standardised with shared.reward_normalize), not clipped
    greedy_scores: torch.Tensor | None  # [n] each row's prompt's greedy answer's score, on the scale of scores
    logprobs: torch.Tensor  # [n, R] log pi_old(a_t): the policy that generated the batch
    ref_logprobs: torch.Tensor  # [n, R] log pi_ref(a_t)
    mask: torch.Tensor  # [n, R]
    k: int  # answers per prompt: rows i*k .. i*k + k - 1 answer prompt i
    kl: KL
    kl_coef: float  # beta
    reward_clip: float | None  # c: scores (or centred scores) clipped to +-c
    values: torch.Tensor | None = None  # [n, R] the critic's V(s_t), where the algorithm trains one

    def clip(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.clamp(-self.reward_clip, self.reward_clip) if self.reward_clip is not None else scores

    def kl_rewards(self) -> torch.Tensor:
        """-beta * k_t per token where shared.kl places the KL in the reward; zeros where it is in the loss."""
        if self.kl.placement != "reward":
            return torch.zeros_like(self.logprobs)
        return -self.kl_coef * kl_estimate(self.logprobs, self.ref_logprobs, self.kl.estimator) * self.mask

    def kl_in_return(self) -> torch.Tensor:
        """The KL rewards that accumulate into the return (shape return_to_go), else zeros."""
        return self.kl_rewards() if self.kl.shape == "return_to_go" else torch.zeros_like(self.logprobs)

    def kl_per_token(self) -> torch.Tensor:
        """The KL rewards that reach only their own token's advantage (shape per_token), else zeros."""
        return self.kl_rewards() if self.kl.shape == "per_token" else torch.zeros_like(self.logprobs)

    def kl_advantage(self, gamma: float) -> torch.Tensor:
        """What the KL adds to A_t: sum_{j >= t} gamma^(j - t) kl_j (return_to_go) or kl_t (per_token)."""
        return returns_to_go(self.kl_in_return(), self.mask, gamma) + self.kl_per_token()

    def returns(self, centred: torch.Tensor, gamma: float, offset: int = 0) -> torch.Tensor:
        """The return of each token under a (centred) score received at the last token T, with the KL:
        gamma^(T - t + offset) * clip(centred) + the KL's share."""
        return discounted_to_each_token(self.clip(centred), self.mask, gamma, offset) + self.kl_advantage(gamma)


@dataclass
class Estimate:
    advantages: torch.Tensor  # [n, R], detached
    returns: torch.Tensor | None = None  # [n, R] the critic's targets, where the algorithm trains one
    baseline: torch.Tensor | None = None  # [n] what was subtracted from each score (for the logs)

    def __post_init__(self):
        # Advantages and returns are constants of the loss: no gradient may flow back through them.
        self.advantages = self.advantages.detach()
        self.returns = self.returns.detach() if self.returns is not None else None


Estimator = Callable[[Experience, object, object], Estimate]


# -- the critic hook --------------------------------------------------------------------------------
def critic_values(critic, batch: SequenceBatch) -> torch.Tensor:
    """V(s_t) [n, R]: the critic's scalar head on the hidden state that predicts response token t."""
    body = getattr(critic, critic.base_model_prefix)
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
    return critic.score(hidden).squeeze(-1)[:, batch.prompt_width - 1 : -1].float()


def load_critic(run: StageRun, cfg):
    """The value model, initialised from the reward model (InstructGPT, DeepSpeed-Chat), with its own optimizer."""
    model = run.record_dtype("critic", load_reward_model(run.inputs["reward_model"], seed=run.seed).to(run.device))
    if not hasattr(model, "score"):
        raise StageError(f"{run.stage}'s critic needs a reward model with a `score` head "
                         "(a *ForSequenceClassification model)")
    without_dropout(model)
    return build_engine(model, cfg.critic_learning_rate, run.suite, run.per_rank("shared.train_batch_size"))


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class OnlineTotals(Accumulators):
    """The summary's running totals over the iterations (part of the stage's checkpoint)."""

    step_times: list = field(default_factory=list)  # seconds of each timed iteration
    phases: dict = field(default_factory=lambda: {"generate": 0.0, "sync": 0.0, "score": 0.0, "train": 0.0})
    tokens: int = 0  # generated tokens of the timed iterations (greedy answers included)
    sampled: int = 0  # sampled answer tokens of the timed iterations
    generated: int = 0  # generated tokens of every iteration
    rewards: list = field(default_factory=list)  # each iteration's mean reward
    kls: list = field(default_factory=list)  # each iteration's KL to the reference
    last_eval: dict | None = None  # the held-out gold figures of the last iteration, when it evaluated
    gold_before: float | None = None  # the SFT model's held-out gold reward


# What every online algorithm logs each step, so curves compare across algorithms.
SHARED_DIAGNOSTICS = ("reward_mean", "reward_std", "kl", "policy_loss", "grad_norm", "entropy", "response_length",
                      "tokens", "sampled_tokens", "advantage_mean")


class OnlineTrainer:
    def __init__(self, run: StageRun, models: OnlineModels | None = None, critic=None):
        self.run, self.suite, self.stats = run, run.suite, run.stats
        self.spec = algorithms.get(run.stage)
        self.cfg = getattr(run.suite, run.stage)
        module = importlib.import_module(self.spec.module)
        self.estimator: Estimator = module.advantages
        self.policy_loss = getattr(module, "policy_loss", policy_gradient_loss)
        self.value_loss = getattr(module, "value_loss", None)
        self.kl = run.suite.kl_treatment(run.stage)
        self.k = run.suite.samples_per_prompt(run.stage)
        self.epochs = self.spec.epochs(self.cfg)
        # Mini-batches are global sizes split over the ranks, as every batch size of a suite.
        self.mini_batch = run.per_rank("shared.train_batch_size") if self.spec.epochs_field else None
        self.models = models or load_online_models(run)
        self.policy = self.models.policy
        self.critic = critic if critic is not None or not self.spec.critic else load_critic(run, self.cfg)

    # -- one update of one rollout batch -------------------------------------------------------------
    def update(self, ro: Rollout, iteration: int) -> dict:
        run, stats, shared = self.run, self.stats, self.suite.shared
        n, mask = len(ro.prompts), ro.mask
        one_update = self.epochs == 1 and (self.mini_batch is None or self.mini_batch >= n)
        old_values = None
        if self.critic is not None:
            with run.timer.phase("score"), torch.no_grad(), run.autocast():
                old_values = critic_values(self.critic.module, ro.batch)
        with run.timer.phase("train"):
            if one_update:
                with run.autocast():
                    logits = forward_logits(self.policy.module, ro.batch)
                    logprobs = token_logprobs(logits, ro.batch.response_ids)
                old = logprobs.detach()
            else:
                old = ro.old_logprobs
            exp = Experience(ro.scores, ro.greedy_scores, old, ro.ref_logprobs, mask, self.k, self.kl, shared.kl_coef,
                             shared.reward_clip, old_values)
            estimate = self.estimator(exp, self.cfg, stats)
            losses, grad_norms, value_losses, ratio_figures = [], [], [], []
            for rows in self._minibatches(n, one_update):
                if not one_update:
                    part = ro.batch.select(rows)
                    with run.autocast():
                        logprobs = token_logprobs(forward_logits(self.policy.module, part), part.response_ids)
                with run.autocast():
                    loss = self._loss(logprobs, old[rows], estimate.advantages[rows], mask[rows], ro.ref_logprobs[rows])
                check_finite("policy_loss", loss, iteration)  # before the update: bad numbers never reach the weights
                grad_norms.append(self.policy.step(loss))
                losses.append(stats.scalar(loss.detach()))  # a rank's loss is its share of the global mean
                ratio_figures.append(ratio_diagnostics(logprobs.detach(), old[rows], mask[rows], stats,
                                                       getattr(self.cfg, "clip_range", None)))
                if self.critic is not None:
                    value_losses.append(self._critic_step(ro.batch.select(rows), old_values[rows], estimate.returns[rows],
                                                          mask[rows], iteration))
            if one_update:
                with torch.no_grad():
                    token_entropy = entropy(logits.detach())
                del logits
            else:
                token_entropy = ro.token_entropy
        metrics = self._metrics(ro, old, estimate, token_entropy, losses, grad_norms)
        if not one_update:  # with one update the ratio is exactly 1
            metrics.update({key: sum(f[key] for f in ratio_figures) / len(ratio_figures) for key in ratio_figures[0]})
        if self.critic is not None:
            metrics["value_loss"] = sum(value_losses) / len(value_losses)
            metrics["value_mean"] = stats.mean(old_values, mask).item()
            metrics["explained_variance"] = explained_variance(old_values, estimate.returns, mask, stats)
        return metrics

    def _minibatches(self, n: int, one_update: bool):
        """Rows of each update: all of them once, or ``epochs`` shuffled passes of mini_batch rows."""
        if one_update:
            yield slice(None)
            return
        for _ in range(self.epochs):
            order = torch.randperm(n)
            for start in range(0, n, self.mini_batch):
                yield order[start : start + self.mini_batch]

    def _loss(self, logprobs, old_logprobs, advantages, mask, ref_logprobs) -> torch.Tensor:
        loss = self.policy_loss(logprobs, old_logprobs, advantages, mask, self.cfg, self.stats)
        if self.kl.placement == "loss" and self.suite.shared.kl_coef:
            kl = kl_estimate(logprobs, ref_logprobs, self.kl.estimator)
            loss = loss + self.suite.shared.kl_coef * self.stats.loss_mean(kl, mask)
        return loss

    def _critic_step(self, part: SequenceBatch, old_values, returns, mask, iteration: int) -> float:
        with self.run.autocast():
            values = critic_values(self.critic.module, part)
            loss = self.value_loss(values, old_values, returns, mask, self.cfg, self.stats)
        check_finite("value_loss", loss, iteration)
        self.critic.step(loss)
        return self.stats.scalar(loss.detach())

    def _metrics(self, ro: Rollout, old, estimate: Estimate, token_entropy, losses, grad_norms) -> dict:
        stats, mask = self.stats, ro.mask
        scores = stats.gather(ro.raw_scores)
        metrics = {
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl": stats.mean(sequence_kl(old, ro.ref_logprobs, mask)).item(),
            "policy_loss": sum(losses) / len(losses),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "entropy": stats.mean(token_entropy, mask).item(),
            "response_length": stats.mean(mask.sum(-1)).item(),
            "tokens": int(stats.total(ro.generated_tokens)),  # greedy answers included
            "sampled_tokens": int(stats.total(mask.sum())),
            "advantage_mean": stats.mean(estimate.advantages, mask).item(),
            "advantage_abs_mean": stats.mean(estimate.advantages.abs(), mask).item(),
        }
        if ro.raw_greedy_scores is not None:
            metrics["greedy_reward_mean"] = stats.mean(ro.raw_greedy_scores).item()
        if estimate.baseline is not None:
            metrics["baseline_reward_mean"] = stats.mean(estimate.baseline).item()
        return metrics

    def states(self) -> dict:
        """Model-state bytes per component: the trained models with their optimizers, the frozen scorers."""
        trained = {"policy": self.policy.state_bytes()}
        if self.critic is not None:
            trained["critic"] = self.critic.state_bytes()
        return {**trained, **frozen_states(self.models)}

    # -- the iterations ---------------------------------------------------------------------------------
    def step(self, iteration: int, prompts: list[str]) -> dict:
        one_update = self.epochs == 1 and (self.mini_batch is None or self.mini_batch >= len(prompts) * self.k)
        ro = self.rollouts.collect(prompts, iteration, samples_per_prompt=self.k,
                                   greedy_baseline=self.spec.greedy_baseline, policy_logprobs=not one_update)
        return self.update(ro, iteration)

    def train(self) -> dict:
        """Runs ``suite.iterations`` iterations, logging, timing and saving; returns the stage's summary figures."""
        run, suite, models = self.run, self.suite, self.models
        self.rollouts = RolloutEngine(run, models)
        sampler = PromptSampler(run, models.tokenizer)
        run.per_rank("shared.rollout_batch_size")
        iterations = suite.iterations
        synthetic = is_synthetic(suite) and not run.config.get("skip_heldout")
        eval_prompts = heldout_prompts(suite) if synthetic else []
        totals = OnlineTotals()
        engines = {"policy": self.policy, **({"critic": self.critic} if self.critic is not None else {})}
        first = run.resume(TrainingState(engines, {"prompts": sampler, "rollouts": self.rollouts, "totals": totals}),
                           iterations)
        summary: dict = {"iterations": iterations, "kl_treatment": self.kl.model_dump()}
        if synthetic:
            if first == 0:  # the SFT model's figure, with the very same greedy evaluation as the trained policy's
                totals.gold_before = gold_reward_of(self.policy.module, models.tokenizer, suite, eval_prompts)[
                    "heldout_gold_reward"]
            summary["heldout_gold_reward_before"] = totals.gold_before
        save_every = max(1, iterations // 4)
        # Prompts per iteration follow shared.rollout_batch_unit (rollout_batch_size / k when it counts samples).
        budget = suite.matched_budget(run.stage)
        run.manifest_extra["matched_budget"] = budget
        run.manifest_extra["kl_treatment"] = self.kl.model_dump()
        for step in range(first, iterations):
            start = time.perf_counter()
            metrics = self.step(step, sampler.next(budget["prompts_per_iteration"]))
            elapsed = time.perf_counter() - start
            phases = run.timer.pop()
            for name in ("reward_mean", "kl", "policy_loss", "value_loss"):
                if name in metrics:
                    check_finite(name, metrics[name], step)
            if step == first:
                run.component_bytes.update(self.states())  # after the first step: optimizer states exist
            if step > first or iterations == 1:  # the first step of each attempt pays one-off warm-up costs
                totals.step_times.append(elapsed)
                for name in totals.phases:
                    totals.phases[name] += phases.get(name, 0.0)
                totals.tokens += metrics["tokens"]
                totals.sampled += metrics["sampled_tokens"]
            totals.generated += metrics["tokens"]
            totals.rewards.append(metrics["reward_mean"])
            totals.kls.append(metrics["kl"])
            row = {**metrics, "generated_tokens": totals.generated, "time_step_s": elapsed,
                   "tokens_per_second": metrics["tokens"] / elapsed}
            row.update({f"time_{k}_s": phases.get(k, 0.0) for k in totals.phases})
            totals.last_eval = None
            if synthetic and suite.shared.heldout_eval_every and (step + 1) % suite.shared.heldout_eval_every == 0:
                totals.last_eval = gold_reward_of(self.policy.module, models.tokenizer, suite, eval_prompts)
                row.update(totals.last_eval)
            run.log(step, **row)
            if (step + 1) % save_every == 0:
                self.policy.save_pretrained(run.checkpoint_dir, models.tokenizer)
            run.end_iteration(step + 1)
        if iterations % save_every:
            self.policy.save_pretrained(run.checkpoint_dir, models.tokenizer)
        step_times, phase_totals, rewards, kls = totals.step_times, totals.phases, totals.rewards, totals.kls
        measured = max(len(step_times), 1)
        tail = rewards[-max(1, len(rewards) // 10):]  # the last 10% of steps
        kl_tail = kls[-len(tail):]
        summary.update(
            final_reward_mean=sum(tail) / len(tail),
            final_kl=sum(kl_tail) / len(kl_tail),  # the KL to the reference where training ended, beside its reward
            time_per_iteration_s=sum(step_times) / measured,
            time_split_s={k: v / measured for k, v in phase_totals.items()},
            tokens_per_second=totals.tokens / max(sum(step_times), 1e-9),
            sampled_tokens_per_second=totals.sampled / max(sum(step_times), 1e-9),
            generated_tokens=totals.generated,  # every step's, the first included: the quality-per-token denominator
            matched_budget=budget,
            # Generation cost per generated token (ms), the figure that compares rollout backends.
            generate_ms_per_token=1000 * phase_totals["generate"] / max(totals.tokens, 1),
            # The vLLM engine's start-up (one-off), weight syncs and memory; hf rollouts have no engine.
            rollout_engine=run.manifest_extra.get("rollout_engine", {"backend": "hf"}),
        )
        if synthetic:
            summary.update(totals.last_eval or gold_reward_of(self.policy.module, models.tokenizer, suite, eval_prompts))
        return summary

def train(run: StageRun) -> dict:
    """The stage entry of every online algorithm (``python -m trainers.<name>``)."""
    return OnlineTrainer(run).train()
