"""Evaluation data (synthetic, local files, the cached public sets, the offline error), bootstrap intervals and
the length-controlled win rate."""

import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from remax_bench.core.task import SyntheticTask, gold_score
from remax_bench.evaluation import data as eval_data
from remax_bench.evaluation.alpaca import length_controlled
from remax_bench.evaluation.common import EvalDataError
from remax_bench.evaluation.data import (
    alpaca_eval_instructions,
    judge_prompts,
    mt_bench_questions,
    mt_bench_reference_answers,
)
from remax_bench.evaluation.stats import bootstrap_cluster_mean_ci, bootstrap_mean_ci

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REMAX_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_synthetic_prompts_and_questions_are_the_tasks_held_out_ones():
    rows = alpaca_eval_instructions("synthetic", max_instances=20)
    held_out = [p["prompt"] for p in SyntheticTask().prompts(128, "eval")]
    assert len(rows) == 20 and [r["instruction"] for r in rows] == list(dict.fromkeys(held_out))[:20]
    assert len({r["instruction"] for r in rows}) == 20  # each instruction once
    questions = mt_bench_questions("synthetic", max_questions=4)
    assert [q["question_id"] for q in questions] == [1, 2, 3, 4] and all(len(q["turns"]) == 2 for q in questions)
    refs = mt_bench_reference_answers("synthetic", questions)
    assert all(gold_score(t, a) == 1.0 for q in questions for t, a in zip(q["turns"], refs[q["question_id"]]))


