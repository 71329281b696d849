"""The critic-free family (REINFORCE, GRPO, RLOO, REINFORCE++, ReMax with k answers per prompt): each
estimator against numbers worked out by hand, and every stage run for real on the nano model."""

import json
import math
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
from trainers import grpo, online, reinforce, reinforce_pp, rloo
from trainers.policy_gradient import (
    clipped_policy_loss,
    group_mean,
    kl_estimate,
    policy_gradient_loss,
    returns_to_go,
)
from trainers.rloo import rloo_baselines

T = torch.tensor
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
SCORES = T([1.0, 2.0, 3.0, 6.0])
STATS = GlobalBatch()  # one process: the global batch is this batch


def _exp(scores, mask, kl=None, k=2, clip=5.0, **treatment):
    """An Experience with the per-token KL penalties ``kl`` given directly (beta 1, k1: log pi - log pi_ref = -kl)."""
    kl = torch.zeros_like(mask) if kl is None else kl
    return online.Experience(scores, None, -kl, torch.zeros_like(mask), mask, k, KLTreatment(**treatment), 1.0, clip)


def test_rloo_baseline_is_the_mean_of_the_others():
    # k = 2: groups [1, 2], [3, 6] -> each answer's baseline is its partner's score
    assert torch.allclose(rloo_baselines(SCORES, 2), T([2.0, 1.0, 6.0, 3.0]))
    # k = 4: sum 12, b_i = (12 - r_i) / 3
    assert torch.allclose(rloo_baselines(SCORES, 4), T([11 / 3, 10 / 3, 3.0, 2.0]))
    # r_i - b_i = k / (k - 1) * (r_i - mean): [-2, -1, 0, 3] * 4/3
    assert torch.allclose(SCORES - rloo_baselines(SCORES, 4), T([-8 / 3, -4 / 3, 0.0, 4.0]))


