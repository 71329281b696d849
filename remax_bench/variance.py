"""`remax-bench variance`: the variance of the policy-gradient estimate under each baseline, measured.

The ReMax paper argues that the greedy answer's reward is a baseline that cuts REINFORCE's variance. Here
every estimator is run on the same policy and the same prompt stream, R times, and the spread of the
gradient vectors it produces is measured:

    g = (1/n) sum_i A_i * grad sum_t log pi(a_it | x_i)            (n sampled answers in one batch)

Every critic-free algorithm of the registry is an estimator here, through its own ``advantages`` (the very function
its stage trains with; trainers/<name>.py): REINFORCE (no baseline), ReMax (greedy baseline; k answers share one
greedy answer), GRPO ((r - mean) / std within the group), RLOO (leave-one-out mean) and REINFORCE++ (group mean,
then whitened over the batch), at k answers per prompt, and at k = 1 too where the algorithm allows it.

Every batch costs the same number of generated answers (``answers``): an estimator that decodes k sampled answers
and one greedy answer per prompt sees answers / (k + 1) prompts. The figure is the trace of the covariance of g
over the R batches (the sum over parameters of each coordinate's variance), with ||E g||^2 beside it (estimated
without bias as ||mean g||^2 - trace / R): GRPO divides by the group's std, which rescales g, so the ratio trace /
||mean g||^2 (noise per unit of signal) is the scale-free comparison. The policy is the starting point of RL (the
SFT model), where pi = pi_ref, so the KL term is zero and left out.
"""

from __future__ import annotations

import importlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from remax_bench.core import algorithms
from remax_bench.core.algorithms import KL
from remax_bench.core.global_batch import GlobalBatch
from remax_bench.core.rewards import load_reward_function, score_all
from trainers.online import Experience
from trainers.sequences import decode_responses, generate, response_logprobs

EPS = 1e-6


@dataclass(frozen=True)
class Estimator:
    name: str  # the algorithm
    label: str
    k: int  # sampled answers per prompt
    greedy: bool = False  # also decodes one greedy answer per prompt

    @property
    def key(self) -> str:
        return f"{self.name}_k{self.k}"

    @property
    def cost_per_prompt(self) -> int:
        return self.k + (1 if self.greedy else 0)


def _allows(block_type, k: int) -> bool:
    try:
        block_type(samples_per_prompt=k)
        return True
    except ValidationError:
        return False


def estimators(k: int) -> list[Estimator]:
    """Every critic-free online algorithm at k answers per prompt, and at k = 1 where its block allows it."""
    out = []
    for spec in algorithms.REGISTRY.values():
        if not spec.online or spec.critic:
            continue
        for ks in sorted({1, k}):
            if _allows(spec.block, ks):
                out.append(Estimator(spec.name, f"{spec.label} (k = {ks})", ks, spec.greedy_baseline))
    return out


def advantages(est: Estimator, scores: torch.Tensor, mask: torch.Tensor, greedy_scores: torch.Tensor | None = None,
               block=None):
    """The Estimate (advantages [n, R], the baseline where there is one) of the sampled answers (rows grouped k per
    prompt) under one algorithm's estimator. At the starting policy pi = pi_ref, so the KL term is zero; scores are
    not clipped."""
    spec = algorithms.get(est.name)
    block = (block or spec.block()).model_copy(update={"samples_per_prompt": est.k})
    zeros = torch.zeros_like(mask)
    greedy = greedy_scores.repeat_interleave(est.k) if greedy_scores is not None else None
    exp = Experience(scores, greedy, zeros, zeros, mask, est.k, KL(), 0.0, None)
    return importlib.import_module(spec.module).advantages(exp, block, GlobalBatch())


