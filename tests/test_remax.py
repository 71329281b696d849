"""ReMax: returns and loss against numbers worked out by hand, and the stage end to end (no value model)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from remax_bench.core.algorithms import KL as KLTreatment
from remax_bench.core.global_batch import GlobalBatch
from remax_bench.core.models import load_causal_lm, load_reward_model, load_tokenizer, save_pretrained
from remax_bench.core.stage import stage_main
from remax_bench.core.suite_file import load_suite_text
from trainers import online, remax, rollout
from trainers.policy_gradient import policy_gradient_loss

T = torch.tensor
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"

# Three responses in one batch: row 0 stops after 3 tokens, row 1 after 1 (eos straight away), row 2 runs
# to the limit. Scores 2, 0, 9 against greedy baselines 1.5, 1, 1: centred 0.5, -1, 8 -> clipped to 5.
SCORES, BASELINES = T([2.0, 0.0, 9.0]), T([1.5, 1.0, 1.0])
MASK = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
# Per-token KL penalties -beta * (log pi - log pi_ref); the values on padding are garbage that must vanish.
KL = T([[0.1, 0.0, -0.2, 7.0], [-0.3, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.1]])


def _returns(scores, baselines, kl, mask, gamma=1.0, reward_clip=5.0, shape="per_token"):
    """ReMax's advantages through the estimator the loop calls, with the per-token KL penalties ``kl`` given
    directly (beta 1, k1: log pi - log pi_ref = -kl)."""
    exp = online.Experience(scores, baselines, -kl, torch.zeros_like(kl), mask, 1, KLTreatment(shape=shape), 1.0,
                            reward_clip)
    return remax.advantages(exp, SimpleNamespace(gamma=gamma), GlobalBatch()).advantages


def test_per_token_returns_with_eos_in_the_middle_of_the_batch():
    # gamma 1: every token gets the centred score plus its own KL penalty; padding gets 0.
    #   row 0: 0.5 + [0.1, 0, -0.2]      = [0.6, 0.5, 0.3, 0]
    #   row 1: -1 + [-0.3]                = [-1.3, 0, 0, 0]
    #   row 2: 5 + [0, 0, 0, 0.1]         = [5, 5, 5, 5.1]
    returns = _returns(SCORES, BASELINES, KL, MASK, gamma=1.0, reward_clip=5.0, shape="per_token")
    assert torch.allclose(returns, T([[0.6, 0.5, 0.3, 0.0], [-1.3, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.1]]))


def test_per_token_returns_discount_back_from_each_rows_own_last_token():
    # gamma 0.9: the centred score times gamma^(T - t + 1), T the row's own last token (the authors' code
    # multiplies by gamma before adding, so the last token already carries gamma^1).
    #   row 0: 0.5 * [0.729, 0.81, 0.9] + [0.1, 0, -0.2]          = [0.4645, 0.405, 0.25, 0]
    #   row 1: -1 * [0.9] + [-0.3]                                 = [-1.2, 0, 0, 0]
    #   row 2: 5 * [0.6561, 0.729, 0.81, 0.9] + [0, 0, 0, 0.1]     = [3.2805, 3.645, 4.05, 4.6]
    returns = _returns(SCORES, BASELINES, KL, MASK, gamma=0.9, reward_clip=5.0)
    assert torch.allclose(returns, T([[0.4645, 0.405, 0.25, 0.0], [-1.2, 0.0, 0.0, 0.0], [3.2805, 3.645, 4.05, 4.6]]))


def test_return_to_go_sums_the_later_kl_penalties_into_each_token():
    # shared.kl's return_to_go: each token carries the clipped centred score (gamma^(T - t + 1)) and the sum of the
    # KL penalties from itself on. Centred [0.5, -1, 8 -> 5].
    #   row 0: 0.5 + [0.1 + 0 - 0.2, 0 - 0.2, -0.2] = [0.4, 0.3, 0.3];  row 1: -1 - 0.3;  row 2: 5 + 0.1 on each
    returns = _returns(SCORES, BASELINES, KL, MASK, gamma=1.0, reward_clip=5.0, shape="return_to_go")
    assert torch.allclose(returns, T([[0.4, 0.3, 0.3, 0.0], [-1.3, 0.0, 0.0, 0.0], [5.1, 5.1, 5.1, 5.1]]))
    # gamma 0.9: score 0.5 * [0.729, 0.81, 0.9], KL to go G_t = kl_t + 0.9 G_{t+1}: [0.1 - 0.162, -0.18, -0.2]
    #   row 0: [0.3645 - 0.062, 0.405 - 0.18, 0.45 - 0.2] = [0.3025, 0.225, 0.25]
    #   row 2: 5 * [0.6561, 0.729, 0.81, 0.9] + 0.1 * [0.729, 0.81, 0.9, 1] = [3.3534, 3.726, 4.14, 4.6]
    returns = _returns(SCORES, BASELINES, KL, MASK, gamma=0.9, reward_clip=5.0, shape="return_to_go")
    assert torch.allclose(returns, T([[0.3025, 0.225, 0.25, 0.0], [-1.2, 0.0, 0.0, 0.0], [3.3534, 3.726, 4.14, 4.6]]))


def _authors_returns(kl, centred, mask, gamma, clip):
    """The authors' DeepSpeed-Chat ReMax returns, written as their loop: walking back from each row's end,
    the running score is multiplied by gamma and then added to that token's KL penalty."""
    returns = torch.zeros_like(kl)
    for j in range(kl.shape[0]):
        running = centred[j].clamp(-clip, clip)
        for i in reversed(range(int(mask[j].sum()))):
            running = running * gamma
            returns[j, i] = kl[j, i] + running
    return returns