def test_group_mean_and_grpo_advantages_by_hand():
    assert torch.allclose(group_mean(SCORES, 2), T([1.5, 1.5, 4.5, 4.5]))
    # k = 2: each group is mean +- d with unbiased std d * sqrt(2): advantages +- 1 / sqrt(2)
    a = 1 / math.sqrt(2)
    assert torch.allclose(grpo.grpo_advantages(SCORES, 2), T([-a, a, -a, a]), atol=1e-5)
    # k = 4: deviations [-2, -1, 0, 3], unbiased variance 14 / 3
    std = math.sqrt(14 / 3)
    assert torch.allclose(grpo.grpo_advantages(SCORES, 4), T([-2 / std, -1 / std, 0.0, 3 / std]), atol=1e-5)
    assert torch.allclose(grpo.grpo_advantages(SCORES, 4, std_normalize=False), T([-2.0, -1.0, 0.0, 3.0]))
    # a group whose answers all score the same teaches nothing (no division by zero)
    assert torch.equal(grpo.grpo_advantages(T([0.7, 0.7]), 2), T([0.0, 0.0]))
    # the estimator puts the sequence advantage on every response token, and clips the scores first (c = 2.5)
    mask = T([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    estimate = grpo.advantages(_exp(SCORES, mask, clip=2.5, placement="loss"), SimpleNamespace(std_normalize=False),
                               STATS)
    assert torch.allclose(estimate.advantages, T([[-0.5, -0.5], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))


def test_the_three_kl_estimators_by_hand():
    # d = log pi - log pi_ref = [1, -1, 0]: k1 = d, k2 = d^2 / 2, k3 = e^-d + d - 1
    logprobs, ref = T([-1.0, -2.0, -1.0]), T([-2.0, -1.0, -1.0])
    assert torch.allclose(kl_estimate(logprobs, ref, "k1"), T([1.0, -1.0, 0.0]))
    assert torch.allclose(kl_estimate(logprobs, ref, "k2"), T([0.5, 0.5, 0.0]))
    assert torch.allclose(kl_estimate(logprobs, ref, "k3"), T([math.exp(-1), math.e - 2, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logprobs, ref, "k4")


def test_the_clipped_loss_and_the_kl_in_the_loss_by_hand():
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    logprobs = T([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    ref = T([[-2.0, -1.0], [-1.0, -1.0]])
    advantages = T([[2.0, 2.0], [-1.0, -1.0]])
    cfg = SimpleNamespace(clip_range=0.2)
    # ratio 1: token losses -A: [-2, -2 | 1] -> mean over 3 tokens -1
    assert clipped_policy_loss(logprobs, logprobs.detach(), advantages, mask, cfg, STATS).item() == pytest.approx(-1.0)
    # ratio 1.5, clip 0.2: A > 0 takes the clipped -1.2 A, A < 0 the unclipped -1.5 A:
    # [-2.4, -2.4 | 1.5] -> -3.3 / 3 = -1.1
    old = logprobs.detach() - math.log(1.5)
    assert clipped_policy_loss(logprobs, old, advantages, mask, cfg, STATS).item() == pytest.approx(-1.1, abs=1e-6)
    # GRPO's paper: beta * k3 in the loss. The loop adds beta * (token mean of k3): 0.5 * e^-1 / 3 here.
    trainer = SimpleNamespace(policy_loss=clipped_policy_loss, cfg=cfg, stats=STATS, kl=KLTreatment(estimator="k3",
                              placement="loss"), suite=SimpleNamespace(shared=SimpleNamespace(kl_coef=0.5)))
    loss = online.OnlineTrainer._loss(trainer, logprobs, logprobs.detach(), advantages, mask, ref)
    assert loss.item() == pytest.approx(-1.0 + 0.5 * math.exp(-1) / 3, abs=1e-6)
    loss.backward()  # the KL term has its gradient: d k3 / d log pi = 1 - e^-d
    expected = (-advantages + 0.5 * (1 - torch.exp(-(logprobs.detach() - ref)))) * mask / 3
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)


def test_returns_to_go_and_the_policy_gradient_loss_by_hand():
    rewards, mask = T([[1.0, 0.0, 2.0, 9.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    # gamma 1: [3, 2, 2, 0] (the 9 on padding never counts); gamma 0.5: G2 = 2, G1 = 1, G0 = 1.5
    assert torch.allclose(returns_to_go(rewards, mask, 1.0), T([[3.0, 2.0, 2.0, 0.0]]))
    assert torch.allclose(returns_to_go(rewards, mask, 0.5), T([[1.5, 1.0, 2.0, 0.0]]))
    logprobs = T([[-1.0, -2.0, -0.5, -7.0]], requires_grad=True)
    # -(3 * -1 + 2 * -2 + 2 * -0.5) / 3 = 8 / 3
    loss = policy_gradient_loss(logprobs, logprobs.detach(), T([[3.0, 2.0, 2.0, 0.0]]), mask, None, STATS)
    assert loss.item() == pytest.approx(8 / 3)
    loss.backward()
    assert torch.allclose(logprobs.grad, T([[-1.0, -2 / 3, -2 / 3, 0.0]]))


def test_reinforce_pp_group_mean_then_batch_normalisation_by_hand():
    # scores [1, 3] (one group of k = 2) -> centred [-1, 1]; no KL; returns-to-go
    # row 0 [-1, -1], row 1 [1, pad] -> tokens -1, -1, 1: mean -1/3, population std sqrt(8/9)
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    estimate = reinforce_pp.advantages(_exp(T([1.0, 3.0]), mask), SimpleNamespace(gamma=1.0), STATS)
    std = math.sqrt(8 / 9)
    assert torch.allclose(estimate.advantages, T([[-2 / 3 / std, -2 / 3 / std], [4 / 3 / std, 0.0]]), atol=1e-5)
    assert torch.allclose(estimate.baseline, T([2.0, 2.0]))


def test_rloo_and_reinforce_carry_the_kl_penalty_in_the_return():
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    kl = T([[0.1, -0.2], [0.3, 4.0]])  # -beta * log-ratio per token; 4.0 sits on padding
    exp, cfg = _exp(T([1.0, 3.0]), mask, kl), SimpleNamespace(gamma=1.0)
    # RLOO: baselines [3, 1] -> centred [-2, 2]; rewards row 0 [0.1, -0.2 - 2], row 1 [0.3 + 2]
    # returns row 0 [0.1 - 2.2, -2.2] = [-2.1, -2.2], row 1 [2.3, 0]
    assert torch.allclose(rloo.advantages(exp, cfg, STATS).advantages, T([[-2.1, -2.2], [2.3, 0.0]]))
    # REINFORCE: no baseline -> row 0 [0.1 + 1 - 0.2, 1 - 0.2] = [0.9, 0.8], row 1 [3.3, 0]
    assert torch.allclose(reinforce.advantages(exp, cfg, STATS).advantages, T([[0.9, 0.8], [3.3, 0.0]]))
    # per_token: each token keeps only its own penalty -> REINFORCE row 0 [1.1, 0.8], row 1 [3.3, 0]
    per_token = _exp(T([1.0, 3.0]), mask, kl, shape="per_token")
    assert torch.allclose(reinforce.advantages(per_token, cfg, STATS).advantages, T([[1.1, 0.8], [3.3, 0.0]]))
    # in the loss: no penalty in the return at all -> [1, 1], [3, 0]
    in_loss = _exp(T([1.0, 3.0]), mask, kl, placement="loss")
    assert torch.allclose(reinforce.advantages(in_loss, cfg, STATS).advantages, T([[1.0, 1.0], [3.0, 0.0]]))
    # a k2 estimator in the reward: -beta * d^2 / 2 with d = -kl
    k2 = _exp(T([1.0, 3.0]), mask, kl, estimator="k2")
    assert torch.allclose(k2.kl_rewards(), -0.5 * kl**2 * mask)


# -- the stages, for real on the nano model --------------------------------------------------------
def _stage_config(tmp_path, stage, block=None, with_reward_model=True, **shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    if block is not None:
        data[stage] = block
    suite = load_suite_text(yaml.safe_dump(data))
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    save_pretrained(load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano"), sft)
    inputs = {"sft": str(sft)}
    if with_reward_model:
        save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), rm)
        inputs["reward_model"] = str(rm)
    path = tmp_path / f"{stage}.json"
    path.write_text(json.dumps({"stage": stage, "seed": 0, "suite": suite.resolved(), "inputs": inputs}))
    return path


@pytest.mark.parametrize("stage,k", [("reinforce", 1), ("grpo", 2), ("rloo", 2), ("reinforce_pp", 2), ("remax", 2)])
def test_each_stage_runs_with_k_answers_per_prompt_at_a_matched_sample_budget(tmp_path, stage, k, one_torch_thread):
    config = _stage_config(tmp_path, stage, {"enabled": True, "samples_per_prompt": k}, iterations=2,
                           rollout_batch_unit="samples")
    out = tmp_path / stage / "seed0"
    assert stage_main(stage, online.train, ["--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # 4 sampled answers per iteration whatever k: 4 / k prompts; ReMax adds one greedy answer per prompt
    budget = summary["matched_budget"]
    assert budget == {"rollout_batch_unit": "samples", "samples_per_prompt": k, "prompts_per_iteration": 4 // k,
                      "samples_per_iteration": 4, "greedy_per_iteration": 4 // k if stage == "remax" else 0,
                      "iterations": 2, "reward": "reward model"}
    assert json.loads((out / "manifest.json").read_text())["matched_budget"] == budget
    assert set(summary["model_state_bytes"]) == {"policy", "reference", "reward"}  # no critic
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for row in rows:
        assert row["sampled_tokens"] <= 4 * 8  # 4 answers of at most 8 tokens
        greedy = 4 // k if stage == "remax" else 0
        assert row["sampled_tokens"] <= row["tokens"] <= (4 + greedy) * 8
    assert rows[1]["generated_tokens"] == rows[0]["tokens"] + rows[1]["tokens"] == summary["generated_tokens"]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch comes from the reference itself


def test_grpo_with_several_mini_batches_and_epochs_takes_a_step_each(tmp_path, one_torch_thread, monkeypatch):
    steps = []
    real = grpo.policy_loss

    def counting(*args):
        steps.append(1)
        return real(*args)

    monkeypatch.setattr(grpo, "policy_loss", counting)
    config = _stage_config(tmp_path, "grpo", {"enabled": True, "samples_per_prompt": 2, "epochs": 2,
                                              "kl_override": "paper"}, iterations=1, train_batch_size=2)
    out = tmp_path / "grpo" / "seed0"
    assert stage_main("grpo", online.train, ["--config", str(config), "--out", str(out)]) == 0
    # rollout_batch_unit prompts: 4 prompts x 2 answers = 8 rows, mini-batches of 2, two epochs: 8 steps
    assert len(steps) == 8
    assert json.loads((out / "summary.json").read_text())["matched_budget"]["samples_per_iteration"] == 8


def test_remax_with_k_answers_shares_one_greedy_answer_per_prompt(tmp_path):
    from remax_bench.core.stage import StageRun
    from trainers.rollout import RolloutEngine, load_online_models

    config = json.loads(_stage_config(tmp_path, "remax", {"samples_per_prompt": 3}).read_text())
    run = StageRun("remax", config, tmp_path / "out")
    engine = RolloutEngine(run, load_online_models(run))
    ro = engine.collect(["Reverse: abc", "Uppercase: bad"], 0, samples_per_prompt=3, greedy_baseline=True)
    assert ro.prompts == ["Reverse: abc"] * 3 + ["Uppercase: bad"] * 3
    assert ro.batch.input_ids.shape[0] == 6 and ro.greedy_batch.input_ids.shape[0] == 2
    groups = ro.greedy_scores.view(-1, 3)
    assert torch.equal(groups, groups[:, :1].expand(2, 3))  # one greedy score per prompt, shared by its 3 rows
    # every generated token counts: 6 sampled and 2 greedy answers
    assert ro.generated_tokens == int(ro.batch.response_mask.sum() + ro.greedy_batch.response_mask.sum())


def test_pi_old_of_the_first_mini_batch_comes_from_its_own_training_forward(tmp_path, monkeypatch, one_torch_thread):
    from remax_bench.core.stage import StageRun
    from trainers.sequences import forward_logits, token_logprobs

    config = json.loads(_stage_config(tmp_path, "grpo", {"enabled": True, "samples_per_prompt": 2, "epochs": 2},
                                      train_batch_size=4).read_text())
    run = StageRun("grpo", config, tmp_path / "out")
    trainer = online.OnlineTrainer(run)
    trainer.rollouts = online.RolloutEngine(run, trainer.models)
    ro = trainer.rollouts.collect(["Reverse: abc", "Uppercase: bad", "Sort the letters: hgab", "Reverse: dcba"], 0,
                                  samples_per_prompt=2, policy_logprobs=False)
    with torch.no_grad():
        before = token_logprobs(forward_logits(trainer.policy.module, ro.batch), ro.batch.response_ids)
    passes, seen = [], {}
    real_forward, real_estimator = online.forward_logits, trainer.estimator

    def counted_forward(model, batch):
        passes.append((len(batch.input_ids), torch.is_grad_enabled()))
        return real_forward(model, batch)

    def recording_estimator(exp, cfg, stats):
        seen["old"] = exp.logprobs.clone()
        return real_estimator(exp, cfg, stats)

    monkeypatch.setattr(online, "forward_logits", counted_forward)
    trainer.estimator = recording_estimator
    metrics = trainer.update(ro, 0)
    # 8 answers in mini-batches of 4, two epochs: one no-grad pass over the 4 rows outside the first mini-batch,
    # then the four training forwards; the first one's log-probs are its rows' pi_old
    assert passes == [(4, False)] + [(4, True)] * 4
    assert torch.allclose(seen["old"], before, atol=1e-5)
    assert metrics["approx_kl"] >= 0 and "clipfrac" in metrics
