"""Judges: the OpenAI-compatible path against a fake server, the local vLLM server's seam, gold and
reward-model verdicts, retries, unjudged counting, the judgment cache and key hygiene."""

import json
import math
import socket
import sys
import time
import types
from pathlib import Path

import pytest

from remax_bench.evaluation.alpaca import judge_alpaca_eval
from remax_bench.evaluation.cache import JudgmentCache
from remax_bench.evaluation.common import EvalError
from remax_bench.evaluation.data import judge_prompts, mt_bench_questions, mt_bench_reference_answers
from remax_bench.evaluation.judges import GoldJudge, RewardModelJudge, reward_to_rating
from remax_bench.evaluation.llm_judges import OpenAIJudge, VLLMLocalJudge, parse_pairwise, parse_rating
from remax_bench.evaluation.mt_bench import judge_mt_bench
from remax_bench.evaluation.server import ManagedServer, vllm_serve_command
from remax_bench.evaluation.verdicts import PairwiseItem, SingleItem

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from fake_openai_server import FakeOpenAI, default_reply  # noqa: E402

KEY_ENV = "REMAX_BENCH_TEST_JUDGE_KEY"
KEY = "sk-test-4f9c2e71d8b3a6"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _judge(url, **kw):
    kw.setdefault("max_retries", 0)
    return OpenAIJudge("judge-model", base_url=url, api_key_env=KEY_ENV, backoff_s=0.01, workers=2, **kw)


def _outputs(pairs, generator):
    return [{"instruction": i, "output": o, "generator": generator, "dataset": "t"} for i, o in pairs]


# Eight instructions; the model's output is the GOOD one in six of them.
PAIRS = [(f"Task {k}: say something.", "GOOD answer" if k < 6 else "weak", "GOOD answer" if k >= 6 else "meh")
         for k in range(8)]
MODEL = _outputs([(i, m) for i, m, _ in PAIRS], "policy")
REFERENCE = _outputs([(i, r) for i, _, r in PAIRS], "sft")


# -- parsing ---------------------------------------------------------------------------------------
def test_verdict_parsers():
    assert [parse_pairwise(t) for t in ("m", " M. ", "Output (m)", "[[M]]", "`m`")] == ["m", "M", "m", "M", "m"]
    assert [parse_pairwise(t) for t in ("maybe", "mM", "", "Output m is better")] == [None] * 4
    assert parse_rating("Fine. Rating: [[7]]") == 7.0 and parse_rating("[[7.5]]") == 7.5
    assert parse_rating("grade [3] overall") == 3.0  # FastChat's fallback pattern
    assert parse_rating("Rating: [[11]]") is None and parse_rating("no grade") is None


# -- the openai judge against a fake server --------------------------------------------------------
def test_pairwise_request_shape_and_alpaca_eval_win_rate(key):
    with FakeOpenAI() as fake:
        judge = _judge(fake.url)
        result, rows = judge_alpaca_eval(MODEL, REFERENCE, judge)
        requests = fake.chat_requests()
    assert len(requests) == 8
    for r in requests:
        body = r["body"]
        assert body["model"] == "judge-model" and body["temperature"] == 0
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert r["headers"]["authorization"] == f"Bearer {key}"
    # Both presentation orders occur; whatever the order, the GOOD output wins.
    assert {row["judge_extra"]["swapped"] for row in rows} == {True, False}
    assert [row["preference"] for row in rows] == [2.0] * 6 + [1.0] * 2
    assert result["win_rate"] == 75.0 and result["n_judged"] == 8 and result["n_unjudged"] == 0
    # alpaca_eval's standard error: sem of [1]*6 + [0]*2, in percent
    assert result["standard_error"] == pytest.approx(100 * math.sqrt(0.75 * 0.25 * 8 / 7) / math.sqrt(8))
    assert result["win_rate_ci"][0] <= 75.0 <= result["win_rate_ci"][1]
    assert rows[0]["generator_1"] == "sft" and rows[0]["generator_2"] == "policy"


def test_a_500_is_retried(key):
    def flaky(body, headers):
        return (500, "overloaded") if len(fake.chat_requests()) == 1 else default_reply(body, headers)

    with FakeOpenAI(flaky) as fake:
        verdicts = _judge(fake.url, max_retries=2).pairwise([PairwiseItem("Say hi.", "meh", "GOOD hi")])
        assert len(fake.chat_requests()) == 2
    assert verdicts[0].value == 2.0 and verdicts[0].attempts == 2


