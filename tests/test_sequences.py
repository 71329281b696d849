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


# -- rows that share a prompt: one pass over each distinct prompt -------------------------------------------
def _shared_batch(seed=0):
    model, tok = build_tiny_model("tiny:nano", seed=seed)
    prompts = ["Reverse: abc", "Uppercase: abcdefgh", "Sort the letters: hgab"]
    torch.manual_seed(seed)
    # k = 2 sampled answers per prompt, then one greedy answer per prompt (ReMax's layout)
    batch = generate(model, tok, [p for p in prompts for _ in range(2)] + prompts, 64, 6,
                     greedy=torch.tensor([False] * 6 + [True] * 3))
    return model, tok, batch


def _tokens_seen(model):
    """Tokens the model's embedding looks up, call by call: what each pass costs."""
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    return seen


def _one_pass(model, batch, fn):
    """``fn`` with prompt sharing off (each row its own copy of its prompt): the reference figures."""
    import trainers.sequences as sequences

    real = sequences._shared
    sequences._shared = lambda model, batch: None
    try:
        return fn(model, batch)
    finally:
        sequences._shared = real


def test_rows_of_one_prompt_share_its_pass_and_get_the_same_log_probs_and_gradients():
    from trainers.sequences import SharedPrompts

    model, _, batch = _shared_batch()
    width = batch.prompt_width
    shared = SharedPrompts.of(batch.input_ids[:, :width], batch.attention_mask[:, :width])
    owner = shared.owner.tolist()
    assert len(shared.input_ids) == 3 and len(set(owner)) == 3
    assert owner[0] == owner[1] == owner[6] and owner[2] == owner[3] == owner[7] and owner[4] == owner[5] == owner[8]
    model.train()
    seen = _tokens_seen(model)
    logits = forward_logits(model, batch)
    # the three prompts once, then the nine answers on top of them
    assert seen == [3 * width, 9 * (batch.input_ids.shape[1] - width)]
    (logits.logsumexp(-1) * batch.response_mask).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = _one_pass(model, batch, forward_logits)
    assert seen[-1] == 9 * batch.input_ids.shape[1]  # the plain pass: every row its whole sequence
    assert torch.allclose(logits, reference, atol=1e-5)
    (reference.logsumexp(-1) * batch.response_mask).sum().backward()
    for shared_grad, p in zip(grads, model.parameters()):
        assert torch.allclose(shared_grad, p.grad, atol=1e-5)


def test_gradient_checkpointing_while_training_takes_the_whole_sequence_pass():
    from trainers.sequences import can_share_prompts

    model, _, batch = _shared_batch()
    model.gradient_checkpointing_enable()
    model.train()
    assert not can_share_prompts(model)  # transformers drops the keys and values inside checkpointed layers
    seen = _tokens_seen(model)
    forward_logits(model, batch)
    assert seen == [9 * batch.input_ids.shape[1]]
    with torch.no_grad():
        assert can_share_prompts(model)  # scoring passes (no gradient) still share


def test_reward_scores_and_critic_values_on_shared_prompts():
    from remax_bench.core.models import load_reward_model, save_pretrained
    from trainers.online import critic_values
    from trainers.sequences import sequence_scores

    model, tok, batch = _shared_batch()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, tok, folder)
        reward = load_reward_model(folder, seed=1, new_head=True).eval()
    with torch.no_grad():
        seen = _tokens_seen(reward)
        scores = sequence_scores(reward, batch)
        assert seen == [3 * batch.prompt_width, 9 * (batch.input_ids.shape[1] - batch.prompt_width)]
        assert torch.allclose(scores, _one_pass(reward, batch, sequence_scores), atol=1e-5)
        assert torch.allclose(scores, reward(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                             position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
                                             ).logits.squeeze(-1), atol=1e-5)  # transformers' own head and pooling
        values = critic_values(reward, batch)
        assert values.shape == batch.response_mask.shape
        assert torch.allclose(values, _one_pass(reward, batch, critic_values), atol=1e-5)


def test_generation_prefills_each_distinct_prompt_once():
    model, tok = build_tiny_model("tiny:nano", seed=0)
    prompts = ["Reverse: abc", "Uppercase: abcdefgh"]
    alone = generate(model, tok, prompts, 64, 6, greedy=True)
    seen = _tokens_seen(model)
    twice = generate(model, tok, prompts * 2, 64, 6, greedy=True)
    # the two prompts but their last token once, then the four rows from their last prompt token on
    assert seen[0] == 2 * (alone.prompt_width - 1) and seen[1] == 4
    assert torch.equal(twice.input_ids, torch.cat([alone.input_ids, alone.input_ids]))
