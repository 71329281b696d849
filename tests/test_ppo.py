"""PPO: GAE, the clipped losses and the critic against hand-computed numbers, and the stage end to end."""

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
from trainers import online, ppo
from trainers.online import critic_values
from trainers.policy_gradient import clipped_policy_loss, explained_variance, ratio_diagnostics
from trainers.ppo import gae
from trainers.sequences import SequenceBatch, encode_pairs, sequence_scores

T = torch.tensor
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
STATS = GlobalBatch()


def test_gae_on_one_response_of_three_tokens():
    # gamma 1, lambda 0.95, rewards [0.1, -0.1, 2.0], values [1.0, 1.2, 1.5], V after the end = 0
    # deltas: t2 = 2.0 + 0 - 1.5 = 0.5;  t1 = -0.1 + 1.5 - 1.2 = 0.2;  t0 = 0.1 + 1.2 - 1.0 = 0.3
    # A2 = 0.5;  A1 = 0.2 + 0.95 * 0.5 = 0.675;  A0 = 0.3 + 0.95 * 0.675 = 0.94125
    # returns = A + V = [1.94125, 1.875, 2.0]
    advantages, returns = gae(T([[0.1, -0.1, 2.0]]), T([[1.0, 1.2, 1.5]]), torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert torch.allclose(advantages, T([[0.94125, 0.675, 0.5]]))
    assert torch.allclose(returns, T([[1.94125, 1.875, 2.0]]))
    # lambda 1: returns are the plain rewards-to-go [2.0, 1.9, 2.0], whatever the values
    _, returns = gae(T([[0.1, -0.1, 2.0]]), T([[1.0, 1.2, 1.5]]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert torch.allclose(returns, T([[2.0, 1.9, 2.0]]))
    # gamma 0.5, lambda 1, zero values, reward 1 at the end: A = [0.25, 0.5, 1]
    advantages, _ = gae(T([[0.0, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, T([[0.25, 0.5, 1.0]]))


def test_gae_ignores_everything_after_the_last_token():
    # The response ends after 2 tokens; position 2 holds garbage reward 7 and value 9 that must not leak.
    # deltas: t1 = 2.0 + 0 - 1.2 = 0.8;  t0 = 0.1 + 1.2 - 1.0 = 0.3;  A0 = 0.3 + 0.95 * 0.8 = 1.06
    advantages, returns = gae(T([[0.1, 2.0, 7.0]]), T([[1.0, 1.2, 9.0]]), T([[1.0, 1.0, 0.0]]), 1.0, 0.95)
    assert torch.allclose(advantages, T([[1.06, 0.8, 0.0]]))
    assert torch.allclose(returns, T([[2.06, 2.0, 0.0]]))


def test_whiten_uses_response_tokens_only():
    # mean of [1, 2, 3] is 2, variance 2/3: (x - 2) / sqrt(2/3) = [-1.2247, 0, 1.2247]; padding -> 0
    out = STATS.whiten(T([[1.0, 2.0], [3.0, 99.0]]), T([[1.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(out, T([[-1.224745, 0.0], [1.224745, 0.0]]), atol=1e-5)


def test_the_kl_enters_gae_or_each_token_as_shared_kl_says():
    # score 2 at the last of 3 tokens, KL penalties [0.1, -0.1, 0] (beta 1, k1), values [1, 1.2, 1.5], lambda 0.95.
    # return_to_go: rewards [0.1, -0.1, 2.0] go through GAE: A = [0.94125, 0.675, 0.5] (as above), then whitened
    mask, values, kl = torch.ones(1, 3), T([[1.0, 1.2, 1.5]]), T([[0.1, -0.1, 0.0]])
    cfg = SimpleNamespace(gamma=1.0, gae_lambda=0.95)

    def estimate(**treatment):
        exp = online.Experience(T([2.0]), None, -kl, torch.zeros(1, 3), mask, 1, KLTreatment(**treatment), 1.0, 5.0,
                                values)
        return ppo.advantages(exp, cfg, STATS)

    in_return = estimate()
    assert torch.allclose(in_return.returns, T([[1.94125, 1.875, 2.0]]))
    assert torch.allclose(in_return.advantages, STATS.whiten(T([[0.94125, 0.675, 0.5]]), mask))
    # per_token: GAE over the score alone: deltas [0.2, 0.3, 0.5] -> A = [0.93625, 0.775, 0.5], returns A + V;
    # then each token's own KL penalty is added before whitening: [1.03625, 0.675, 0.5]
    per_token = estimate(shape="per_token")
    assert torch.allclose(per_token.returns, T([[1.93625, 1.975, 2.0]]))
    assert torch.allclose(per_token.advantages, STATS.whiten(T([[1.03625, 0.675, 0.5]]), mask))


def test_policy_loss_clips_the_ratio_on_both_sides():
    ratios = T([[1.5, 0.5, 1.1, 0.5, 1.5, 3.0]])
    old = torch.zeros(1, 6)
    logprobs = ratios.log().requires_grad_(True)
    advantages = T([[2.0, -1.0, 1.0, 1.0, -1.0, 5.0]])
    mask = T([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    # per token, max(-A * rho, -A * clip(rho, 0.8, 1.2)):
    #   rho 1.5, A  2: max(-3.0, -2.4) = -2.4   (clipped above: no gain from pushing further)
    #   rho 0.5, A -1: max( 0.5,  0.8) =  0.8   (clipped below)
    #   rho 1.1, A  1: -1.1                     (inside the range)
    #   rho 0.5, A  1: max(-0.5, -0.8) = -0.5   (pessimistic: the unclipped term)
    #   rho 1.5, A -1: max( 1.5,  1.2) =  1.5   (pessimistic: the unclipped term)
    # mean over the 5 response tokens: (-2.4 + 0.8 - 1.1 - 0.5 + 1.5) / 5 = -0.34
    loss = clipped_policy_loss(logprobs, old, advantages, mask, SimpleNamespace(clip_range=0.2), STATS)
    assert loss.item() == pytest.approx(-0.34)
    loss.backward()
    # d/d log pi of -A * rho is -A * rho / 5 where unclipped, 0 where clipped or masked
    assert torch.allclose(logprobs.grad, T([[0.0, 0.0, -0.22, -0.1, 0.3, 0.0]]))


def test_value_loss_clips_around_the_old_values():
    # old [0, 1, 2], new [0.5, 0.9, 1.0], returns [1, 0, 2], clip 0.2:
    #   t0: new moves +0.5 -> clipped 0.2;  (0.5 - 1)^2 = 0.25 vs (0.2 - 1)^2 = 0.64 -> 0.64
    #   t1: moves -0.1, inside;             (0.9 - 0)^2 = 0.81                     -> 0.81
    #   t2: moves -1 -> clipped 1.8;        (1.0 - 2)^2 = 1.0  vs (1.8 - 2)^2 = 0.04 -> 1.0
    # loss = 0.5 * (0.64 + 0.81 + 1.0) / 3 = 0.408333
    cfg = SimpleNamespace(value_clip_range=0.2)
    loss = ppo.value_loss(T([[0.5, 0.9, 1.0]]), T([[0.0, 1.0, 2.0]]), T([[1.0, 0.0, 2.0]]), torch.ones(1, 3), cfg, STATS)
    assert loss.item() == pytest.approx(0.5 * 2.45 / 3)
    # a masked position contributes nothing
    masked = ppo.value_loss(T([[0.5, 0.9, 1.0, 50.0]]), T([[0.0, 1.0, 2.0, 0.0]]), T([[1.0, 0.0, 2.0, 0.0]]),
                            T([[1.0, 1.0, 1.0, 0.0]]), cfg, STATS)
    assert masked.item() == pytest.approx(loss.item())


def test_critic_values_are_the_reward_head_on_every_prefix():
    # V(s_t), the value before response token t, is the reward model's score of the prompt plus the first
    # t response tokens: the head is applied to every position of one causal forward pass.
    tokenizer = load_tokenizer("tiny:nano")
    critic = load_reward_model("tiny:nano", seed=2, new_head=True).eval()
    batch = encode_pairs(tokenizer, ["reverse: abc", "sort: ba"], ["cba", "ab"], 64, 8)
    values = critic_values(critic, batch)
    assert values.shape == batch.response_mask.shape
    for t in range(1, 4):
        ids = batch.input_ids.clone()
        ids[:, batch.prompt_width + t :] = tokenizer.pad_token_id
        prefix = SequenceBatch(ids, (ids != tokenizer.pad_token_id).long(), batch.prompt_width,
                               batch.response_mask)
        with torch.no_grad():
            assert torch.allclose(values[:, t], sequence_scores(critic, prefix), atol=1e-5), t


def _stage_configs(tmp_path, **shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    data["ppo"] = {"ppo_epochs": 2}
    suite = load_suite_text(yaml.safe_dump(data))
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    save_pretrained(load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano"), sft)
    save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), rm)
    paths = {}
    for stage in ("ppo", "remax"):
        paths[stage] = tmp_path / f"{stage}.json"
        paths[stage].write_text(json.dumps({"stage": stage, "seed": 0, "suite": suite.resolved(),
                                            "inputs": {"sft": str(sft), "reward_model": str(rm)}}))
    return paths


def test_ppo_stage_end_to_end_and_the_memory_remax_saves(tmp_path, monkeypatch):
    steps = {"policy": 0, "critic": 0}
    real_policy_loss, real_value_loss = ppo.policy_loss, ppo.value_loss

    def count(name, real):
        def wrapped(*args):
            steps[name] += 1
            return real(*args)
        return wrapped

    monkeypatch.setattr(ppo, "policy_loss", count("policy", real_policy_loss))
    monkeypatch.setattr(ppo, "value_loss", count("critic", real_value_loss))
    configs = _stage_configs(tmp_path, iterations=2, train_batch_size=2)
    out = tmp_path / "ppo" / "seed0"
    assert stage_main("ppo", online.train, ["--config", str(configs["ppo"]), "--out", str(out)]) == 0
    # 2 iterations x 2 epochs x (4 prompts / mini-batches of 2) = 8 updates of actor and critic each
    assert steps == {"policy": 8, "critic": 8}

    summary = json.loads((out / "summary.json").read_text())
    states = summary["model_state_bytes"]
    assert set(states) == {"policy", "critic", "reference", "reward"}
    critic, reward = states["critic"], states["reward"]
    # The critic is the reward model, trained: its parameters, their gradients, and AdamW's two fp32
    # moments per parameter plus one fp32 step counter per parameter tensor.
    n_tensors = len(list(load_reward_model("tiny:nano", new_head=True).parameters()))
    assert critic["params"] == critic["grads"] == reward["params"]
    assert critic["optimizer"] == 2 * critic["params"] + 4 * n_tensors
    for key in ("heldout_gold_reward", "heldout_gold_reward_before", "final_reward_mean", "time_per_iteration_s"):
        assert isinstance(summary[key], float), key
    assert summary["sampled_tokens_per_second"] == pytest.approx(summary["tokens_per_second"])  # no greedy pass
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward_mean", "reward_std", "kl", "policy_loss", "value_loss", "entropy", "response_length",
                "time_generate_s", "time_score_s", "time_train_s", "time_step_s", "tokens_per_second",
                "grad_norm", "approx_kl", "clipfrac", "explained_variance"):
        assert key in rows[-1] and math.isfinite(rows[-1][key]), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)

    # ReMax on the same inputs: the same policy, reference and reward bytes, and no critic. The whole
    # difference in model-state bytes is the critic and its optimizer.
    remax_out = tmp_path / "remax" / "seed0"
    assert stage_main("remax", online.train, ["--config", str(configs["remax"]), "--out", str(remax_out)]) == 0
    remax_summary = json.loads((remax_out / "summary.json").read_text())
    for component in ("policy", "reference", "reward"):
        assert remax_summary["model_state_bytes"][component] == states[component]
    saved = summary["model_state_total_bytes"] - remax_summary["model_state_total_bytes"]
    assert saved == sum(critic.values()) > 0


def test_ppo_diagnostics_by_hand():
    import math

    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding: it must not count
    old = torch.tensor([[0.0, -1.0, -9.0]])
    new = torch.tensor([[math.log(1.5), -1.0, 5.0]])  # ratios 1.5, 1.0 (and a huge one on the padding)
    returns = torch.tensor([[1.0, 3.0, 100.0]])
    values = torch.tensor([[1.0, 2.0, -100.0]])
    d = {**ratio_diagnostics(new, old, mask, STATS, clip_range=0.2),
         "explained_variance": explained_variance(values, returns, mask, STATS)}
    # approx_kl = mean((rho - 1) - log rho) = ((0.5 - ln 1.5) + 0) / 2
    assert d["approx_kl"] == pytest.approx((0.5 - math.log(1.5)) / 2, rel=1e-6)
    assert d["clipfrac"] == pytest.approx(0.5)  # 1.5 is outside [0.8, 1.2], 1.0 is not
    # residuals R - V = [0, 1]: variance 0.25; returns [1, 3]: variance 1  ->  1 - 0.25 / 1
    assert d["explained_variance"] == pytest.approx(0.75)