def test_unparseable_verdict_is_unjudged_and_counted(key):
    def reply(body, headers):
        if "Task 3:" in body["messages"][-1]["content"]:
            return 200, "Both outputs have merits."
        return default_reply(body, headers)

    with FakeOpenAI(reply) as fake:
        result, rows = judge_alpaca_eval(MODEL, REFERENCE, _judge(fake.url, max_retries=2))
        asked = [r for r in fake.chat_requests() if "Task 3:" in r["body"]["messages"][-1]["content"]]
    assert len(asked) == 3  # 1 + max_retries
    assert result["n"] == 8 and result["n_judged"] == 7 and result["n_unjudged"] == 1
    assert result["win_rate"] == pytest.approx(100 * 5 / 7)  # five wins among the seven judged
    bad = [r for r in rows if r["preference"] is None]
    assert len(bad) == 1 and "unparseable" in bad[0]["error"] and result["unjudged"][0]["instruction"].startswith("Task 3")


def test_single_grading_uses_fastchat_prompts_and_rating_format(key):
    prompts = judge_prompts(str(FIXTURES / "judge_prompts.jsonl"))
    source = str(FIXTURES / "mt_bench" / "question.jsonl")
    questions = mt_bench_questions(source)
    refs = mt_bench_reference_answers(source, questions)
    assert refs == {2: ["5", "20"]}
    answers = [["red", "blue"], ["5", "20"], ["Ahoy!", "Farewell!"]]

    def reply(body, headers):
        text = body["messages"][-1]["content"]
        if "REFERENCE" in text:
            return 200, "Matches the reference. [[9]]"
        if "SECOND ANSWER" in text:
            return 200, "Good follow-up [8]"  # FastChat's single-bracket fallback
        return 200, "Rating: [[4]]"

    with FakeOpenAI(reply) as fake:
        judge = OpenAIJudge("judge-model", base_url=fake.url, api_key_env=KEY_ENV, max_retries=0, judge_prompts=prompts)
        result, rows = judge_mt_bench(questions, answers, "policy", judge, reference_answers=refs)
        requests = fake.chat_requests()
    assert [(r["question_id"], r["turn"], r["score"]) for r in rows] == [
        (1, 1, 4.0), (1, 2, 8.0), (2, 1, 9.0), (2, 2, 9.0), (3, 1, 4.0), (3, 2, 8.0)]
    assert [r["judge"][1] for r in rows[:4]] == ["single-v1", "single-v1-multi-turn", "single-math-v1",
                                                 "single-math-v1-multi-turn"]
    assert result["turn1"] == pytest.approx(17 / 3) and result["turn2"] == pytest.approx(25 / 3)
    assert result["score"] == pytest.approx(7.0)
    assert result["by_category"] == {"math": 9.0, "roleplay": 6.0, "writing": 6.0}
    math_turn2 = next(r["body"]["messages"] for r in requests if "SECOND REFERENCE" in r["body"]["messages"][-1]["content"])
    assert math_turn2[0]["content"] == prompts["single-math-v1-multi-turn"]["system_prompt"]
    user = math_turn2[1]["content"]
    assert "FIRST REFERENCE: 5" in user and "SECOND REFERENCE: 20" in user and "SECOND ANSWER: 20" in user
    assert result["ci"][0] <= 7.0 <= result["ci"][1] and result["n_unjudged"] == 0


def test_cache_hit_on_rerun_and_unjudged_items_are_asked_again(key, tmp_path):
    def reply(body, headers):
        if "Task 0:" in body["messages"][-1]["content"]:
            return 200, "undecided"
        return default_reply(body, headers)

    with FakeOpenAI(reply) as fake:
        first, _ = judge_alpaca_eval(MODEL, REFERENCE, _judge(fake.url), JudgmentCache(tmp_path / "cache.jsonl"))
        assert len(fake.chat_requests()) == 8
        # A fresh process: the cache is read back from disk.
        second, rows = judge_alpaca_eval(MODEL, REFERENCE, _judge(fake.url), JudgmentCache(tmp_path / "cache.jsonl"))
        assert len(fake.chat_requests()) == 9  # only the unjudged item is asked again
    assert first["n_cached"] == 0 and second["n_cached"] == 7 and second["n_unjudged"] == 1
    assert second["win_rate"] == first["win_rate"]
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 7


