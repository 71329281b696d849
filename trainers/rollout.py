"""The rollout engine every online algorithm shares: prompts, generation, scoring, KL-penalised rewards, the loop.

An algorithm may draw k sampled answers per prompt (``samples_per_prompt``): prompt i's answers are rows
i*k .. i*k + k - 1 of the batch, so ``scores.view(-1, k)`` is one group per row. The score is the reward
model's, or that of a reward function when the suite names one (shared.reward_function).

Per-token reward of a sampled response a = (a_1..a_T) to prompt x:

    rew_t = -beta * (log pi(a_t) - log pi_ref(a_t))  +  [t == T] * clip(r(x, a))

Everything past the first eos is padding and is masked out of every sum. With ``shared.reward_normalize``
the score is first standardised with the running mean and std of all scores seen so far.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

from remax_bench.core.data import load_prompts
from remax_bench.core.models import load_causal_lm, load_reward_model, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, check_finite
from trainers.engine import build_engine, frozen_state_bytes, place_frozen, without_dropout
from trainers.heldout import gold_reward_of, heldout_prompts, is_synthetic
from trainers.sequences import (
    SequenceBatch,
    decode_responses,
    encode_pairs,
    entropy,
    forward_logits,
    generate,
    masked_mean,
    prompt_fits,
    response_logprobs,
    sequence_scores,
    token_logprobs,
)


# -- the math -------------------------------------------------------------------------------------
def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-beta * (log pi - log pi_ref) per token: the KL term folded into the reward."""
    return -kl_coef * (logprobs - ref_logprobs)


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Mean over responses of the summed log-ratio: the usual sample estimate of KL(pi || pi_ref)."""
    return ((logprobs - ref_logprobs) * response_mask).sum(-1).mean().item()


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last response token (its eos, or the length limit)."""
    return (response_mask.sum(-1).long() - 1).clamp(min=0)


def kl_penalised_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         response_mask: torch.Tensor, kl_coef: float, reward_clip: float | None) -> torch.Tensor:
    """Per-token rewards [B, R]: each token's KL penalty, plus the (clipped) score on its last token."""
    rewards = kl_penalty(logprobs, ref_logprobs, kl_coef) * response_mask
    if reward_clip is not None:
        scores = scores.clamp(-reward_clip, reward_clip)
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(response_mask)] += scores
    return rewards


class RunningMoments:
    """Running mean and std of reward-model scores (shared.reward_normalize)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        for v in values.tolist():  # Welford's update; batches are small
            self.count += 1
            delta = v - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / max(self.std, 1e-6)


# -- models and prompts ---------------------------------------------------------------------------
@dataclass
class OnlineModels:
    tokenizer: object
    policy: object  # engine: .module, .step(loss), .state_bytes(), .save_pretrained()
    reference: torch.nn.Module
    reward: torch.nn.Module | None  # None when a reward function scores instead
    reward_tokenizer: object
    same_tokenizer: bool
    reward_function: Callable[[str, str], float] | None = None


def load_online_models(run: StageRun) -> OnlineModels:
    """Trained policy and frozen reference from the SFT checkpoint; frozen reward model from its own."""
    sft, reward_dir = run.inputs.get("sft"), run.inputs.get("reward_model")
    suite = run.suite
    function_spec = suite.shared.reward_function
    if not sft or not (reward_dir or function_spec):
        raise StageError(f"{run.stage} needs an SFT checkpoint and a reward model (inputs.sft, inputs.reward_model)"
                         " or shared.reward_function")
    tokenizer = load_tokenizer(sft)
    policy = run.record_dtype("policy", load_causal_lm(sft, seed=run.seed).to(run.device))  # fp32 master weights
    without_dropout(policy)
    engine = build_engine(policy, suite.shared.learning_rate, suite, run.per_rank("shared.train_batch_size"))
    # Scoring-only models may run in bf16 outright; the trained ones keep fp32 master weights.
    frozen_precision = suite.shared.precision
    per_rank = run.per_rank("shared.rollout_batch_size")
    reference = run.record_dtype("reference", load_causal_lm(sft, seed=run.seed, precision=frozen_precision))
    reference = place_frozen(reference.to(run.device), suite, per_rank)
    if function_spec:
        from remax_bench.core.rewards import load_reward_function

        return OnlineModels(tokenizer, engine, reference, None, tokenizer, True, load_reward_function(function_spec))
    reward = run.record_dtype("reward", load_reward_model(reward_dir, seed=run.seed, precision=frozen_precision))
    reward = place_frozen(reward.to(run.device), suite, per_rank)
    reward_tokenizer = load_tokenizer(reward_dir)
    same = reward_tokenizer.get_vocab() == tokenizer.get_vocab()
    return OnlineModels(tokenizer, engine, reference, reward, reward_tokenizer, same)


def synced_generation(run: StageRun) -> bool:
    """Whether ``generate`` must keep every rank stepping until all ranks are done.

    Under ZeRO-3 every forward all-gathers the partitioned parameters, so all ranks must run the same number
    of forwards: a rank whose answers end early would otherwise leave the others waiting in a gather forever.
    transformers' ``synced_gpus`` keeps finished ranks running dummy forwards until every rank is done (the
    ReMax authors' DeepSpeed-Chat code passes it under ZeRO-3 too)."""
    ds = run.suite.runtime.deepspeed
    return run.world_size > 1 and ds.enabled and ds.zero_stage == 3