def test_local_files(tmp_path):
    rows = alpaca_eval_instructions(str(FIXTURES / "alpaca_instructions.json"))
    assert [r["instruction"] for r in rows] == ["Name a fruit.", "Count to three.", "Say hello."]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "One?"}\n{"prompt": "Two?"}\n')
    assert [r["instruction"] for r in alpaca_eval_instructions(str(jsonl))] == ["One?", "Two?"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(EvalDataError, match=r"bad\.json, line 1: no .instruction."):
        alpaca_eval_instructions(str(bad))
    prompts = judge_prompts(str(FIXTURES / "judge_prompts.jsonl"))
    assert set(prompts) == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
    partial = tmp_path / "judge_prompts.jsonl"
    partial.write_text((FIXTURES / "judge_prompts.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(EvalDataError, match="lacks the prompts"):
        judge_prompts(str(partial))


def test_faults_in_local_eval_files_name_the_file_and_its_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "One?"}\n\n{"instruction": "Two?"}\n{"instruction": "Three?", oops}\n')
    with pytest.raises(EvalDataError, match=r"eval\.alpaca_eval\.prompts: .*prompts\.jsonl, line 4: not valid JSON "
                       r"\(Expecting property name enclosed in double quotes, column 27\)"):
        alpaca_eval_instructions(str(prompts))
    questions = tmp_path / "question.jsonl"
    good = {"question_id": 1, "category": "writing", "turns": ["Hi?", "And?"]}
    questions.write_bytes(json.dumps(good).encode() + b"\n" + b'{"question_id": 2, "turns": ["caf\xe9?"]}\n')
    with pytest.raises(EvalDataError, match=r"eval\.mt_bench\.questions: .*question\.jsonl, line 2: not UTF-8 text"):
        mt_bench_questions(str(questions))
    questions.write_text(json.dumps(good) + "\n" + json.dumps({"question_id": 2, "turns": []}) + "\n")
    with pytest.raises(EvalDataError, match=r"question\.jsonl, line 2: question 2 needs question_id and a list"):
        mt_bench_questions(str(questions))
    judge = tmp_path / "judge_prompts.jsonl"
    judge.write_text((FIXTURES / "judge_prompts.jsonl").read_text() + '["not", "a", "prompt"]\n')
    with pytest.raises(EvalDataError, match=r"judge_prompts\.jsonl, line 5: expected a JSON object with a 'name'"):
        judge_prompts(str(judge))


def test_offline_without_data_names_what_is_missing_and_the_field_to_set(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvalDataError) as err:
        alpaca_eval_instructions("default")
    text = str(err.value)
    assert "AlpacaEval's 805 instructions" in text and "offline (HF_HUB_OFFLINE=1)" in text
    assert "set eval.alpaca_eval.prompts" in text and str(empty_cache) in text
    with pytest.raises(EvalDataError, match=r"MT-bench's 80 questions[\s\S]*set eval.mt_bench.questions"):
        mt_bench_questions("default")
    with pytest.raises(EvalDataError, match=r"judge prompts[\s\S]*set eval.mt_bench.judge_prompts"):
        judge_prompts("default")
    with pytest.raises(EvalDataError, match="eval.mt_bench.questions: file .*nowhere.jsonl not found"):
        mt_bench_questions("/nowhere.jsonl")


def test_a_failed_download_is_quick_and_explained(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("REMAX_BENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(eval_data, "MT_BENCH_QUESTIONS_URL", f"http://127.0.0.1:{port}/question.jsonl")
    with pytest.raises(EvalDataError, match=r"download failed: URLError"):
        mt_bench_questions("default")


def test_cached_public_data_is_used_without_network(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (empty_cache / "mt_bench").mkdir(parents=True)
    (empty_cache / "mt_bench" / "question.jsonl").write_text((FIXTURES / "mt_bench" / "question.jsonl").read_text())
    assert [q["category"] for q in mt_bench_questions("default", max_questions=2)] == ["writing", "math"]
    (empty_cache / "alpaca_eval").mkdir()
    (empty_cache / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(
        [{"instruction": "A?", "dataset": "helpful_base", "index": 0}, {"instruction": "B?", "dataset": "koala", "index": 1}]))
    assert [r["dataset"] for r in alpaca_eval_instructions("default")] == ["helpful_base", "koala"]


def test_bootstrap_intervals_are_seeded_and_cover_the_mean():
    values = [float(v) for v in range(100)]
    ci = bootstrap_mean_ci(values, 2000, seed=0)
    assert ci == bootstrap_mean_ci(values, 2000, seed=0) and ci != bootstrap_mean_ci(values, 2000, seed=1)
    # Standard error of the mean is 29.0 / sqrt(100) = 2.9: the 95% interval is about 49.5 +- 5.7.
    assert 42.5 < ci[0] < 45 and 54 < ci[1] < 56.5
    groups = [[10.0, 10.0], [2.0, 2.0], [6.0]]
    lo, hi = bootstrap_cluster_mean_ci(groups, 1000, seed=0)
    assert 2.0 <= lo < 6.0 < hi <= 10.0
    assert bootstrap_mean_ci([], 100, 0) is None


def _annotations(model_lengths, ref_lengths, prefs, generator_2="policy"):
    return pd.DataFrame({
        "instruction": [f"q{i}" for i in range(len(prefs))],
        "output_1": ["x" * n for n in ref_lengths], "output_2": ["x" * n for n in model_lengths],
        "generator_1": "sft", "generator_2": generator_2, "index": range(len(prefs)), "preference": prefs,
    })


def test_length_controlled_win_rate_discounts_wins_explained_by_length():
    # 20 pairs where the model's output is 3-5x longer than the reference's, 20 where it is a bit shorter.
    model = [30 + i for i in range(20)] + [5 + i % 5 for i in range(20)]
    ref = [10] * 40
    by_length = [2.0] * 18 + [1.0] * 2 + [2.0] * 6 + [1.0] * 14  # wins mostly when longer: raw 60%
    lc = length_controlled(_annotations(model, ref, by_length), full_glm=False)
    assert lc["lc_method"] == "length_controlled_minimal" and lc["lc_error"] is None
    assert lc["lc_win_rate"] < 50.0 and lc["lc_weights"]["np.tanh(std_delta_len)"] < 0
    independent = ([2.0] * 3 + [1.0]) * 10  # 75% in both halves: length explains nothing
    lc_flat = length_controlled(_annotations(model, ref, independent), full_glm=False)
    assert lc_flat["lc_win_rate"] == pytest.approx(75.0, abs=2.0)


def test_length_controlled_win_rate_records_why_it_cannot_be_fit(monkeypatch):
    few = length_controlled(_annotations([5, 6, 7], [4, 4, 4], [2.0, 1.0, 2.0]), full_glm=False)
    assert few["lc_win_rate"] is None and "at least 5 judged pairs" in few["lc_error"]
    same = length_controlled(_annotations([5] * 6, [4] * 6, [2.0, 1.0] * 3), full_glm=False)
    assert same["lc_win_rate"] is None and "same length difference" in same["lc_error"]
    itself = length_controlled(_annotations([5] * 6, [5] * 6, [1.5] * 6, generator_2="sft"), full_glm=False)
    assert itself["lc_win_rate"] == 50.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the full GLM needs the hub: fall back, and say so
    full = length_controlled(_annotations([30 + i for i in range(10)], [10] * 10, [2.0, 1.0] * 5), full_glm=True)
    assert full["lc_method"] == "length_controlled_minimal" and "length_controlled_v1 needs" in full["lc_error"]