def test_a_changed_judge_model_is_not_a_cache_hit(key, tmp_path):
    with FakeOpenAI() as fake:
        judge_alpaca_eval(MODEL[:2], REFERENCE[:2], _judge(fake.url), JudgmentCache(tmp_path / "c.jsonl"))
        other = OpenAIJudge("another-judge", base_url=fake.url, api_key_env=KEY_ENV, max_retries=0)
        judge_alpaca_eval(MODEL[:2], REFERENCE[:2], other, JudgmentCache(tmp_path / "c.jsonl"))
        assert len(fake.chat_requests()) == 4


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    judge = OpenAIJudge("judge-model", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    with pytest.raises(EvalError, match=KEY_ENV):
        judge.pairwise([PairwiseItem("a", "b", "c")])


def test_key_never_written_to_any_file(key, tmp_path):
    """A 401 whose message echoes the key, a re-run from the cache: the key string is in no written file."""
    from remax_bench.core.config import Eval
    from remax_bench.core.models import build_tiny_model, save_pretrained
    from remax_bench.evaluation import evaluate_checkpoint

    checkpoint = save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path / "ckpt")
    ev = Eval.model_validate({
        "backend": "hf", "generation": {"max_new_tokens": 4, "batch_size": 8},
        "alpaca_eval": {"prompts": str(FIXTURES / "alpaca_instructions.json")},
        "mt_bench": {"questions": str(FIXTURES / "mt_bench" / "question.jsonl"),
                     "judge_prompts": str(FIXTURES / "judge_prompts.jsonl")},
        "judge": {"type": "openai", "model": "judge-model", "api_key_env": KEY_ENV, "max_retries": 0},
        "bootstrap_samples": 50, "max_unjudged_fraction": 0.5,  # 1 of 3 pairs unjudged: the figures still count
    })
    reference = [{"instruction": i, "output": "GOOD", "generator": "ref"} for i in
                 ("Name a fruit.", "Count to three.", "Say hello.")]

    def reply(body, headers):
        if "Say hello." in body["messages"][-1]["content"]:
            return 401, f"Incorrect API key provided: {headers['authorization'].removeprefix('Bearer ')}"
        return default_reply(body, headers)

    with FakeOpenAI(reply) as fake:
        ev.judge.base_url = fake.url
        out = tmp_path / "eval"
        row = evaluate_checkpoint(checkpoint, ev, out, reference_outputs=reference, generator_name="nano",
                                  cache_path=tmp_path / "cache.jsonl")
        n_first = len(fake.chat_requests())
        again = evaluate_checkpoint(checkpoint, ev, out, reference_outputs=reference, generator_name="nano",
                                    cache_path=tmp_path / "cache.jsonl")
        assert len(fake.chat_requests()) == n_first + 1  # only the failed item is asked again
        assert all(r["headers"]["authorization"] == f"Bearer {key}" for r in fake.chat_requests())
    assert n_first == 3 + 6 and row["n_unjudged"] == 1 and again["n_unjudged"] == 1
    assert row["mt_bench_score"] == 6.0 and row["mt_bench_n_unjudged"] == 0
    judgments = [json.loads(text) for text in (out / "alpaca_eval_judgments.jsonl").read_text().splitlines()]
    failed = [j for j in judgments if j["preference"] is None]
    assert len(failed) == 1 and "***" in failed[0]["error"] and "AuthenticationError" in failed[0]["error"]
    written = [p for p in [*out.rglob("*"), tmp_path / "cache.jsonl"] if p.is_file()]
    assert len(written) >= 9
    for path in written:
        assert KEY not in path.read_text(errors="replace"), path


# -- vLLM at its seam: the command line, the health wait, the always-stop --------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_command_line():
    # The server runs under this environment's own Python, never a `vllm` found first on PATH.
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm_serve_command("org/judge-7b", 8011, ["--max-model-len", "4096", "--dtype", "bfloat16"]) == [
        *server, "--model", "org/judge-7b", "--host", "127.0.0.1", "--port", "8011",
        "--max-model-len", "4096", "--dtype", "bfloat16"]
    judge = VLLMLocalJudge("org/judge-7b", port=8123, serve_args=["--served-model-name", "judge"])
    assert judge.command[:9] == [*server, "--model", "org/judge-7b", "--host", "127.0.0.1", "--port", "8123"]
    assert judge.base_url == "http://127.0.0.1:8123/v1" and judge.request_model == "judge"