def frozen_states(models: OnlineModels) -> dict:
    """Bytes of the scoring-only models: parameters only (no gradients, no optimizer)."""
    states = {"reference": frozen_state_bytes(models.reference)}
    if models.reward is not None:
        states["reward"] = frozen_state_bytes(models.reward)
    return states


class PromptSampler:
    """Shuffled passes over the RL prompts (data.prompts), seeded; prompts over the length limit dropped."""

    def __init__(self, run: StageRun, tokenizer):
        suite = run.suite
        rows = load_prompts(suite.data.prompts, suite.data.synthetic, split_kind="train")
        limit = suite.shared.max_prompt_length
        self.run = run
        self.prompts = [r["prompt"] for r in rows if prompt_fits(tokenizer, r["prompt"], limit)]
        if len(self.prompts) < len(rows):
            run.warn(f"{len(rows) - len(self.prompts)} of {len(rows)} prompts exceed shared.max_prompt_length="
                     f"{limit} tokens and were dropped")
        if not self.prompts:
            raise StageError(f"data.prompts has no prompt within shared.max_prompt_length={limit}")
        # Every rank shuffles with the same seed and draws the same global batch, then keeps its own slice:
        # N ranks together generate for exactly the prompts one process would.
        self.rng = random.Random(run.seed)
        self.order: list[int] = []

    def next(self, n: int) -> list[str]:
        """This rank's share of the next global batch of ``n`` prompts."""
        drawn = []
        while len(drawn) < n:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            drawn.append(self.order.pop())
        return [self.prompts[i] for i in self.run.shard("data.prompts", drawn)]