class Moments:
    """Running sum and sum of squares of gradient vectors (float64): trace of the covariance without storing them."""

    def __init__(self):
        self.n, self.total, self.squares = 0, None, None

    def add(self, g: torch.Tensor) -> None:
        g = g.double()
        self.total = g.clone() if self.total is None else self.total + g
        self.squares = g * g if self.squares is None else self.squares + g * g
        self.n += 1

    def trace_cov(self) -> float:
        """sum_j unbiased variance of coordinate j over the n vectors."""
        mean = self.total / self.n
        return float(((self.squares - self.n * mean * mean).sum() / (self.n - 1)).item())

    def mean_norm_sq(self) -> float:
        """Unbiased ||E g||^2: ||mean||^2 overstates it by trace(Cov) / n, the noise left in the mean."""
        mean = self.total / self.n
        return float((mean * mean).sum().item()) - self.trace_cov() / self.n


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def measure(model, tokenizer, prompts: list[str], reward_fn, *, answers: int = 32, k: int = 4, repeats: int = 16,
            max_prompt_length: int = 64, max_response_length: int = 24, temperature: float = 1.0,
            seed: int = 0, blocks: dict | None = None, echo=lambda *_: None) -> list[dict]:
    """One row per estimator: trace of the gradient covariance over ``repeats`` batches of ``answers``
    generated answers each, ||mean g||^2, their ratio, the mean reward and the generated tokens per batch."""
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to estimate a variance, got {repeats}")
    if k < 2:
        raise ValueError(f"k must be at least 2 (the group estimators need two answers per prompt), got {k}")
    if answers < k + 1:
        raise ValueError(f"answers must be at least k + 1 = {k + 1} (one group and its greedy answer), got {answers}")
    rows = []
    model.train()
    for est in estimators(k):
        n_prompts = answers // est.cost_per_prompt
        moments, tokens, rewards = Moments(), [], []
        for repeat in range(repeats):
            # Every estimator draws the same prompt stream (repeat r: the same shuffled prompts, as many as it
            # can afford) and the same sampling seed.
            rng = random.Random(seed * 100_003 + repeat)
            chosen = rng.sample(prompts, n_prompts) if n_prompts <= len(prompts) else rng.choices(prompts, k=n_prompts)
            torch.manual_seed(seed * 100_003 + repeat)
            rows_in = [p for p in chosen for _ in range(est.k)]
            greedy = torch.tensor([False] * len(rows_in) + [True] * len(chosen)) if est.greedy else False
            batch = generate(model, tokenizer, rows_in + (chosen if est.greedy else []), max_prompt_length,
                             max_response_length, temperature=temperature, greedy=greedy)
            tokens.append(int(batch.response_mask.sum().item()))
            texts = decode_responses(tokenizer, batch)
            scores = torch.tensor(score_all(reward_fn, rows_in + (chosen if est.greedy else []), texts))
            n = len(rows_in)
            sampled = batch.select(slice(0, n))
            estimate = advantages(est, scores[:n], sampled.response_mask, scores[n:] if est.greedy else None,
                                  (blocks or {}).get(est.name))
            adv, has_baseline = estimate.advantages, estimate.baseline is not None
            rewards.append(scores[:n].mean().item())
            model.zero_grad(set_to_none=True)
            logprobs = response_logprobs(model, sampled)
            surrogate = (adv * logprobs * sampled.response_mask).sum() / n
            surrogate.backward()
            moments.add(_flat_grad(model))
        model.zero_grad(set_to_none=True)
        trace, signal = moments.trace_cov(), moments.mean_norm_sq()
        rows.append({"estimator": est.key, "algorithm": est.name, "label": est.label, "baseline": has_baseline,
                     "samples_per_prompt": est.k,
                     "greedy_per_prompt": int(est.greedy), "prompts_per_batch": n_prompts,
                     "answers_per_batch": n_prompts * est.cost_per_prompt, "repeats": repeats,
                     "generated_tokens_per_batch": sum(tokens) / len(tokens),
                     "reward_mean": sum(rewards) / len(rewards), "trace_cov": trace, "mean_grad_norm_sq": signal,
                     # no signal above the noise of the mean: the ratio is unbounded (more repeats needed)
                     "noise_to_signal": trace / signal if signal > 0 else math.inf})
        echo(f"  {est.label:<36} trace(Cov) {trace:.4g}  ||mean g||^2 {signal:.4g}")
    # The reference: an estimator without a baseline at one answer per prompt (REINFORCE).
    none = next(r for r in rows if not r["baseline"] and r["samples_per_prompt"] == 1)
    for row in rows:
        row["trace_cov_vs_none"] = row["trace_cov"] / none["trace_cov"] if none["trace_cov"] > 0 else math.nan
    return rows


