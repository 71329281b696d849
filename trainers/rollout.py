"""The rollout engine every online algorithm shares: prompts, generation and scoring.

An algorithm may draw k sampled answers per prompt (``samples_per_prompt``): prompt i's answers are rows
i*k .. i*k + k - 1 of the batch, so ``scores.view(-1, k)`` is one group per row. The score is the reward
model's, or that of a reward function when the suite names one (shared.reward_function); with
``shared.reward_normalize`` it is standardised with the running mean and std of every score seen so far.
Everything past the first eos is padding and is masked out of every sum. What an algorithm makes of a rollout
batch (advantages, losses, the KL) is the online loop's (trainers/online.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch

from remax_bench.core.data import load_prompts
from remax_bench.core.models import load_causal_lm, load_reward_model, load_tokenizer
from remax_bench.core.stage import StageError, StageRun, check_finite
from trainers.engine import build_engine, frozen_state_bytes, place_frozen, without_dropout
from trainers.sequences import (
    SequenceBatch,
    decode_responses,
    encode_pairs,
    entropy,
    forward_logits,
    generate,
    prompt_fits,
    response_logprobs,
    sequence_scores,
    token_logprobs,
)


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

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


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

    def state_dict(self) -> dict:
        """Where the sampler stands: its rng and what is left of the current pass."""
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


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
    token_entropy: torch.Tensor | None  # [n, R] entropy of pi at each sampled position (with old_logprobs)
    greedy_batch: SequenceBatch | None  # one greedy response per distinct prompt (ReMax's baseline)
    greedy_scores: torch.Tensor | None  # [n] the greedy score of each row's prompt, on the scale of ``scores``
    raw_greedy_scores: torch.Tensor | None
    generated_tokens: int  # every generated response token, greedy ones included
    samples_per_prompt: int = 1

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask


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

    def state_dict(self) -> dict:
        """The running reward statistics and the vLLM engine's request count (its sampling seeds follow it)."""
        return {"moments": self.moments.state_dict() if self.moments is not None else None,
                "vllm_calls": self.vllm.calls if self.vllm is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        if self.moments is not None:
            self.moments.load_state_dict(state["moments"])
        if self.vllm is not None:
            self.vllm.calls = state["vllm_calls"]
            # The engine holds the SFT weights it started from; the resumed policy's go in before its first rollout.
            self.synced_at = None

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
                    token_entropy = entropy(logits)
                    del logits
        # Each sampled row is centred by its own prompt's greedy answer: k rows share one.
        raw_scores, raw_greedy = (raw[:n], raw[n:].repeat_interleave(k)) if greedy_baseline else (raw, None)
        scores, greedy_scores = raw_scores, raw_greedy
        if self.moments is not None:
            # Statistics of the sampled scores only; the greedy baseline is put on the same scale.
            self.moments.update(run.stats.gather(raw_scores))  # the global batch's, the same on every rank
            scores = self.moments.normalise(raw_scores)
            greedy_scores = self.moments.normalise(raw_greedy) if greedy_baseline else None
        return Rollout(rows, sampled, scores, raw_scores, ref_logprobs, old_logprobs, token_entropy,
                       greedy_batch, greedy_scores, raw_greedy, generated_tokens, k)