def _stand_in(tmp_path, healthy=True):
    """python -m http.server answering /health and /v1/models with 200 (or 404 when not healthy)."""
    root = tmp_path / "www"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "models").write_text("{}")
    if healthy:
        (root / "health").write_text("ok")
    port = _free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    return command, port


def test_server_waits_for_health_and_is_always_stopped(tmp_path):
    command, port = _stand_in(tmp_path)
    server = ManagedServer(command, port=port, startup_timeout_s=30, poll_interval_s=0.1, log_path=tmp_path / "s.log")
    with server:
        assert server.process.poll() is None and server.startup_s is not None
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert server.process.poll() is not None
    # Also when the work inside fails.
    server = ManagedServer(command, port=port, startup_timeout_s=30, poll_interval_s=0.1)
    with pytest.raises(RuntimeError, match="judging failed"):
        with server:
            raise RuntimeError("judging failed")
    assert server.process.poll() is not None


def test_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path):
    command, port = _stand_in(tmp_path, healthy=False)
    server = ManagedServer(command, port=port, startup_timeout_s=1.5, poll_interval_s=0.1, log_path=tmp_path / "s.log")
    start = time.time()
    with pytest.raises(EvalError, match="not healthy after"):
        with server:
            pass
    assert time.time() - start < 15 and server.process.poll() is not None


def test_server_that_exits_early_is_reported_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no GPU found'); sys.exit(3)"]
    server = ManagedServer(command, port=_free_port(), startup_timeout_s=30, poll_interval_s=0.1,
                           log_path=tmp_path / "s.log")
    with pytest.raises(EvalError, match=r"exited with code 3[\s\S]*no GPU found"):
        with server:
            pass


def test_vllm_local_judge_end_to_end_against_a_stand_in_server(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)  # a local server needs no key
    port = _free_port()
    command = [sys.executable, str(FIXTURES / "fake_openai_server.py"), str(port)]
    judge = VLLMLocalJudge("org/judge-7b", port=port, command=command, api_key_env=KEY_ENV, max_retries=0,
                           startup_timeout_s=30, log_path=tmp_path / "vllm.log",
                           judge_prompts=judge_prompts(str(FIXTURES / "judge_prompts.jsonl")))
    with judge:
        process = judge.server.process
        pairwise = judge.pairwise([PairwiseItem("Say hi.", "meh", "GOOD hi"), PairwiseItem("Say no.", "GOOD no", "x")])
        single = judge.single([SingleItem({"question_id": 1, "category": "writing", "turns": ["Hi?"]}, ["Hello"], 1)])
    assert [v.value for v in pairwise] == [2.0, 1.0] and single[0].value == 6.0
    assert process.poll() is not None and judge.server is None
    assert judge.identity() == {"type": "vllm_local", "model": "org/judge-7b", "serve_args": []}