def _verl_returns(token_rewards, baselines, mask):
    """verl's ReMax estimator: reverse cumulative sum of the token-level rewards, minus the greedy baseline."""
    to_go = (token_rewards * mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    return (to_go - baselines.unsqueeze(-1)) * mask


@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.9])
def test_returns_match_the_authors_and_verls_formulas_on_random_tensors(gamma):
    gen = torch.Generator().manual_seed(int(gamma * 100))
    batch, width = 6, 9
    lengths = torch.tensor([1, 3, 9, 5, 2, 7])  # eos in the middle: padding after it
    mask = (torch.arange(width) < lengths.unsqueeze(-1)).float()
    scores = torch.randn(batch, generator=gen) * 6  # |r - b| often above the clip of 5
    baselines = torch.randn(batch, generator=gen) * 6
    kl = torch.randn(batch, width, generator=gen) * 0.1
    ours = _returns(scores, baselines, kl, mask, gamma=gamma, reward_clip=5.0, shape="per_token")
    assert (scores - baselines).abs().max() > 5  # the clip is active in this draw
    assert torch.allclose(ours, _authors_returns(kl * mask, scores - baselines, mask, gamma, 5.0), atol=1e-6)
    if gamma == 1.0:  # verl's estimator has no discount and no clip
        token_rewards = kl * mask
        token_rewards[torch.arange(batch), lengths - 1] += scores
        ours = _returns(scores, baselines, kl, mask, gamma=1.0, reward_clip=None, shape="return_to_go")
        assert torch.allclose(ours, _verl_returns(token_rewards, baselines, mask), atol=1e-6)


def test_clipping_applies_to_the_centred_score_and_returns_are_detached():
    kl = KL.clone().requires_grad_(True)
    # no clipping: row 2's centred score stays 8 -> [8, 8, 8, 8.1]
    returns = _returns(SCORES, BASELINES, kl, MASK, gamma=1.0, reward_clip=None)
    assert torch.allclose(returns[2], T([8.0, 8.0, 8.0, 8.1])) and not returns.requires_grad
    # clip 0.25: centred [0.25, -0.25, 0.25]; row 0 -> [0.35, 0.25, 0.05], row 1 -> [-0.55]
    returns = _returns(SCORES, BASELINES, KL, MASK, gamma=1.0, reward_clip=0.25)
    assert torch.allclose(returns[:2], T([[0.35, 0.25, 0.05, 0.0], [-0.55, 0.0, 0.0, 0.0]]))
    # a sample as good as the greedy answer, with no KL, teaches nothing
    assert not _returns(T([1.0]), T([1.0]), torch.zeros(1, 3), torch.ones(1, 3)).any()


def test_kl_in_the_loss_leaves_the_returns_to_the_score():
    exp = online.Experience(SCORES, BASELINES, -KL, torch.zeros_like(KL), MASK, 1, KLTreatment(placement="loss"), 1.0,
                            5.0)
    returns = remax.advantages(exp, SimpleNamespace(gamma=1.0), GlobalBatch()).advantages
    assert torch.allclose(returns, T([0.5, -1.0, 5.0]).unsqueeze(-1) * MASK)


