import math

import torch

from remax_bench.core.models import build_tiny_model
from trainers.sequences import (
    GreedyRows,
    decode_responses,
    encode_pairs,
    forward_logits,
    generate,
    masked_mean,
    response_mask_from_ids,
    token_logprobs,
)


def test_response_mask_stops_after_first_eos():
    eos = 9
    ids = torch.tensor([[1, 2, 9, 9, 3], [1, 9, 2, 2, 2], [1, 2, 3, 4, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    assert torch.equal(response_mask_from_ids(ids, eos), expected)


def test_token_logprobs_match_hand_computed_softmax():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert torch.allclose(token_logprobs(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.75)]]))
    assert torch.allclose(token_logprobs(logits, torch.tensor([[0]])), torch.tensor([[math.log(0.25)]]))


def test_masked_mean_ignores_masked_positions():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == 1.5


def test_greedy_rows_only_changes_flagged_rows():
    scores = torch.tensor([[0.1, 2.0, 0.3], [0.5, 0.1, 0.2]])
    out = GreedyRows(torch.tensor([True, False]))(None, scores)
    assert out[0, 1] == 0.0 and torch.isinf(out[0, 0]) and torch.isinf(out[0, 2])
    assert torch.equal(out[1], scores[1])


def test_encode_pairs_layout():
    _, tok = build_tiny_model("tiny:nano")
    batch = encode_pairs(tok, ["ab", "abcd"], ["x", "xyz"], max_prompt_length=32, max_response_length=8)
    # Prompts are left padded to the same width; responses end with eos and are right padded.
    assert batch.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.response_ids[0, 1].item() == tok.eos_token_id
    assert batch.response_ids[0, 2].item() == tok.pad_token_id
    assert batch.input_ids[0, 0].item() == tok.pad_token_id  # left padding of the shorter prompt


def test_generation_sampled_and_greedy_rows_in_one_pass_agree_with_forward():
    model, tok = build_tiny_model("tiny:nano", seed=0)
    prompts = ["Reverse: abc", "Uppercase: abcdefgh"]
    greedy = generate(model, tok, prompts, 64, 6, greedy=True)
    torch.manual_seed(0)
    mixed = generate(model, tok, prompts * 2, 64, 6, greedy=torch.tensor([False, False, True, True]))
    # The greedy half of the mixed pass is the all-greedy answer.
    assert torch.equal(mixed.input_ids[2:], greedy.input_ids)
    # Position ids follow the attention mask, so a forward pass picks the same greedy tokens.
    predicted = forward_logits(model, greedy).argmax(-1)
    assert torch.equal(predicted[greedy.response_mask.bool()], greedy.response_ids[greedy.response_mask.bool()])
    assert len(decode_responses(tok, greedy)) == 2