def test_vllm_generator_builds_engine_and_sampling_arguments(tmp_path, monkeypatch):
    """The vLLM backend against a stand-in ``vllm`` module: the exact LLM / SamplingParams kwargs, token-id
    prompts, and one engine per checkpoint."""
    from remax_bench.core.config import Eval
    from remax_bench.core.models import build_tiny_model, save_pretrained
    from remax_bench.evaluation import generation

    checkpoint = save_pretrained(*build_tiny_model("tiny:nano", 0), tmp_path / "ckpt")
    calls = {"llm": [], "sampling": [], "generate": []}
    from remax_bench.core.models import load_tokenizer

    gen_tokenizer = [load_tokenizer(str(checkpoint))]  # the stand-in engine answers in the checkpoint's tokens

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"].append(kwargs)
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=512))

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"].append((prompts, params))
            tok = gen_tokenizer[0]
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                token_ids=tok(f" answer {i} ", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])])
                for i in range(len(prompts))]

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["sampling"].append(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    monkeypatch.setattr(generation, "cuda_available", lambda: True)
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: False)  # the CUDA build's arguments
    ev = Eval.model_validate({"backend": "auto", "generation": {"max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9}})
    with generation.open_generator(str(checkpoint), ev, seed=5, precision="bf16") as gen:
        answers = gen.generate([[{"role": "user", "content": "Reverse: abc"}], [{"role": "user", "content": "Hi"}]])
    assert answers == ["answer 0", "answer 1"]
    assert calls["llm"] == [{"model": str(checkpoint), "tokenizer": str(checkpoint), "dtype": "bfloat16", "seed": 5,
                             "tensor_parallel_size": 1, "gpu_memory_utilization": 0.85, "trust_remote_code": False}]
    assert calls["sampling"] == [{"n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 5,
                                  "skip_special_tokens": True}]
    assert gen.record["vllm_llm_kwargs"] == calls["llm"][0] and gen.record["vllm_sampling_kwargs"] == calls["sampling"][0]
    prompts, _ = calls["generate"][0]
    tok = gen.tokenizer
    assert prompts[0]["prompt_token_ids"] == tok("<|user|>Reverse: abc<|assistant|>", add_special_tokens=False)["input_ids"]
    assert generation.vllm_sampling_kwargs(generation.GenerationSettings(temperature=0.0, top_p=0.5))["top_p"] == 1.0


# -- gold and reward-model judges ------------------------------------------------------------------
def test_gold_judge_three_wins_one_loss_is_75_percent():
    model = _outputs([("Uppercase: abc", "ABC"), ("Reverse: abcd", "dcba"), ("Sort the letters: cab", "abc"),
                      ("Reverse: abc", "cbx")], "policy")
    reference = _outputs([("Uppercase: abc", "ABX"), ("Reverse: abcd", "dcb"), ("Sort the letters: cab", ""),
                          ("Reverse: abc", "cba")], "sft")
    result, rows = judge_alpaca_eval(model, reference, GoldJudge())
    assert [r["preference"] for r in rows] == [2.0, 2.0, 2.0, 1.0]
    assert result["win_rate"] == 75.0 and result["standard_error"] == pytest.approx(25.0)
    assert (result["n_wins"], result["n_wins_base"], result["n_draws"]) == (3, 1, 0)


def test_gold_judge_ties_single_grades_and_foreign_instructions():
    verdicts = GoldJudge().pairwise([PairwiseItem("Reverse: abc", "cbx", "xba"), PairwiseItem("Write a poem.", "a", "b")])
    assert verdicts[0].value == 1.5
    assert verdicts[1].value is None and "not an instruction of the synthetic task" in verdicts[1].error
    q = {"question_id": 1, "category": "reverse", "turns": ["Reverse: abc", "Uppercase: abc"]}
    single = GoldJudge().single([SingleItem(q, ["cba", ""], 1), SingleItem(q, ["cba", ""], 2)])
    assert [v.value for v in single] == [10.0, 1.0]


def test_reward_model_judge_scores_are_padding_invariant_and_mapped_to_1_10(tmp_path):
    from remax_bench.core.models import byte_tokenizer, load_reward_model, save_pretrained

    save_pretrained(load_reward_model("tiny:nano", seed=3, new_head=True), byte_tokenizer(), tmp_path / "rm")
    judge = RewardModelJudge(str(tmp_path / "rm"), batch_size=4)
    convs = [[{"role": "user", "content": "Reverse: abc"}], [{"role": "user", "content": "Uppercase: abcdefgh"}]]
    answers = ["cba", "ABCDEFGH and more"]
    together = judge.scores(convs, answers)
    alone = [judge.scores([c], [a])[0] for c, a in zip(convs, answers)]
    assert together == pytest.approx(alone, abs=1e-5)
    pair = judge.pairwise([PairwiseItem("Reverse: abc", "cba", "abc")])[0]
    s1, s2 = pair.extra["score_1"], pair.extra["score_2"]
    assert pair.value == (2.0 if s2 > s1 else 1.0 if s1 > s2 else 1.5)
    q = {"question_id": 1, "category": "reverse", "turns": ["Reverse: abc", "Uppercase: abc"]}
    graded = judge.single([SingleItem(q, ["cba", "ABC"], 2)])[0]
    assert graded.value == pytest.approx(1 + 9 / (1 + math.exp(-graded.extra["reward"])))
    assert reward_to_rating(0.0) == 5.5 and 1.0 < reward_to_rating(-30) < 1.001 and 9.999 < reward_to_rating(30) < 10


def test_build_judge_from_the_suite_block(tmp_path):
    from remax_bench.core.config import Judge
    from remax_bench.evaluation import build_judge

    assert isinstance(build_judge(Judge(type="gold")), GoldJudge)
    assert build_judge(Judge(type="reward_model"), reward_model=str(tmp_path / "rm")).checkpoint == str(tmp_path / "rm")
    assert build_judge(Judge(type="reward_model", model="org/judge-rm"), reward_model="x").checkpoint == "org/judge-rm"
    with pytest.raises(EvalError, match="needs a reward-model checkpoint"):
        build_judge(Judge(type="reward_model"))
    judge = build_judge(Judge(type="openai", model="gpt-4", base_url="http://127.0.0.1:9/v1", max_retries=5, timeout_s=7.0))
    assert (judge.model, judge.base_url, judge.max_retries, judge.timeout_s) == ("gpt-4", "http://127.0.0.1:9/v1", 5, 7.0)
    local = build_judge(Judge(type="vllm_local", model="org/j", port=8999, serve_args=["--dtype", "bfloat16"]),
                        log_dir=tmp_path)
    assert local.command == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "org/j",
                             "--host", "127.0.0.1", "--port", "8999", "--dtype", "bfloat16"]
    assert local.log_path == tmp_path / "vllm_judge_server.log"


def test_judging_killed_midway_keeps_every_verdict_and_the_rerun_asks_only_the_rest(key, tmp_path):
    """A judging process killed with SIGKILL after four answers: the four are on disk, a torn last line is
    tolerated, and the re-run sends exactly the four requests not yet answered."""
    import os
    import signal
    import subprocess

    release = {"hang": True}

    def reply(body, headers):
        while release["hang"] and "Task 4:" in body["messages"][-1]["content"]:
            time.sleep(0.05)
        return default_reply(body, headers)

    cache_path = tmp_path / "cache.jsonl"
    script = (
        "import json, sys\n"
        "from remax_bench.evaluation.alpaca import judge_alpaca_eval\n"
        "from remax_bench.evaluation.cache import JudgmentCache\n"
        "from remax_bench.evaluation.judges import OpenAIJudge\n"
        "model, reference = json.load(open(sys.argv[2]))\n"
        f"judge = OpenAIJudge('judge-model', base_url=sys.argv[1], api_key_env={KEY_ENV!r}, workers=1, max_retries=0)\n"
        "judge_alpaca_eval(model, reference, judge, JudgmentCache(sys.argv[3]))\n"
    )
    data = tmp_path / "outputs.json"
    data.write_text(json.dumps([MODEL, REFERENCE]))
    with FakeOpenAI(reply) as fake:
        proc = subprocess.Popen([sys.executable, "-c", script, fake.url, str(data), str(cache_path)])
        deadline = time.time() + 120
        while time.time() < deadline and (not cache_path.is_file() or len(cache_path.read_text().splitlines()) < 4):
            assert proc.poll() is None, "the judging process ended before it was killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        release["hang"] = False
        lines = cache_path.read_text().splitlines()
        assert len(lines) == 4 and all(json.loads(line)["value"] is not None for line in lines)
        with open(cache_path, "a") as f:
            f.write('{"key": "torn')  # a write cut short by the kill
        asked = len(fake.chat_requests())
        result, rows = judge_alpaca_eval(MODEL, REFERENCE, _judge(fake.url), JudgmentCache(cache_path))
        assert len(fake.chat_requests()) - asked == 4  # only what was not yet answered
    assert result["n_cached"] == 4 and result["n_unjudged"] == 0
    assert result["win_rate"] == pytest.approx(75.0)
    assert len(JudgmentCache(cache_path).entries) == 8


def test_alpaca_eval_pairs_go_through_alpaca_evals_own_annotator(monkeypatch, tmp_path):
    """The leaderboard's annotator (weighted_alpaca_eval_gpt4_turbo) pointed at an OpenAI-compatible server on
    127.0.0.1: the server must see exactly alpaca_eval's requests, and the weighted preferences come back."""
    import alpaca_eval

    from remax_bench.core.config import Judge
    from remax_bench.evaluation.alpaca import judge_alpaca_eval

    monkeypatch.setenv(KEY_ENV, "sk-alpaca-test")
    outputs = [{"instruction": f"task {i}", "output": f"model answer {i}" + (" GOOD" if i % 2 else ""),
                "generator": "policy"} for i in range(4)]
    reference = [{"instruction": f"task {i}", "output": f"reference answer {i}" + ("" if i % 2 else " GOOD"),
                  "generator": "gpt4_turbo"} for i in range(4)]
    with FakeOpenAI() as server:
        from remax_bench.evaluation.judges import build_judge

        judge = build_judge(Judge(type="openai", model="judge-model", base_url=server.url, api_key_env=KEY_ENV),
                            alpaca_annotator="weighted_alpaca_eval_gpt4_turbo")
        with judge:
            result, rows = judge_alpaca_eval(outputs, reference, judge, None, bootstrap_samples=50)
            client_dir = Path(judge._client_config_dir.name)
            modes = {oct(p.stat().st_mode)[-3:] for p in client_dir.glob("*/client_configs.yaml")}
            assert modes == {"600"}  # readable by this user alone
        assert not client_dir.exists()  # the file holding the key goes with the judge
        requests = server.chat_requests()
    template = (Path(alpaca_eval.__file__).parent / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo" /
                "alpaca_eval_clf.txt").read_text()
    assert len(requests) == 4
    for request in requests:
        body = request["body"]
        # alpaca_eval's completion settings for this annotator, unchanged but for the model's name
        assert {k: body[k] for k in ("model", "max_tokens", "temperature", "logprobs", "top_logprobs")} == {
            "model": "judge-model", "max_tokens": 1, "temperature": 1, "logprobs": True, "top_logprobs": 5}
        system, user = body["messages"]
        assert system["role"] == "system" and system["content"] in template
        assert user["role"] == "user" and "## Best Model Identifier" in user["content"]
        assert request["headers"]["authorization"] == "Bearer sk-alpaca-test"
    # The model (output_2) has the GOOD answer for odd instructions: a weighted preference near 2 there, near 1
    # elsewhere (logprobs -0.1 vs -2.4: p = e^-0.1 / (e^-0.1 + e^-2.4) = 0.909).
    prefs = {r["instruction"]: r["preference"] for r in rows}
    for i in range(4):
        expected = 1 + 0.909 if i % 2 else 2 - 0.909
        assert prefs[f"task {i}"] == pytest.approx(expected, abs=0.01)
    assert result["win_rate"] == pytest.approx(50.0, abs=0.5) and result["n_unjudged"] == 0
    assert judge.identity()["alpaca_eval_annotator"] == "weighted_alpaca_eval_gpt4_turbo"


@pytest.mark.parametrize("turn", [1, 2])
def test_mt_bench_judge_requests_are_fastchats_own(monkeypatch, turn):
    """Single-answer grading sends what FastChat's run_judge_single sends for an OpenAI judge: its conversation
    (system prompt, filled prompt template), temperature 0, max_tokens 2048."""
    import fastchat.llm_judge.common as fastchat_common

    prompts = {p["name"]: p for p in map(json.loads, (FIXTURES / "judge_prompts.jsonl").read_text().splitlines())}
    question = {"question_id": 7, "category": "writing", "turns": ["Name a fruit.", "And a colour?"]}
    answers = ["An apple.", "Red."]
    seen = {}

    def capture(model, conv, temperature, max_tokens, api_dict=None):
        seen.update(messages=conv.to_openai_api_messages(), temperature=temperature, max_tokens=max_tokens)
        return "Rating: [[6]]"

    monkeypatch.setattr(fastchat_common, "chat_completion_openai", capture)
    name = "single-v1" if turn == 1 else "single-v1-multi-turn"
    fastchat_judge = fastchat_common.Judge("gpt-4", prompts[name], multi_turn=turn == 2)
    fastchat_common.run_judge_single(question, {"choices": [{"turns": answers}]}, fastchat_judge, None,
                                     multi_turn=turn == 2)
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with FakeOpenAI() as server:
        judge = OpenAIJudge("gpt-4", base_url=server.url, api_key_env=KEY_ENV, judge_prompts=prompts)
        verdict, = judge.single([SingleItem(question, answers, turn)])
        body = server.chat_requests()[0]["body"]
    assert verdict.value == 6.0
    assert body["messages"] == seen["messages"]
    assert (body["temperature"], body["max_tokens"]) == (seen["temperature"], seen["max_tokens"]) == (0, 2048)
