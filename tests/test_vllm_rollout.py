"""Rollouts through vLLM for real (shared.rollout_backend: vllm): the CPU build, in the trainer's process.

Marked ``vllm`` (`make test-vllm`): the engine is real, its answers are checked token for token against
transformers' generate on the same fp32 weights, before and after an optimizer step has moved them, and a
ReMax stage trains with it end to end.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from remax_bench.core.models import build_tiny_model, load_reward_model, load_tokenizer, save_pretrained
from remax_bench.core.stage import stage_main
from remax_bench.core.suite_file import load_suite_text
from trainers import online
from trainers.engine import TorchEngine
from trainers.sequences import generate, response_logprobs

pytestmark = pytest.mark.vllm

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
PROMPTS = ["reverse the word 'planet'", "uppercase 'harbor'", "sort the letters of 'zebra'",
           "count the letters in 'sky'", "repeat 'ab' 3 times", "first letter of 'orange'", "hello", "x"]


def _suite(**shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update({"rollout_backend": "vllm", "max_prompt_length": 48, "max_response_length": 12, **shared})
    return load_suite_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    # Head dimension 32 (vLLM's CPU attention needs at least 32); sharpened logits so greedy decoding never
    # hinges on a float near-tie; a few eos-heavy rows come from the real eos token of the byte tokenizer.
    model, tokenizer = build_tiny_model("tiny:micro,num_hidden_layers=2", seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    path = save_pretrained(model, tokenizer, tmp_path_factory.mktemp("rollout") / "sft")
    return model, tokenizer, path


@pytest.fixture(scope="module")
def rollouts(policy):
    from trainers.vllm_rollout import VLLMRollouts

    _, tokenizer, path = policy
    engine = VLLMRollouts(str(path), tokenizer, _suite().shared, seed=0, rows=len(PROMPTS), device=torch.device("cpu"))
    yield engine
    engine.close()


def _hf(model, tokenizer, greedy, shared):
    return generate(model, tokenizer, PROMPTS, shared.max_prompt_length, shared.max_response_length,
                    temperature=shared.generation.temperature, top_p=shared.generation.top_p,
                    top_k=shared.generation.top_k, greedy=greedy)


def test_greedy_rollouts_are_the_hf_batches_token_for_token(policy, rollouts):
    model, tokenizer, _ = policy
    shared = _suite().shared
    assert rollouts.engine_kwargs["dtype"] == "float32" and rollouts.engine_kwargs["enable_prefix_caching"] is False
    got, expected = rollouts.generate(PROMPTS, greedy=True), _hf(model, tokenizer, True, shared)
    # The same layout, tensor for tensor: left-padded prompts, answers cut after the first eos and masked.
    assert got.prompt_width == expected.prompt_width
    assert torch.equal(got.input_ids, expected.input_ids)
    assert torch.equal(got.attention_mask, expected.attention_mask)
    assert torch.equal(got.response_mask, expected.response_mask)
    assert got.response_mask.sum() > len(PROMPTS)  # real answers


def test_sampled_and_greedy_rows_in_one_request_batch(policy, rollouts):
    model, tokenizer, _ = policy
    shared = _suite().shared
    greedy = torch.tensor([i % 2 == 0 for i in range(len(PROMPTS))])
    mixed = rollouts.generate(PROMPTS, greedy=greedy)
    all_greedy = _hf(model, tokenizer, True, shared)
    rows = greedy.nonzero().squeeze(-1)
    width = int(mixed.response_mask[rows].sum(-1).max())  # the greedy rows' own answers, within each batch
    assert torch.equal(mixed.response_ids[rows, :width], all_greedy.response_ids[rows, :width])
    assert mixed.response_ids.shape[1] <= shared.max_response_length
    # Past a row's first eos nothing counts: the mask is a prefix of ones ending on eos or at the limit.
    for ids, mask in zip(mixed.response_ids, mixed.response_mask):
        n = int(mask.sum())
        assert torch.all(mask[:n] == 1) and torch.all(mask[n:] == 0)
        assert n == shared.max_response_length or ids[n - 1] == tokenizer.eos_token_id or n == mask.numel()


def test_weights_follow_the_policy_after_an_optimizer_step(policy, rollouts):
    model, tokenizer, _ = policy
    shared = _suite().shared
    before = rollouts.generate(PROMPTS, greedy=True)
    engine = TorchEngine(model, learning_rate=3e-2)
    # One real optimizer step that pushes away from the current greedy answers.
    engine.step((response_logprobs(model, before) * before.response_mask).sum())
    stale = rollouts.generate(PROMPTS, greedy=True)
    assert torch.equal(stale.input_ids, before.input_ids)  # no sync yet: still the old weights
    seconds = rollouts.sync(model)
    after, expected = rollouts.generate(PROMPTS, greedy=True), _hf(model, tokenizer, True, shared)
    assert torch.equal(after.input_ids, expected.input_ids)  # the engine generates with the new weights
    assert not torch.equal(after.input_ids, before.input_ids)
    assert seconds > 0 and rollouts.record()["weight_syncs"] == 1


def test_remax_stage_trains_with_vllm_rollouts(policy, tmp_path):
    _, tokenizer, sft = policy
    suite = _suite(iterations=3, rollout_batch_size=4, train_batch_size=4)
    rm = save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), tmp_path / "rm")
    config = tmp_path / "remax.json"
    config.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": suite.resolved(),
                                  "inputs": {"sft": str(sft), "reward_model": str(rm)}}))
    out = tmp_path / "remax" / "seed0"
    assert stage_main("remax", online.train, ["--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    engine = summary["rollout_engine"]
    assert engine["backend"] == "vllm" and engine["engine_start_s"] > 0
    assert engine["weight_syncs"] == 2  # before iterations 2 and 3: after each optimizer step but the last
    assert engine["engine_kv_cache_bytes"] > 0 and engine["engine_weight_bytes"] > 0
    assert summary["time_split_s"]["sync"] > 0 and summary["generate_ms_per_token"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rollout_engine"]["vllm_llm_kwargs"]["max_num_seqs"] == 8  # 4 sampled + 4 greedy answers
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["time_sync_s"] >= 0 for row in rows)


@pytest.mark.deepspeed
def test_zero3_policy_syncs_gathered_weights(policy, tmp_path):
    """Under ZeRO-3 each rank holds a shard of every weight; the sync gathers them module by module. vLLM's
    weight loaders reject a tensor of the wrong shape, so a stage that completes has handed over whole weights."""
    pytest.importorskip("deepspeed")
    import subprocess
    import sys

    _, _, sft = policy
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update({"rollout_backend": "vllm", "max_prompt_length": 48, "max_response_length": 12,
                           "iterations": 2})
    data["runtime"]["deepspeed"] = {"enabled": True, "zero_stage": 3}
    suite = load_suite_text(yaml.safe_dump(data))
    rm = save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), tmp_path / "rm")
    config = tmp_path / "remax.json"
    config.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": suite.resolved(),
                                  "inputs": {"sft": str(sft), "reward_model": str(rm)}}))
    out = tmp_path / "remax" / "seed0"
    proc = subprocess.run([sys.executable, "-m", "trainers.remax", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollout_engine"]["weight_syncs"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deepspeed_configs"][0]["zero_optimization"]["stage"] == 3


def test_bf16_checkpoint_with_a_bos_tokenizer(tmp_path):
    """The real-checkpoint path: weights saved in bf16 (the trainer holds them in fp32, the engine is built in
    fp32 from the same file), a BPE tokenizer that adds <s> and a chat template that holds it too: each rollout
    prompt starts with exactly one BOS, and greedy answers are those of generate on the policy."""
    import sys

    from remax_bench.core.models import load_causal_lm
    from trainers.vllm_rollout import VLLMRollouts

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from real_checkpoints import MISTRAL_STYLE_TEMPLATE, llama_style_tokenizer, save_llama

    path = save_llama(tmp_path / "llama-bf16", torch.bfloat16, llama_style_tokenizer(MISTRAL_STYLE_TEMPLATE),
                      hidden_size=64)
    sharpened = load_causal_lm(str(path))
    with torch.no_grad():  # decisive logits, then saved in bf16 again
        sharpened.lm_head.weight.mul_(12.0)
    sharpened.to(torch.bfloat16).save_pretrained(path)
    tokenizer, policy = load_tokenizer(str(path)), load_causal_lm(str(path))
    assert next(policy.parameters()).dtype == torch.float32
    shared = _suite().shared
    # Last in this module: a second in-process engine ending tears down vLLM's process-wide parallel state.
    engine = VLLMRollouts(str(path), tokenizer, shared, seed=0, rows=len(PROMPTS), device=torch.device("cpu"))
    got = engine.generate(PROMPTS, greedy=True)
    expected = generate(policy, tokenizer, PROMPTS, shared.max_prompt_length, shared.max_response_length, greedy=True)
    assert engine.engine_kwargs["dtype"] == "float32"
    assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.response_mask, expected.response_mask)
    assert got.response_mask.sum() > len(PROMPTS)  # real answers, not eos at once
    bos = tokenizer.bos_token_id
    for ids, mask in zip(got.input_ids[:, : got.prompt_width], got.attention_mask[:, : got.prompt_width]):
        prompt = ids[mask.bool()]
        assert prompt[0] == bos and int((prompt == bos).sum()) == 1
