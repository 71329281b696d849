"""The shared rollout engine and the loop's KL rewards: by hand, prompt filtering, and one real rollout batch."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from remax_bench.core.algorithms import KL
from remax_bench.core.models import load_causal_lm, load_reward_model, load_tokenizer, save_pretrained
from remax_bench.core.stage import StageError, StageRun
from remax_bench.core.suite_file import load_suite_text
from trainers.online import Experience
from trainers.policy_gradient import at_last_token, last_token_index, sequence_kl
from trainers.rollout import PromptSampler, RolloutEngine, RunningMoments, load_online_models
from trainers.sequences import generate, response_logprobs, sequence_scores

T = torch.tensor
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"

# Row 0 stops after 2 tokens (eos in the middle of the batch); row 1 runs to the length limit.
# Padding positions hold garbage log-probs that must not leak into any sum.
LOGP = T([[-1.0, -0.5, -3.0, -3.0], [-2.0, -1.0, -0.5, -0.25]])
REF = T([[-1.5, -0.5, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
MASK = T([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, reward_clip):
    """Each token's KL reward (k1, summed into the return) plus the clipped score on its last token, as PPO's GAE
    and every return-to-go see them."""
    exp = Experience(scores, None, logprobs, ref_logprobs, mask, 1, KL(), kl_coef, reward_clip)
    return exp.kl_in_return() + at_last_token(exp.clip(scores), mask)


def test_kl_penalised_rewards_by_hand():
    # log-ratio: row 0 [0.5, 0, -2, -2], row 1 [-1, 0, 0.5, 0.75];  -0.2 * ratio, masked:
    #   row 0 [-0.1, 0, 0, 0],  row 1 [0.2, 0, -0.1, -0.15]
    # scores [3, -8], clipped to +-5 -> [3, -5], each on its own row's last token (index 1 and 3):
    #   row 0 [-0.1, 3.0, 0, 0],  row 1 [0.2, 0, -0.1, -5.15]
    rewards = kl_penalised_rewards(T([3.0, -8.0]), LOGP, REF, MASK, kl_coef=0.2, reward_clip=5.0)
    assert torch.allclose(rewards, T([[-0.1, 3.0, 0.0, 0.0], [0.2, 0.0, -0.1, -5.15]]))
    # no clipping: -0.15 - 8 = -8.15 on row 1's last token
    rewards = kl_penalised_rewards(T([3.0, -8.0]), LOGP, REF, MASK, kl_coef=0.2, reward_clip=None)
    assert rewards[1, 3].item() == pytest.approx(-8.15)
    # beta = 0: only the score, only on the last token
    rewards = kl_penalised_rewards(T([3.0, -8.0]), LOGP, REF, MASK, kl_coef=0.0, reward_clip=None)
    assert torch.equal(rewards, T([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, -8.0]]))


def test_last_token_and_kl_estimate_respect_the_mask():
    # a one-token response (just eos) has its last token at index 0
    assert last_token_index(T([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])).tolist() == [1, 3, 0]
    # summed masked log-ratios: row 0 0.5 + 0 = 0.5, row 1 -1 + 0 + 0.5 + 0.75 = 0.25; mean 0.375
    assert sequence_kl(LOGP, REF, MASK).mean().item() == pytest.approx(0.375)


def test_running_moments_standardise_with_the_sample_std():
    moments = RunningMoments()
    assert moments.std == 1.0  # nothing seen yet: leave scores as they are
    moments.update(T([1.0, 2.0]))
    moments.update(T([3.0]))
    # mean 2, sample variance ((1-2)^2 + 0 + (3-2)^2) / 2 = 1 -> (4 - 2) / 1 = 2, (0 - 2) / 1 = -2
    assert moments.mean == pytest.approx(2.0) and moments.std == pytest.approx(1.0)
    assert torch.allclose(moments.normalise(T([4.0, 0.0])), T([2.0, -2.0]))


def _suite(**edits):
    data = yaml.safe_load(NANO.read_text())
    for block, values in edits.items():
        data[block].update(values)
    return load_suite_text(yaml.safe_dump(data))


def test_prompts_over_the_limit_are_dropped_with_a_warning_and_none_left_is_an_error(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "reverse: abc"}) + "\n" + json.dumps({"prompt": "x" * 200}) + "\n")
    warnings = []
    run = SimpleNamespace(suite=_suite(data={"prompts": str(prompts)}), seed=0, rank=0, warn=warnings.append,
                          shard=lambda name, indices: indices)  # one process: the whole global batch
    sampler = PromptSampler(run, load_tokenizer("tiny:nano"))
    assert sampler.prompts == ["reverse: abc"] and "1 of 2 prompts exceed" in warnings[0]
    assert sampler.next(3) == ["reverse: abc"] * 3  # passes repeat when the batch is larger than the set
    run = SimpleNamespace(suite=_suite(data={"prompts": str(prompts)}, shared={"max_prompt_length": 8}), seed=0, rank=0,
                          warn=warnings.append)
    with pytest.raises(StageError, match="no prompt within shared.max_prompt_length=8"):
        PromptSampler(run, load_tokenizer("tiny:nano"))


def _run(tmp_path, **shared) -> StageRun:
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    save_pretrained(load_causal_lm("tiny:nano", seed=3), load_tokenizer("tiny:nano"), sft)
    save_pretrained(load_reward_model(str(sft), seed=4, new_head=True), load_tokenizer(str(sft)), rm)
    config = {"stage": "remax", "seed": 0, "suite": _suite(shared=shared).resolved(),
              "inputs": {"sft": str(sft), "reward_model": str(rm)}}
    return StageRun("remax", config, tmp_path / "out")


def test_one_rollout_batch_samples_greedy_in_the_same_pass_and_scores_it(tmp_path):
    run = _run(tmp_path, reward_clip=0.01)
    models = load_online_models(run)
    engine = RolloutEngine(run, models)
    prompts = ["reverse: abc", "uppercase: hello", "sort: dcba"]
    torch.manual_seed(0)
    ro = engine.collect(prompts, step=0, greedy_baseline=True)
    n, shared = len(prompts), run.suite.shared
    # The greedy half of the joint pass is exactly what an all-greedy generate call gives.
    alone = generate(models.policy.module, models.tokenizer, prompts, shared.max_prompt_length,
                     shared.max_response_length, greedy=True)
    width = alone.response_ids.shape[1]
    assert torch.equal(ro.greedy_batch.response_ids[:, :width], alone.response_ids)
    assert torch.equal(ro.greedy_batch.response_mask[:, :width], alone.response_mask)
    assert ro.greedy_batch.response_mask[:, width:].sum() == 0
    assert torch.allclose(ro.greedy_scores, sequence_scores(models.reward, alone), atol=1e-5)
    # Scores, reference log-probs and old log-probs are those of the sampled rows.
    assert torch.allclose(ro.scores, sequence_scores(models.reward, ro.batch), atol=1e-5)
    assert torch.allclose(ro.ref_logprobs, response_logprobs(models.reference, ro.batch), atol=1e-5)
    # Before any update the policy is the reference: no KL, so each row's reward is its clipped score
    # (+-0.01 here) on its last token and zero everywhere else.
    assert torch.allclose(ro.old_logprobs, ro.ref_logprobs, atol=1e-5)
    rewards = kl_penalised_rewards(ro.scores, ro.old_logprobs, ro.ref_logprobs, ro.mask, 0.5, shared.reward_clip)
    last = last_token_index(ro.mask)
    expected = torch.zeros_like(rewards)
    expected[torch.arange(n), last] = ro.scores.clamp(-0.01, 0.01)
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert ro.generated_tokens == int(ro.mask.sum().item()) + int(alone.response_mask.sum().item())
    assert set(run.timer.pop()) == {"generate", "score"}


def test_reward_normalisation_puts_the_greedy_baseline_on_the_same_scale(tmp_path):
    run = _run(tmp_path, reward_normalize=True)
    engine = RolloutEngine(run, load_online_models(run))
    ro = engine.collect(["reverse: abc", "sort: cab", "count: aaa"], step=0, greedy_baseline=True,
                        policy_logprobs=False)
    assert ro.old_logprobs is None and ro.token_entropy is None
    mean, std = ro.raw_scores.mean(), ro.raw_scores.std()  # first batch: the running stats are this batch's
    assert torch.allclose(ro.scores, (ro.raw_scores - mean) / std, atol=1e-5)
    assert torch.allclose(ro.greedy_scores, (ro.raw_greedy_scores - mean) / std, atol=1e-5)