# -- one rollout ------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One batch of experience: n sampled responses (k per prompt), their scores and log-probs, in the shared
    layout. ``prompts`` has one entry per row (each prompt k times); greedy scores are per row too (the k
    answers of a prompt share its one greedy answer)."""

    prompts: list[str]
    batch: SequenceBatch  # sampled responses [n, P + R]
    scores: torch.Tensor  # [n] reward-model scores, normalised when shared.reward_normalize (not clipped)
    raw_scores: torch.Tensor  # [n] reward-model scores as the reward model gave them
    ref_logprobs: torch.Tensor  # [n, R] log pi_ref(a_t)
    old_logprobs: torch.Tensor | None  # [n, R] log pi(a_t) at generation time; None when the trainer takes them
    entropy: float | None  # mean per-token entropy of pi on the sampled tokens (with old_logprobs)
    greedy_batch: SequenceBatch | None  # one greedy response per distinct prompt (ReMax's baseline)
    greedy_scores: torch.Tensor | None  # [n] the greedy score of each row's prompt, on the scale of ``scores``
    raw_greedy_scores: torch.Tensor | None
    generated_tokens: int  # every generated response token, greedy ones included
    samples_per_prompt: int = 1

    def groups(self, values: torch.Tensor) -> torch.Tensor:
        """[n] per-row values as [n / k, k]: one row per prompt."""
        return values.view(-1, self.samples_per_prompt)

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask

    def rewards(self, kl_coef: float, reward_clip: float | None) -> torch.Tensor:
        """Per-token KL-penalised rewards [n, R] (needs old_logprobs)."""
        return kl_penalised_rewards(self.scores, self.old_logprobs, self.ref_logprobs, self.mask, kl_coef, reward_clip)


class RolloutEngine:
    """Generates and scores rollout batches; the same code for every online algorithm."""

    def __init__(self, run: StageRun, models: OnlineModels):
        self.run, self.models = run, models
        self.moments = RunningMoments() if run.suite.shared.reward_normalize else None
        # shared.rollout_backend vllm: a vLLM engine in this process generates, and takes the policy's weights
        # after every optimizer step (trainers/vllm_rollout.py); hf: transformers' generate on the policy itself.
        self.vllm = None
        if run.suite.shared.rollout_backend == "vllm":
            from trainers.vllm_rollout import VLLMRollouts

            budget = run.suite.matched_budget(run.stage)
            rows = budget["samples_per_iteration"] + budget["greedy_per_iteration"]  # one generate call's rows
            self.vllm = VLLMRollouts(run.inputs["sft"], models.tokenizer, run.suite.shared, run.seed,
                                     max(1, math.ceil(rows / run.world_size)), run.device)
            self.synced_at = models.policy.steps  # the engine starts from the policy's own checkpoint
            run.manifest_extra["rollout_engine"] = self.vllm.record()  # kept current: the summary reads it too

    def generate(self, prompts: list[str], greedy=False) -> SequenceBatch:
        shared, models = self.run.suite.shared, self.models
        if self.vllm is not None:
            if models.policy.steps != self.synced_at:  # the policy moved since the engine last took its weights
                with self.run.timer.phase("sync"):
                    # The model itself, not DeepSpeed's wrapper: the engine wants the checkpoint's names.
                    self.vllm.sync(getattr(models.policy.module, "module", models.policy.module))
                self.synced_at = models.policy.steps
                self.run.manifest_extra["rollout_engine"] = self.vllm.record()
            with self.run.timer.phase("generate"):
                batch = self.vllm.generate(prompts, greedy).to(self.run.device)
        else:
            with self.run.timer.phase("generate"):
                batch = generate(models.policy.module, models.tokenizer, prompts, shared.max_prompt_length,
                                 shared.max_response_length, temperature=shared.generation.temperature,
                                 top_p=shared.generation.top_p, top_k=shared.generation.top_k, greedy=greedy,
                                 synced_gpus=synced_generation(self.run))
        self.run.generated_widths.append(int(batch.response_ids.shape[1]))
        return batch

    @torch.no_grad()
    def reward_scores(self, prompts: list[str], batch: SequenceBatch) -> torch.Tensor:
        """Reward-model scores of whole responses; re-tokenised when the reward model has its own vocabulary."""
        run, models = self.run, self.models
        if models.reward_function is not None:
            from remax_bench.core.rewards import score_all

            texts = decode_responses(models.tokenizer, batch)
            return torch.tensor(score_all(models.reward_function, prompts, texts), device=run.device)
        with run.autocast():
            if models.same_tokenizer:
                return sequence_scores(models.reward, batch)
            shared = run.suite.shared
            texts = decode_responses(models.tokenizer, batch)
            rescored = encode_pairs(models.reward_tokenizer, prompts, texts, shared.max_prompt_length,
                                    shared.max_response_length).to(run.device)
            return sequence_scores(models.reward, rescored)

    def _all_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """The values of every rank's share of the global batch (ranks hold equal shares), in rank order: the
        running reward statistics are those of the global batch, the same on every rank."""
        if self.run.world_size == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.run.world_size)]
        torch.distributed.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def collect(self, prompts: list[str], step: int, *, samples_per_prompt: int = 1, greedy_baseline: bool = False,
                policy_logprobs: bool = True) -> Rollout:
        """Sample k = ``samples_per_prompt`` responses per prompt (and, with ``greedy_baseline``, one greedy
        response per prompt too, in the same batched pass), then score: reward, reference log-probs and
        (``policy_logprobs``) the policy's own log-probs under no_grad, the "old" log-probs of PPO's ratio."""
        run, k = self.run, samples_per_prompt
        rows = [p for p in prompts for _ in range(k)]  # prompt i's answers are rows i*k .. i*k + k - 1
        n, m = len(rows), len(prompts)
        if greedy_baseline:
            # The sampled rows first, then one greedy row per prompt: one generate call for both.
            greedy = torch.tensor([False] * n + [True] * m)
            both = self.generate(rows + prompts, greedy=greedy)
            sampled, greedy_batch = both.select(slice(0, n)), both.select(slice(n, n + m))
        else:
            both = sampled = self.generate(rows)
            greedy_batch = None
        generated_tokens = int(both.response_mask.sum().item())
        with run.timer.phase("score"), torch.no_grad():
            raw = self.reward_scores(rows + prompts if greedy_baseline else rows, both)
            check_finite("reward-model score", raw, step)
            with run.autocast():
                ref_logprobs = response_logprobs(self.models.reference, sampled)
                old_logprobs, token_entropy = None, None
                if policy_logprobs:
                    logits = forward_logits(self.models.policy.module, sampled)
                    old_logprobs = token_logprobs(logits, sampled.response_ids)
                    token_entropy = masked_mean(entropy(logits), sampled.response_mask).item()
                    del logits
        # Each sampled row is centred by its own prompt's greedy answer: k rows share one.
        raw_scores, raw_greedy = (raw[:n], raw[n:].repeat_interleave(k)) if greedy_baseline else (raw, None)
        scores, greedy_scores = raw_scores, raw_greedy
        if self.moments is not None:
            # Statistics of the sampled scores only; the greedy baseline is put on the same scale.
            self.moments.update(self._all_ranks(raw_scores))
            scores = self.moments.normalise(raw_scores)
            greedy_scores = self.moments.normalise(raw_greedy) if greedy_baseline else None
        return Rollout(rows, sampled, scores, raw_scores, ref_logprobs, old_logprobs, token_entropy,
                       greedy_batch, greedy_scores, raw_greedy, generated_tokens, k)


# -- the loop ---------------------------------------------------------------------------------------
# What every online algorithm logs each step, so curves compare across algorithms; each adds its own on top
# (PPO: value_loss, approx_kl, clipfrac, explained_variance; ReMax: baseline_reward_mean, advantage_mean).
SHARED_DIAGNOSTICS = ("reward_mean", "reward_std", "kl", "policy_loss", "grad_norm", "entropy", "response_length",
                      "tokens", "sampled_tokens")


def online_loop(run: StageRun, models: OnlineModels, step_fn: Callable[[int, list[str]], dict],
                extra_states: Callable[[], dict] | None = None) -> dict:
    """Runs ``suite.iterations`` steps of ``step_fn`` (one rollout batch each), logging, timing and saving.

    step_fn(iteration, prompts) returns the step's metrics (reward_mean, kl, losses, response_length,
    ``tokens``: every generated response token, and ``sampled_tokens``: those of the sampled answers the
    loss trains on; they differ for ReMax, whose greedy answers are generated too). It must check its loss
    with check_finite before the optimizer step, so a non-finite loss never reaches the weights and the last
    saved checkpoint stays good.
    """
    suite = run.suite
    sampler = PromptSampler(run, models.tokenizer)
    run.per_rank("shared.rollout_batch_size")
    iterations = suite.iterations
    synthetic = is_synthetic(suite) and not run.config.get("skip_heldout")
    eval_prompts = heldout_prompts(suite) if synthetic else []
    summary: dict = {"iterations": iterations}
    if synthetic:
        # The SFT model's figure, with the very same greedy evaluation as the trained policy's.
        before = gold_reward_of(models.policy.module, models.tokenizer, suite, eval_prompts)
        summary["heldout_gold_reward_before"] = before["heldout_gold_reward"]
    save_every = max(1, iterations // 4)
    step_times, phase_totals = [], {"generate": 0.0, "sync": 0.0, "score": 0.0, "train": 0.0}
    tokens_total = sampled_total = 0
    rewards, last_eval = [], None
    # Prompts per iteration follow shared.rollout_batch_unit (rollout_batch_size / k when it counts samples).
    budget = suite.matched_budget(run.stage)
    run.manifest_extra["matched_budget"] = budget
    generated = 0
    for step in range(iterations):
        start = time.perf_counter()
        metrics = step_fn(step, sampler.next(budget["prompts_per_iteration"]))
        metrics["reward_mean"] = run.mean_over_ranks(metrics["reward_mean"])  # over the global batch
        elapsed = time.perf_counter() - start
        phases = run.timer.pop()
        missing = [name for name in SHARED_DIAGNOSTICS if name not in metrics]
        if missing:
            raise StageError(f"{run.stage} logs no {', '.join(missing)}: every online algorithm logs "
                             f"{', '.join(SHARED_DIAGNOSTICS)}")
        for name in ("reward_mean", "kl", "policy_loss", "value_loss"):
            if name in metrics:
                check_finite(name, metrics[name], step)
        if step == 0:
            # After the first optimizer step, so the optimizer states exist and are counted.
            run.component_bytes.update(extra_states() if extra_states else {})
        if step > 0 or iterations == 1:  # the first step pays one-off warm-up costs
            step_times.append(elapsed)
            for name in phase_totals:
                phase_totals[name] += phases.get(name, 0.0)
            tokens_total += metrics.get("tokens", 0)
            sampled_total += metrics.get("sampled_tokens", 0)
        generated += metrics.get("tokens", 0)
        rewards.append(metrics["reward_mean"])
        row = {**metrics, "generated_tokens": generated, "time_step_s": elapsed,
               "tokens_per_second": metrics.get("tokens", 0) / elapsed}
        row.update({f"time_{k}_s": phases.get(k, 0.0) for k in phase_totals})
        last_eval = None
        if synthetic and suite.shared.heldout_eval_every and (step + 1) % suite.shared.heldout_eval_every == 0:
            last_eval = gold_reward_of(models.policy.module, models.tokenizer, suite, eval_prompts)
            row.update(last_eval)
        run.log(step, **row)
        if (step + 1) % save_every == 0:
            models.policy.save_pretrained(run.checkpoint_dir, models.tokenizer)
    if iterations % save_every:
        models.policy.save_pretrained(run.checkpoint_dir, models.tokenizer)
    measured = max(len(step_times), 1)
    tail = rewards[-max(1, len(rewards) // 10):]  # the last 10% of steps
    summary.update(
        final_reward_mean=sum(tail) / len(tail),
        time_per_iteration_s=sum(step_times) / measured,
        time_split_s={k: v / measured for k, v in phase_totals.items()},
        tokens_per_second=tokens_total / max(sum(step_times), 1e-9),
        sampled_tokens_per_second=sampled_total / max(sum(step_times), 1e-9),
        generated_tokens=generated,  # every step's, the first included: the quality-per-token denominator
        matched_budget=budget,
        # Generation cost per generated token (ms), the figure that compares rollout backends.
        generate_ms_per_token=1000 * phase_totals["generate"] / max(tokens_total, 1),
        # The vLLM engine's start-up (one-off), weight syncs and memory; hf rollouts have no engine.
        rollout_engine=run.manifest_extra.get("rollout_engine", {"backend": "hf"}),
    )
    if synthetic:
        summary.update(last_eval or gold_reward_of(models.policy.module, models.tokenizer, suite, eval_prompts))
    return summary