def test_remax_loss_by_hand():
    logprobs = T([[-1.0, -2.0, -0.5, -9.0], [-0.1, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    returns = T([[0.6, 0.5, 0.3, 0.0], [-1.3, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.1]])
    # sum G * log pi over the 8 response tokens:
    #   row 0: -0.6 - 1.0 - 0.15 = -1.75;  row 1: 0.13;  row 2: -5 - 5 - 5 - 5.1 = -20.1;  total -21.72
    # loss = 21.72 / 8 = 2.715
    loss = policy_gradient_loss(logprobs, logprobs.detach(), returns, MASK, None, GlobalBatch())
    assert loss.item() == pytest.approx(2.715)
    loss.backward()
    # d loss / d log pi(a_t) = -G_t / 8 on response tokens, 0 on padding
    assert torch.allclose(logprobs.grad, -returns * MASK / 8)


def _stage_config(tmp_path, **shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    suite = load_suite_text(yaml.safe_dump(data))
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    save_pretrained(load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano"), sft)
    save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), rm)
    path = tmp_path / "remax.json"
    path.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": suite.resolved(),
                                "inputs": {"sft": str(sft), "reward_model": str(rm)}}))
    return path


def test_remax_stage_end_to_end_builds_no_value_model(tmp_path, monkeypatch):
    engines, reward_models = [], []
    real_engine, real_rm = rollout.build_engine, rollout.load_reward_model

    def counting_engine(model, *args, **kwargs):
        engines.append(model)
        return real_engine(model, *args, **kwargs)

    def counting_rm(*args, **kwargs):
        reward_models.append(args)
        return real_rm(*args, **kwargs)

    monkeypatch.setattr(rollout, "build_engine", counting_engine)
    monkeypatch.setattr(rollout, "load_reward_model", counting_rm)
    monkeypatch.setattr(online, "build_engine", counting_engine)  # would catch a critic built by the loop
    config = _stage_config(tmp_path, iterations=3, heldout_eval_every=2)
    out = tmp_path / "remax" / "seed0"
    assert stage_main("remax", online.train, ["--config", str(config), "--out", str(out)]) == 0

    # One trained model (the policy), one reward model (frozen), nothing that predicts values.
    assert len(engines) == 1 and len(reward_models) == 1
    assert not any("value" in name or "critic" in name for name, _ in engines[0].named_modules())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["model_state_bytes"]) == {"policy", "reference", "reward"}
    policy, reference = summary["model_state_bytes"]["policy"], summary["model_state_bytes"]["reference"]
    assert policy["optimizer"] > 0 and policy["grads"] == policy["params"] == reference["params"]
    assert reference["grads"] == reference["optimizer"] == 0
    for key in ("heldout_gold_reward", "heldout_gold_reward_before", "final_reward_mean", "time_per_iteration_s",
                "tokens_per_second"):
        assert isinstance(summary[key], float), key
    assert summary["iterations"] == 3 and set(summary["time_split_s"]) == {"generate", "sync", "score", "train"}
    assert summary["time_split_s"]["sync"] == 0.0 and summary["rollout_engine"] == {"backend": "hf"}  # no engine
    # the greedy answers are generated but not trained on: counted in tokens/s, not in sampled tokens/s
    assert 0 < summary["sampled_tokens_per_second"] < summary["tokens_per_second"]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in ("reward_mean", "reward_std", "kl", "policy_loss", "response_length", "entropy",
                "baseline_reward_mean", "time_generate_s", "time_score_s", "time_train_s", "time_step_s",
                "tokens_per_second"):
        assert key in rows[0], key
    assert "value_loss" not in rows[0]
    assert "heldout_gold_reward" in rows[1] and "heldout_gold_reward" not in rows[0]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch comes from the reference itself
    # tokens/s counts the sampled and the greedy answers: at most 2 * 4 prompts * 8 tokens per step
    assert 0 < rows[1]["tokens_per_second"] * rows[1]["time_step_s"] <= 2 * 4 * 8
    assert (out / "checkpoint" / "config.json").is_file() and (out / "checkpoint" / "tokenizer.json").is_file()


def test_non_finite_loss_stops_before_the_update(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = remax.advantages

    def poisoned(*args):
        calls["n"] += 1
        estimate = real(*args)
        estimate.advantages = estimate.advantages * (float("nan") if calls["n"] == 2 else 1.0)
        return estimate

    monkeypatch.setattr(remax, "advantages", poisoned)
    config = _stage_config(tmp_path, iterations=4)  # a checkpoint after every step (4 // 4)
    out = tmp_path / "remax" / "seed0"
    assert stage_main("remax", online.train, ["--config", str(config), "--out", str(out)]) == 1
    failed = tmp_path / "remax" / "seed0.failed"
    manifest = json.loads((failed / "manifest.json").read_text())
    assert "NonFiniteError" in manifest["error"] and "policy_loss is not finite at step 1" in manifest["error"]
    # The checkpoint of step 0 is kept, and the poisoned loss never reached the weights.
    weights = load_causal_lm(str(failed / "checkpoint"))
    assert all(torch.isfinite(p).all() for p in weights.parameters())
