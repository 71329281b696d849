"""The gradient-variance measurement: each estimator's advantages by hand, the moments, and a real run on
the nano model (few repeats) that the report then shows."""

import json
import math

import pytest
import torch

from remax_bench.variance import Moments, advantages, estimators, measure, variance_markdown

T = torch.tensor
SCORES = T([1.0, 2.0, 3.0, 6.0])


def test_advantages_of_each_estimator_by_hand():
    assert torch.equal(advantages("none", SCORES, 1), SCORES)
    # ReMax, k = 2: one greedy score per prompt (0.5 and 4), shared by its two answers
    assert torch.allclose(advantages("remax_k", SCORES, 2, T([0.5, 4.0])), T([0.5, 1.5, -1.0, 2.0]))
    assert torch.allclose(advantages("group_mean", SCORES, 2), T([-0.5, 0.5, -1.5, 1.5]))
    a = 1 / math.sqrt(2)
    assert torch.allclose(advantages("grpo", SCORES, 2), T([-a, a, -a, a]), atol=1e-5)
    # RLOO, k = 4: r_i - (12 - r_i) / 3
    assert torch.allclose(advantages("rloo", SCORES, 4), T([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]))
    with pytest.raises(ValueError, match="unknown estimator"):
        advantages("a2c", SCORES, 2)


def test_moments_trace_and_unbiased_signal_by_hand():
    m = Moments()
    for g in (T([1.0, 0.0]), T([3.0, 2.0]), T([2.0, 4.0])):
        m.add(g)
    # coordinate variances (unbiased): [1, 4] -> trace 5; mean [2, 2] -> ||mean||^2 8, minus 5 / 3
    assert m.trace_cov() == pytest.approx(5.0)
    assert m.mean_norm_sq() == pytest.approx(8 - 5 / 3)


def test_equal_generated_answers_per_batch():
    # 20 answers: no baseline 20 prompts; ReMax k = 1 10 x (1 + 1); k = 4 groups 5 x 4; ReMax k = 4 4 x (4 + 1)
    costs = {e.name: (20 // e.cost_per_prompt, e.cost_per_prompt) for e in estimators(4)}
    assert costs == {"none": (20, 1), "remax": (10, 2), "remax_k": (4, 5), "group_mean": (5, 4), "grpo": (5, 4),
                     "rloo": (5, 4)}


def test_measure_on_the_nano_model_and_the_report_section(tmp_path, one_torch_thread):
    from remax_bench.core.models import load_causal_lm, load_tokenizer
    from remax_bench.core.rewards import load_reward_function

    model, tokenizer = load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano")
    prompts = ["Reverse: abc", "Uppercase: bad", "Sort the letters: hgab", "Repeat cab 2 times."]
    rows = measure(model, tokenizer, prompts, load_reward_function("gold"), answers=6, k=2, repeats=2,
                   max_response_length=6)
    assert [r["estimator"] for r in rows] == ["none", "remax", "remax_k", "group_mean", "grpo", "rloo"]
    for r in rows:
        assert r["answers_per_batch"] == 6 and r["trace_cov"] >= 0 and 0 <= r["reward_mean"] <= 1
        assert 0 < r["generated_tokens_per_batch"] <= 6 * 6
    assert rows[0]["trace_cov_vs_none"] == pytest.approx(1.0)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    with pytest.raises(ValueError, match="repeats"):
        measure(model, tokenizer, prompts, load_reward_function("gold"), repeats=1)

    # the report picks the measurement up from results/<suite>/variance/
    from remax_bench.report.render import _variance_section

    suite_dir = tmp_path / "results" / "nano"
    (suite_dir / "variance").mkdir(parents=True)
    record = {"checkpoint": "tiny:nano", "reward": "gold", "repeats": 2, "answers": 6, "k": 2, "rows": rows}
    (suite_dir / "variance" / "variance.json").write_text(json.dumps(record))
    section = _variance_section(suite_dir, tmp_path)
    assert section[0] == "## Policy-gradient variance"
    assert len([line for line in section if line.startswith("| ")]) == 2 + len(rows)  # header, rule, rows
    assert variance_markdown(record)[2].startswith("| REINFORCE, no baseline | 6 × (1 + 0)")


def test_variance_command_needs_a_policy_and_writes_what_the_report_reads(tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from remax_bench.cli import main

    nano = "tests/fixtures/nano.yaml"
    result = CliRunner().invoke(main, ["variance", nano, "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no SFT checkpoint at" in result.output and "--only sft" in result.output
    result = CliRunner().invoke(main, ["variance", nano, "--checkpoint", "tiny:nano", "--results-dir", str(tmp_path),
                                       "--answers", "4", "--k", "4"])
    assert result.exit_code == 2 and "--answers must be at least --k + 1 = 5" in result.output
    result = CliRunner().invoke(main, ["variance", nano, "--checkpoint", "tiny:nano", "--results-dir", str(tmp_path),
                                       "--answers", "6", "--k", "2", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "nano" / "variance"
    record = json.loads((written / "variance.json").read_text())
    assert record["reward"] == "gold" and len(record["rows"]) == 6 and (written / "variance.png").is_file()
