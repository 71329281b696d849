"""What a suite costs: stage times from stated and measured throughput, judge calls from the plan, and their
prices from alpaca_eval's own data, against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core import results
from remax_bench.core.config import SuiteError
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.cost import (
    CostError,
    alpaca_eval_price,
    estimate_cost,
    evaluated_models,
    format_cost,
    measured_throughput,
    mt_bench_tokens,
    preparation_steps,
    stage_times,
)
from remax_bench.evaluation.data import alpaca_eval_instructions

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def by_stage(rows):
    return {r.stage: r for r in rows}


def test_preparation_steps_count_as_the_trainers_do():
    # tiny: 4000 demonstrations, 10% held out -> 3600 rows, ceil(3600 / 64) = 57 steps a pass, 8 epochs = 456
    # (the suite's own comment says "~460 steps"); 3000 pairs -> 2700 rows, 43 steps, 3 epochs = 129.
    tiny = load_suite("tiny")
    assert preparation_steps(tiny, "sft")[0] == 456
    assert preparation_steps(tiny, "reward_model")[0] == 129
    # nano: 64 rows, round(6.4) = 6 held out, ceil(58 / 16) = 4 steps in its one epoch (a nano run records 4).
    assert preparation_steps(load_suite(NANO), "sft")[0] == 4
    # A hub dataset of unknown size: bounded by max_steps when set, else not estimated, and it says why.
    small = load_suite("small_gpu")
    assert preparation_steps(small, "sft")[0] == 800  # 1 epoch of at most 20000 rows, capped by max_steps 800
    steps, why = preparation_steps(load_suite("7b_comparison"), "sft")
    assert steps is None and "Dahoas/rm-static" in why and "max_examples" in why


def test_stated_throughput_gives_hours_and_gpu_hours():
    suite = load_suite("7b_comparison")
    rows = by_stage(stage_times(suite))
    # 7,600 iterations (token budget 7,782,400 / (4 prompts x 256 tokens)) x 4 prompts x 0.48 s = 14,592 s.
    assert rows["ppo"].iterations == 7600 and rows["ppo"].examples == 4
    assert rows["ppo"].seconds == pytest.approx(7600 * 4 * 0.48)
    assert rows["remax"].seconds == pytest.approx(7600 * 4 * 0.224)
    assert "ReMax authors' README" in rows["ppo"].throughput.source
    for stage in ("sft", "reward_model", "dpo", "eval"):  # no figure for them: not estimated, never zero
        assert rows[stage].seconds is None and rows[stage].note.startswith("not estimated")
    cost = estimate_cost(suite)
    assert cost.device_hours == pytest.approx(4 * 7600 * 4 * (0.48 + 0.224) / 3600)  # 4 GPUs
    text = format_cost(cost)
    assert "without sft, reward_model, dpo, eval" in text and "16.21" in text


def test_given_checkpoints_cost_nothing_and_seeds_multiply():
    rows = by_stage(stage_times(load_suite("7b_mistral")))
    assert rows["sft"].seconds == 0 and rows["sft"].note.startswith("given:")
    tiny = by_stage(stage_times(load_suite("tiny")))
    assert tiny["sft"].runs == 1 and tiny["ppo"].runs == 2 and tiny["eval"].runs == 2  # seeds [0, 1]


def test_judge_calls_follow_the_plan():
    tiny = load_suite("tiny")
    cost = {j.benchmark: j for j in estimate_cost(tiny).judge}
    instructions = len(alpaca_eval_instructions("synthetic", None, tiny.data.synthetic))
    # 3 policies (PPO, ReMax, DPO) against the SFT model, 2 seeds; MT-bench grades the SFT model too:
    # 40 two-turn questions x 4 models x 2 seeds. The gold judge bills nothing.
    assert cost["AlpacaEval"].calls == instructions * 3 * 2
    assert cost["MT-bench"].calls == 40 * 2 * 4 * 2
    assert cost["AlpacaEval"].usd == cost["MT-bench"].usd == 0
    assert evaluated_models(tiny) == (3, 4)
    # A reference given as a checkpoint folder is generated and graded too; every policy is judged against it.
    folder = tiny.model_copy(update={"eval": tiny.eval.model_copy(update={"reference": "/some/checkpoint"})})
    assert evaluated_models(folder) == (4, 5)


def test_alpaca_eval_price_is_alpaca_evals_own():
    # alpaca_eval 0.6.6's evaluators leaderboard: weighted_alpaca_eval_gpt4_turbo at $4.32 per 1000 examples,
    # measured with gpt-4-1106-preview, its config's model.
    price, source = alpaca_eval_price("weighted_alpaca_eval_gpt4_turbo", "gpt-4-1106-preview")
    assert price == pytest.approx(4.324e-3, rel=1e-3) and "evaluators leaderboard" in source
    # Another judge model: rescaled by alpaca_eval's per-token prices ($0.15 / 1M tokens against $0.01 / 1k).
    mini, source = alpaca_eval_price("weighted_alpaca_eval_gpt4_turbo", "gpt-4o-mini-2024-07-18")
    assert mini == pytest.approx(price * 0.15e-6 / 0.01e-3) and "rescaled" in source
    unknown, source = alpaca_eval_price("weighted_alpaca_eval_gpt4_turbo", "my-local-judge")
    assert unknown is None and "no per-token price for my-local-judge" in source


def test_mt_bench_tokens_and_the_7b_judge_bill():
    # Per question at 512-token answers, 30 of 80 questions reference-graded, characters / 4:
    #   turn 1: template 0.625 x 651/4 + 0.375 x 763/4 = 173.25, question + answer + reference 80 + 512 + 192,
    #           reply 300 -> 1257.25
    #   turn 2: template 0.625 x 781/4 + 0.375 x 949/4 = 211.0, twice the conversation 1568, reply 300 -> 2079.0
    assert mt_bench_tokens(512) == pytest.approx(3336.25)
    cost = {j.benchmark: j for j in estimate_cost(load_suite("7b_comparison")).judge}
    assert cost["AlpacaEval"].calls == 805 * 3  # PPO, ReMax, DPO against SFT, one seed
    assert cost["MT-bench"].calls == 80 * 2 * 4
    assert cost["MT-bench"].usd_per_call == pytest.approx(3336.25 / 2 * 0.01 / 1000)  # alpaca_eval's gpt-4-1106 price
    assert cost["AlpacaEval"].usd == pytest.approx(805 * 3 * 4.324e-3, rel=1e-3)


def _fake_run(root: Path, suite, stage: str, iterations: int, per_iteration: float | None, wall: float,
              **extra) -> None:
    final = results.stage_dir(root, suite.name, stage, 0)
    summary = {"iterations": iterations, "wall_time_s": wall, **extra}
    if per_iteration is not None:
        summary["time_per_iteration_s"] = per_iteration
    results.write_json(final / "summary.json", summary)
    results.write_json(final / "manifest.json", {"status": "completed", "device": "cpu", "config": {
        "stage": stage, "seed": 0, "suite": suite.resolved()}})


def test_measured_throughput_carries_over_by_examples_with_caveats(tmp_path):
    nano = load_suite(NANO)
    _fake_run(tmp_path, nano, "ppo", iterations=2, per_iteration=2.0, wall=9.0)  # 4 prompts an iteration
    _fake_run(tmp_path, nano, "sft", iterations=4, per_iteration=None, wall=12.0)  # 16 demonstrations a step
    _fake_run(tmp_path, nano, "eval", iterations=0, per_iteration=None, wall=40.0, rows=[{}] * 4)  # 4 checkpoints
    measured = measured_throughput(tmp_path / "nano", nano)
    assert measured["ppo"].seconds_per_example == pytest.approx(0.5) and measured["ppo"].fixed_s == pytest.approx(5.0)
    assert measured["sft"].seconds_per_example == pytest.approx(12.0 / 64) and measured["sft"].fixed_s == 0
    assert measured["ppo"].caveats == []
    # The tiny suite: 50 iterations of 32 prompts at 0.5 s each, plus the 5 s fixed part, per seed.
    tiny = load_suite("tiny")
    rows = by_stage(estimate_cost(tiny, tmp_path / "nano").stages)
    assert rows["ppo"].seconds == pytest.approx(2 * (50 * 32 * 0.5 + 5.0))
    assert any("tiny:nano measured, tiny:micro here" in c for c in rows["ppo"].throughput.caveats)
    assert rows["remax"].seconds is None  # not measured, not stated
    # Eval: 10 s per evaluated checkpoint; tiny evaluates SFT, PPO, ReMax and DPO once per seed.
    assert rows["eval"].seconds == pytest.approx(2 * 4 * 10.0)
    assert rows["eval"].throughput.caveats == ["eval settings differ"]


def test_estimate_command_prints_time_and_money(tmp_path):
    nano = load_suite(NANO)
    _fake_run(tmp_path, nano, "remax", iterations=2, per_iteration=1.0, wall=3.0)
    result = CliRunner().invoke(main, ["estimate", "--suite", str(NANO), "--measured", str(tmp_path / "nano")])
    assert result.exit_code == 0, result.output
    assert "Time and money of suite 'nano'" in result.output and "measured:" in result.output
    assert "eval is disabled: no judge calls" in result.output
    result = CliRunner().invoke(main, ["estimate", "--measured", str(tmp_path)])
    assert result.exit_code == 2 and "--measured needs --suite" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["estimate", "--suite", str(NANO), "--measured", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no complete stage" in result.output
    with pytest.raises(CostError):
        measured_throughput(tmp_path / "empty", nano)


def test_a_stated_throughput_is_checked():
    text = NANO.read_text().replace("runtime: {device: cpu}", "runtime:\n  device: cpu\n  throughput: {STATED}")
    good = "seconds_per_example: {ppo: 0.5}, source: 'a run on my laptop'"
    stated = load_suite_text(text.replace("STATED", good), "n.yaml").runtime.throughput
    assert stated.seconds_per_example == {"ppo": 0.5}
    for bad, message in [("seconds_per_example: {sfft: 1.0}, source: x", "unknown stage(s) sfft"),
                         ("seconds_per_example: {ppo: 0}, source: x", "positive"),
                         ("seconds_per_example: {ppo: 1.0}", "source")]:
        with pytest.raises(SuiteError) as err:
            load_suite_text(text.replace("STATED", bad), "n.yaml")
        assert "runtime.throughput" in str(err.value) and message in str(err.value), str(err.value)
