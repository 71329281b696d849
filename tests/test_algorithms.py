"""The offline update rules against numbers worked out by hand (the comments show the arithmetic).

ReMax, PPO and the rollout engine have their own files: test_remax.py, test_ppo.py, test_rollout.py.
"""

import math

import pytest
import torch

from trainers.dpo import dpo_loss
from trainers.reward_model import bradley_terry_loss
from trainers.sft import sft_loss

T = torch.tensor


def test_dpo_loss_by_hand():
    # implicit rewards: 0.1 * (-1 - -2) = 0.1 and 0.1 * (-3 - -2) = -0.1; loss = log(1 + e^-0.2)
    loss, chosen, rejected = dpo_loss(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)


def test_dpo_loss_uses_each_reference_log_prob_on_its_own_side():
    # Reference log-probs differ from each other and from the policy's, so a loss that ignores the reference,
    # or swaps chosen and rejected reference values, gives other numbers.
    #   row 0: chosen 0.5 * (-1 - -0.5) = -0.25, rejected 0.5 * (-3 - -4) = 0.5  -> margin -0.75
    #   row 1: chosen 0.5 * (-2 - -2) = 0,       rejected 0.5 * (-2 - -1) = -0.5 -> margin 0.5
    loss, chosen, rejected = dpo_loss(T([-1.0, -2.0]), T([-3.0, -2.0]), T([-0.5, -2.0]), T([-4.0, -1.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(0.75)) + math.log(1 + math.exp(-0.5))) / 2)
    assert chosen.tolist() == pytest.approx([-0.25, 0.0]) and rejected.tolist() == pytest.approx([0.5, -0.5])
    no_reference = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.0))) / 2  # margins 1.0 and 0
    swapped = (math.log(1 + math.exp(-2.75)) + math.log(1 + math.exp(0.5))) / 2  # margins 2.75 and -0.5
    assert abs(loss.item() - no_reference) > 0.1 and abs(loss.item() - swapped) > 0.1


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
