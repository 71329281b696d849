"""Each update rule against numbers worked out by hand (the comments show the arithmetic)."""

import math

import pytest
import torch

from trainers.dpo import dpo_loss
from trainers.ppo import gae, ppo_policy_loss, ppo_value_loss
from trainers.remax import remax_loss, remax_returns
from trainers.reward_model import bradley_terry_loss
from trainers.rollout import kl_penalised_rewards, kl_penalty
from trainers.sft import sft_loss

T = torch.tensor
# Row 0 answers in 3 tokens, row 1 hits eos after 2: padding positions carry garbage that must not leak.
MASK = T([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
KL = T([[0.1, -0.2, 0.3, 9.0], [0.05, 0.1, 9.0, 9.0]])


def test_remax_returns_per_token_kl_with_eos_in_the_middle_of_the_batch():
    # centred scores: 1.0 - 0.2 = 0.8 and 0.5 - 1.0 = -0.5, each on its own row's last token, gamma = 1
    # row 0: [0.8 + 0.1, 0.8 - 0.2, 0.8 + 0.3, 0];  row 1: [-0.5 + 0.05, -0.5 + 0.1, 0, 0]
    returns = remax_returns(T([1.0, 0.5]), T([0.2, 1.0]), KL, MASK, gamma=1.0, reward_clip=5.0)
    assert torch.allclose(returns, T([[0.9, 0.6, 1.1, 0.0], [-0.45, -0.4, 0.0, 0.0]]))


def test_remax_returns_discount_back_from_the_last_token():
    # gamma = 0.5, row 0: 0.8 * [0.25, 0.5, 1] + [0.1, -0.2, 0.3] = [0.3, 0.2, 1.1]
    # row 1: -0.5 * [0.5, 1] + [0.05, 0.1] = [-0.2, -0.4]
    returns = remax_returns(T([1.0, 0.5]), T([0.2, 1.0]), KL, MASK, gamma=0.5, reward_clip=5.0)
    assert torch.allclose(returns, T([[0.3, 0.2, 1.1, 0.0], [-0.2, -0.4, 0.0, 0.0]]))


def test_remax_returns_return_to_go_sums_the_kl_penalties():
    # row 0 rewards [0.1, -0.2, 0.3 + 0.8]: returns-to-go [1.0, 0.9, 1.1]
    # row 1 rewards [0.05, 0.1 - 0.5]: returns-to-go [-0.35, -0.4]
    returns = remax_returns(T([1.0, 0.5]), T([0.2, 1.0]), KL, MASK, gamma=1.0, reward_clip=5.0, kl_mode="return_to_go")
    assert torch.allclose(returns, T([[1.0, 0.9, 1.1, 0.0], [-0.35, -0.4, 0.0, 0.0]]))


def test_remax_returns_clip_the_centred_score():
    mask = T([[1.0, 1.0]])
    returns = remax_returns(T([10.0]), T([0.0]), torch.zeros(1, 2), mask, reward_clip=5.0)
    assert torch.allclose(returns, T([[5.0, 5.0]]))
    unclipped = remax_returns(T([10.0]), T([0.0]), torch.zeros(1, 2), mask, reward_clip=None)
    assert torch.allclose(unclipped, T([[10.0, 10.0]]))
    with pytest.raises(ValueError, match="kl_mode"):
        remax_returns(T([1.0]), T([0.0]), torch.zeros(1, 2), mask, kl_mode="sideways")


def test_remax_loss_is_the_return_weighted_log_likelihood_over_response_tokens():
    logprobs = T([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.0, -7.0, -7.0]], requires_grad=True)
    returns = T([[0.9, 0.6, 1.1, 0.0], [-0.45, -0.4, 0.0, 0.0]])
    # -( 0.9*-1 + 0.6*-2 + 1.1*-3 + -0.45*-0.5 + -0.4*-1 ) / 5 = -(-5.4 + 0.625) / 5 = 0.955
    loss = remax_loss(logprobs, returns, MASK)
    assert loss.item() == pytest.approx(0.955)
    loss.backward()
    # d loss / d logprob_t = -return_t / 5, and nothing flows into padding
    assert torch.allclose(logprobs.grad, -returns * MASK / 5)


def test_kl_penalised_rewards_put_the_clipped_score_on_each_last_token():
    logprobs = T([[-1.0, -1.0, -1.0], [-1.0, -2.0, -3.0]])
    ref = T([[-1.5, -1.0, -0.5], [-1.0, -1.0, -1.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: -0.1 * [0.5, 0, -0.5] masked -> [-0.05, 0, 0]; score 2 on token 1
    # row 1: -0.1 * [0, -1, -2] = [0, 0.1, 0.2]; score 7 clipped to 5 on token 2
    rewards = kl_penalised_rewards(T([2.0, 7.0]), logprobs, ref, mask, kl_coef=0.1, reward_clip=5.0)
    assert torch.allclose(rewards, T([[-0.05, 2.0, 0.0], [0.0, 0.1, 5.2]]))
    assert torch.allclose(kl_penalty(logprobs, ref, 0.1)[1], T([0.0, 0.1, 0.2]))


def test_gae_by_hand():
    # gamma 1, lambda 0.95, V = [0.5, 0.6, 0.7], reward 1 at the end:
    # deltas [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.95 * 0.3 = 0.385, A0 = 0.1 + 0.95 * 0.385 = 0.46575
    advantages, returns = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.95)
    assert torch.allclose(advantages, T([[0.46575, 0.385, 0.3]]))
    assert torch.allclose(returns, T([[0.96575, 0.985, 1.0]]))


def test_gae_stops_at_the_mask():
    # The response ends after 2 tokens: V(s_2) counts as 0 and the padding's value is ignored.
    # deltas: t1 = 1 + 0 - 0.6 = 0.4, t0 = 0 + 0.6 - 0.5 = 0.1; A0 = 0.1 + 0.95 * 0.4 = 0.48
    advantages, returns = gae(T([[0.0, 1.0, 0.0]]), T([[0.5, 0.6, 0.7]]), T([[1.0, 1.0, 0.0]]), 1.0, 0.95)
    assert torch.allclose(advantages, T([[0.48, 0.4, 0.0]]))
    assert torch.allclose(returns, T([[0.98, 1.0, 0.0]]))


def test_ppo_policy_loss_clips_both_sides():
    logprobs, old = T([[math.log(1.5), math.log(0.5)]]), torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # A = +1: ratio 1.5 -> max(-1.5, -1.2) = -1.2; ratio 0.5 -> max(-0.5, -0.8) = -0.5; mean -0.85
    assert ppo_policy_loss(logprobs, old, torch.ones(1, 2), mask, 0.2).item() == pytest.approx(-0.85)
    # A = -1: ratio 1.5 -> max(1.5, 1.2) = 1.5; ratio 0.5 -> max(0.5, 0.8) = 0.8; mean 1.15
    assert ppo_policy_loss(logprobs, old, -torch.ones(1, 2), mask, 0.2).item() == pytest.approx(1.15)


def test_ppo_value_loss_clips_around_the_old_values():
    # t0: (1 - 1)^2 = 0 vs clipped (0.7 - 1)^2 = 0.09 -> 0.09;  t1: (0 - 1)^2 = 1 vs (0.3 - 1)^2 = 0.49 -> 1
    loss = ppo_value_loss(T([[1.0, 0.0]]), T([[0.5, 0.5]]), T([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1.0) / 2)


def test_dpo_loss_by_hand():
    # implicit rewards: 0.1 * (-1 - -2) = 0.1 and 0.1 * (-3 - -2) = -0.1; loss = log(1 + e^-0.2)
    loss, chosen, rejected = dpo_loss(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)


def test_bradley_terry_loss_by_hand():
    assert bradley_terry_loss(T([1.0]), T([0.0])).item() == pytest.approx(math.log(1 + math.exp(-1)))  # 0.31326
    assert bradley_terry_loss(T([0.0, 2.0]), T([0.0, 0.0])).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.exp(-2))) / 2
    )


def test_sft_loss_counts_response_tokens_only():
    # p(token 1) = 3/4 at every position; targets [1, 0, (masked)] -> -(ln 0.75 + ln 0.25) / 2
    logits = T([[[0.0, math.log(3.0)]] * 3])
    loss = sft_loss(logits, T([[1, 0, 1]]), T([[1.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)