def run_variance(suite, checkpoint: str, out: Path, *, answers: int = 32, k: int = 4, repeats: int = 16,
                 reward: str | None = None, seed: int = 0, echo=print) -> dict:
    """Measure on ``checkpoint`` (a policy dir or tiny: spec) with the suite's RL prompts; write variance.json,
    variance.csv and variance.png into ``out``."""
    import pandas as pd

    from remax_bench.core.data import load_prompts
    from remax_bench.core.models import load_causal_lm, load_tokenizer

    torch.manual_seed(seed)
    shared = suite.shared
    spec = reward or shared.reward_function or "gold"
    reward_fn = load_reward_function(spec)
    model, tokenizer = load_causal_lm(checkpoint, seed=seed), load_tokenizer(checkpoint)
    prompts = [r["prompt"] for r in load_prompts(suite.data.prompts, suite.data.synthetic, split_kind="train")]
    echo(f"variance: {checkpoint}, {repeats} batches of {answers} generated answers per estimator, k = {k}, "
         f"reward {spec}")
    rows = measure(model, tokenizer, prompts, reward_fn, answers=answers, k=k, repeats=repeats,
                   max_prompt_length=shared.max_prompt_length, max_response_length=shared.max_response_length,
                   temperature=shared.generation.temperature, seed=seed,
                   blocks={name: getattr(suite, name) for name in algorithms.NAMES}, echo=echo)
    out.mkdir(parents=True, exist_ok=True)
    record = {"suite": suite.name, "checkpoint": checkpoint, "reward": spec, "answers": answers, "k": k,
              "repeats": repeats, "seed": seed, "threads": torch.get_num_threads(), "rows": rows}
    (out / "variance.json").write_text(json.dumps(record, indent=2))
    pd.DataFrame(rows).to_csv(out / "variance.csv", index=False, float_format="%.6g")
    plot_variance(rows, out / "variance.png")
    return record


def plot_variance(rows: list[dict], path: Path, dpi: int = 110) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [r["label"] for r in rows]
    for ax, key, title in ((axes[0], "trace_cov", "trace of Cov(g)"),
                           (axes[1], "noise_to_signal", "trace Cov(g) / ||mean g||^2")):
        # an unbounded ratio (no signal above the noise of the mean) is left blank rather than drawn
        values = [r[key] if math.isfinite(r[key]) and r[key] > 0 else 0.0 for r in rows]
        ax.barh(labels, values, color="#d62728")
        if any(values):
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    axes[1].tick_params(labelleft=False)
    fig.suptitle(f"Policy-gradient variance at {rows[0]['answers_per_batch']} generated answers per batch "
                 f"({rows[0]['repeats']} batches each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def variance_markdown(record: dict) -> list[str]:
    """The report's section: a table of the rows of variance.json."""
    lines = ["| estimator | prompts × (k + greedy) | tokens / batch | mean reward | trace Cov(g) | vs no baseline "
             "| trace / ‖mean g‖² |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        lines.append(f"| {r['label']} | {r['prompts_per_batch']} × ({r['samples_per_prompt']} + "
                     f"{r['greedy_per_prompt']}) | {r['generated_tokens_per_batch']:.0f} | {r['reward_mean']:.3f} | "
                     f"{r['trace_cov']:.3g} | {r['trace_cov_vs_none']:.2f}× | {r['noise_to_signal']:.3g} |")
    return lines
