"""The eval stage end to end on tiny checkpoints: files in AlpacaEval's and FastChat's formats, summary rows,
win rates recomputed by hand from the written judgments, reuse on re-run, the stage and CLI entry points."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from remax_bench.core.models import build_tiny_model, byte_tokenizer, load_reward_model, save_pretrained
from remax_bench.core.suite_file import load_suite_text
from remax_bench.core.task import gold_score, true_answer
from remax_bench.evaluation import EvalConfigError, EvalDataError, evaluate_checkpoint, run_eval_stage
from remax_bench.evaluation.__main__ import main as cli_main

FIXTURES = Path(__file__).parent / "fixtures"
EVAL = {"enabled": True, "backend": "hf", "reference": "sft",
        "generation": {"max_new_tokens": 6, "batch_size": 16},
        "alpaca_eval": {"prompts": "synthetic", "max_instances": 8},
        "mt_bench": {"questions": "synthetic", "max_questions": 3},
        "judge": {"type": "gold"}, "bootstrap_samples": 200}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    sft = save_pretrained(*build_tiny_model("tiny:nano", 0), root / "sft")
    shutil.copytree(sft, root / "ppo")  # the same weights as the reference: every pair a tie
    save_pretrained(*build_tiny_model("tiny:nano", 1), root / "remax")
    save_pretrained(load_reward_model("tiny:nano", seed=2, new_head=True), byte_tokenizer(), root / "rm")
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REMAX_BENCH_CACHE", str(tmp_path / "cache"))


def _stage_config(tmp_path, checkpoints, names=("sft", "ppo", "remax"), **eval_edits):
    data = yaml.safe_load((FIXTURES / "nano.yaml").read_text())
    data["eval"] = {**EVAL, **eval_edits}
    suite = load_suite_text(yaml.safe_dump(data))
    config = {"stage": "eval", "seed": 0, "suite": suite.resolved(),
              "inputs": {"checkpoints": {n: str(checkpoints / n) for n in names}, "reward_model": str(checkpoints / "rm")}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(config))
    return config, path


def _expected_win_rate(model_outputs, reference_outputs):
    """Hand-computed: 1 for a gold win, 1/2 for a tie, 0 for a loss, in percent."""
    ref = {r["instruction"]: r["output"] for r in reference_outputs}
    points = []
    for row in model_outputs:
        g_model, g_ref = gold_score(row["instruction"], row["output"]), gold_score(row["instruction"], ref[row["instruction"]])
        points.append(1.0 if g_model > g_ref else 0.0 if g_model < g_ref else 0.5)
    return 100 * sum(points) / len(points)


def test_eval_stage_writes_every_file_and_a_summary_row_per_checkpoint(tmp_path, checkpoints):
    config, _ = _stage_config(tmp_path, checkpoints)
    out = tmp_path / "eval"
    summary = run_eval_stage(config, out)
    assert [r["name"] for r in summary["rows"]] == ["sft", "ppo", "remax"]  # the reference first
    for name in ("sft", "ppo", "remax"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"alpaca_eval_outputs.json", "alpaca_eval_judgments.jsonl", "alpaca_eval.json", "mt_bench_answers.jsonl",
                "mt_bench_judgments.jsonl", "mt_bench.json", "summary.json", "generation.json"} <= files
    saved = json.loads((out / "summary.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(summary["rows"])) and saved["reference"] == "sft"
    by = {r["name"]: r for r in summary["rows"]}
    # The reference against itself, and a copy of it: every pair identical, a tie without asking the judge.
    for name in ("sft", "ppo"):
        assert by[name]["win_rate"] == 50.0 and by[name]["n_draws"] == by[name]["n"] == 8
    assert by["sft"]["is_reference"] and not by["remax"]["is_reference"]
    remax_outputs = json.loads((out / "remax" / "alpaca_eval_outputs.json").read_text())
    sft_outputs = json.loads((out / "sft" / "alpaca_eval_outputs.json").read_text())
    assert by["remax"]["win_rate"] == pytest.approx(_expected_win_rate(remax_outputs, sft_outputs))
    row = by["remax"]
    for key in ("win_rate_se", "win_rate_ci", "lc_win_rate", "n", "n_unjudged", "mt_bench_score", "mt_bench_ci",
                "mt_bench_turn1", "mt_bench_turn2", "generation_backend"):
        assert key in row
    assert row["generation_backend"] == "hf" and row["n_unjudged"] == 0
    judgments = [json.loads(text) for text in (out / "remax" / "mt_bench_judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 6 and {j["turn"] for j in judgments} == {1, 2}
    scores = [j["score"] for j in judgments]
    assert row["mt_bench_score"] == pytest.approx(sum(scores) / 6)
    assert row["mt_bench_turn2"] == pytest.approx(sum(j["score"] for j in judgments if j["turn"] == 2) / 3)
    assert summary["generation"]["remax"]["settings"]["max_new_tokens"] == 6


def test_fastchats_own_show_result_reads_the_mt_bench_files_and_prints_the_same_scores(tmp_path, checkpoints,
                                                                                        monkeypatch, capsys):
    import argparse

    from fastchat.llm_judge.show_result import display_result_single

    config, _ = _stage_config(tmp_path, checkpoints)
    out = tmp_path / "eval"
    summary = run_eval_stage(config, out)
    fastchat = out / summary["fastchat_dir"]
    assert sorted(p.name for p in (fastchat / "data" / "mt_bench" / "model_answer").iterdir()) == [
        "ppo.jsonl", "remax.jsonl", "sft.jsonl"]
    monkeypatch.chdir(fastchat)  # FastChat reads data/<bench>/model_judgment/<judge>_single.jsonl from here
    capsys.readouterr()
    display_result_single(argparse.Namespace(input_file=None, bench_name="mt_bench", judge_model="gold",
                                             model_list=None))
    printed = capsys.readouterr().out
    average = printed.split("########## Average ##########")[1]
    for row in summary["rows"]:
        line = next(text for text in average.splitlines() if text.split() and text.split()[0] == row["name"])
        assert float(line.split()[1]) == pytest.approx(row["mt_bench_score"], abs=1e-4)


def test_rerun_reuses_outputs_and_judges_what_changed(tmp_path, checkpoints):
    config, _ = _stage_config(tmp_path, checkpoints, names=("sft", "remax"))
    out = tmp_path / "eval"
    run_eval_stage(config, out)
    # Make the policy exactly right on three instructions; the re-run reuses the (edited) outputs.
    path = out / "remax" / "alpaca_eval_outputs.json"
    outputs = json.loads(path.read_text())
    for row in outputs[:3]:
        row["output"] = true_answer(row["instruction"])
    path.write_text(json.dumps(outputs))
    messages = []
    summary = run_eval_stage(config, out, log=messages.append)
    assert sum("up to date, reused" in m for m in messages) == 2
    sft_outputs = json.loads((out / "sft" / "alpaca_eval_outputs.json").read_text())
    remax = summary["rows"][1]
    expected = _expected_win_rate(outputs, sft_outputs)
    assert expected >= 100 * 3 / 8 + 50 * 5 / 8 - 1e-9  # the three right answers all win
    assert remax["win_rate"] == pytest.approx(expected) and remax["n_wins"] >= 3
    assert json.loads((out / "remax" / "alpaca_eval.json").read_text())["gold_reward_mean"] >= 3 / 8


def test_reward_model_judge_through_the_stage(tmp_path, checkpoints):
    config, _ = _stage_config(tmp_path, checkpoints, names=("sft", "remax"), judge={"type": "reward_model"})
    summary = run_eval_stage(config, tmp_path / "eval")
    remax = summary["rows"][1]
    assert summary["judge"]["type"] == "reward_model" and remax["n_unjudged"] == 0 and remax["n"] == 8
    assert 1.0 <= remax["mt_bench_score"] <= 10.0
    first = [json.loads(text) for text in (tmp_path / "eval" / "remax" / "mt_bench_judgments.jsonl").read_text().splitlines()]
    # Judged again from the cache: the same verdicts, none recomputed.
    again = run_eval_stage(config, tmp_path / "eval")
    second = [json.loads(text) for text in (tmp_path / "eval" / "remax" / "mt_bench_judgments.jsonl").read_text().splitlines()]
    assert [j["score"] for j in first] == [j["score"] for j in second] and all(j["cached"] for j in second)
    assert again["rows"][1]["win_rate"] == remax["win_rate"]


def test_evaluate_checkpoint_without_reference_and_with_a_reference_file(tmp_path, checkpoints):
    from remax_bench.core.config import Eval

    ev = Eval.model_validate({**EVAL, "mt_bench": {"enabled": False}})
    row = evaluate_checkpoint(checkpoints / "remax", ev, tmp_path / "a", generator_name="remax")
    assert row["win_rate"] is None and "skipped" in json.loads((tmp_path / "a" / "alpaca_eval.json").read_text())
    assert not (tmp_path / "a" / "mt_bench_answers.jsonl").exists()
    outputs = json.loads((tmp_path / "a" / "alpaca_eval_outputs.json").read_text())
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{**o, "output": true_answer(o["instruction"]), "generator": "oracle"} for o in outputs]))
    row = evaluate_checkpoint(checkpoints / "remax", ev, tmp_path / "a", reference_outputs=str(reference),
                              generator_name="remax")
    assert row["reference"] == "oracle" and row["win_rate"] == pytest.approx(_expected_win_rate(
        outputs, json.loads(reference.read_text())))
    assert row["win_rate"] < 50.0  # an untrained model against the true answers


def test_stage_entry_point_writes_the_results_layout(tmp_path, checkpoints):
    from remax_bench.core.stage import stage_main
    from remax_bench.evaluation.stage import evaluate

    _, path = _stage_config(tmp_path, checkpoints, names=("sft", "remax"))
    final = tmp_path / "results" / "nano" / "eval" / "seed0"
    assert stage_main("eval", evaluate, ["--config", str(path), "--out", str(final)]) == 0
    summary = json.loads((final / "summary.json").read_text())
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["status"] == "completed" and summary["stage"] == "eval"
    assert [r["name"] for r in summary["rows"]] == ["sft", "remax"] and summary["reference"] == "sft"
    assert (final / "eval" / "remax" / "alpaca_eval_outputs.json").is_file()
    # The eval results reach the suite's tracker (TensorBoard, the default), each checkpoint's under its name.
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from tracker_files import tensorboard_scalars

    scalars = tensorboard_scalars(tmp_path / "results" / "nano" / "tensorboard" / "eval" / "seed0")
    remax = summary["rows"][1]
    for key in ("win_rate", "lc_win_rate", "mt_bench_score"):
        if remax.get(key) is not None:
            assert scalars[f"summary/rows/remax/{key}"] == {0: remax[key]}, key
    assert "summary/rows/remax/win_rate" in scalars


def test_cli_entry_point_and_its_errors(tmp_path, checkpoints, capsys, monkeypatch):
    _, path = _stage_config(tmp_path, checkpoints, names=("sft", "remax"))
    assert cli_main(["--config", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "win rate %" in printed and "remax" in printed and (tmp_path / "out" / "summary.json").is_file()
    config, bad = _stage_config(tmp_path, checkpoints, names=("remax",))
    assert cli_main(["--config", str(bad), "--out", str(tmp_path / "out2")]) == 1
    assert "eval.reference: 'sft' is neither a stage" in capsys.readouterr().err
    with pytest.raises(EvalConfigError):
        run_eval_stage(config, tmp_path / "out2")
    # Missing public data with no network: a clear error before any model is loaded.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    config, _ = _stage_config(tmp_path, checkpoints, names=("sft", "remax"),
                              judge={"type": "openai", "model": "gpt-4"}, mt_bench={"questions": "default"})
    with pytest.raises(EvalDataError, match="eval.mt_bench.questions"):
        run_eval_stage(config, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_what_a_reader_must_know_is_warned_recorded_and_in_the_manifest(tmp_path):
    """Prompts trimmed to the context and the temperatures used are counted in generation.json, warned on the
    console and kept in the stage's manifest."""
    from remax_bench.core.stage import stage_main
    from remax_bench.evaluation.stage import evaluate

    short = tmp_path / "ckpts"
    for name, seed in (("sft", 0), ("remax", 1)):  # a 40-token context: second turns do not fit whole
        save_pretrained(*build_tiny_model("tiny:nano,max_position_embeddings=40", seed), short / name)
    _, path = _stage_config(tmp_path, short, names=("sft", "remax"))
    final = tmp_path / "results" / "nano" / "eval" / "seed0"
    assert stage_main("eval", evaluate, ["--config", str(path), "--out", str(final)]) == 0
    record = json.loads((final / "eval" / "remax" / "generation.json").read_text())
    n_turns, trimmed = record["prompts_trimmed"]["mt_bench"]
    assert n_turns == 6 and trimmed > 0 and record["context_room"] == 40 - 6
    assert sum(record["answers_by_temperature"].values()) == record["n_generated"] == 8 + 6
    assert record["answers_by_temperature"]["0.0"] == 8  # AlpacaEval greedy; MT-bench at its categories' own
    warnings = json.loads((final / "manifest.json").read_text())["warnings"]
    assert f"remax: {trimmed} of 6 MT-bench prompts (turns) were longer than the context leaves room for (34 tokens" \
        in " ".join(warnings)
    assert any(w.startswith("MT-bench answers sampled at temperature ") and "eval.mt_bench.temperature: fastchat" in w
               for w in warnings)


def test_reference_answers_of_a_local_question_file_are_named(tmp_path):
    from remax_bench.evaluation.data import reference_answers_note

    questions = [json.loads(line) for line in (FIXTURES / "mt_bench" / "question.jsonl").read_text().splitlines()]
    assert reference_answers_note(str(FIXTURES / "mt_bench" / "question.jsonl"), questions) is None  # gpt-4.jsonl
    alone = tmp_path / "question.jsonl"
    shutil.copy(FIXTURES / "mt_bench" / "question.jsonl", alone)
    note = reference_answers_note(str(alone), questions)
    guided = sum(q["category"] in ("math", "reasoning", "coding") for q in questions)
    assert guided and f"no {tmp_path / 'reference_answer'}/ beside the question file" in note
    assert f"of the {guided} math, reasoning and coding questions are graded against the question file's own" in note
