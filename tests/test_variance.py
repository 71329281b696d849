"""The gradient-variance measurement: each estimator's advantages by hand, the moments, and a real run on
the nano model (few repeats) that the report then shows."""

import json
import math

import pytest
import torch

from remax_bench.variance import Moments, advantages, estimators, measure, variance_markdown

T = torch.tensor
SCORES = T([1.0, 2.0, 3.0, 6.0])


def test_each_registered_estimator_by_hand():
    est = {e.key: e for e in estimators(2)}
    mask = torch.ones(4, 1)  # one-token answers: each advantage is the answer's own

    def adv(key, greedy=None):
        return advantages(est[key], SCORES, mask, greedy).advantages.squeeze(-1)

    assert torch.equal(adv("reinforce_k1"), SCORES)
    # ReMax, k = 2: one greedy score per prompt (0.5 and 4), shared by its two answers
    assert torch.allclose(adv("remax_k2", T([0.5, 4.0])), T([0.5, 1.5, -1.0, 2.0]))
    a = 1 / math.sqrt(2)
    assert torch.allclose(adv("grpo_k2"), T([-a, a, -a, a]), atol=1e-5)
    # RLOO, k = 2: r_i minus its partner's score
    assert torch.allclose(adv("rloo_k2"), T([-1.0, 1.0, -3.0, 3.0]))
    # REINFORCE++: the group mean [1.5, 4.5] subtracted, then whitened over the batch: [-0.5, 0.5, -1.5, 1.5] / std
    std = math.sqrt((0.25 + 0.25 + 2.25 + 2.25) / 4)
    assert torch.allclose(adv("reinforce_pp_k2"), T([-0.5, 0.5, -1.5, 1.5]) / std, atol=1e-5)


def test_moments_trace_and_unbiased_signal_by_hand():
    m = Moments()
    for g in (T([1.0, 0.0]), T([3.0, 2.0]), T([2.0, 4.0])):
        m.add(g)
    # coordinate variances (unbiased): [1, 4] -> trace 5; mean [2, 2] -> ||mean||^2 8, minus 5 / 3
    assert m.trace_cov() == pytest.approx(5.0)
    assert m.mean_norm_sq() == pytest.approx(8 - 5 / 3)


def test_equal_generated_answers_per_batch():
    # 20 answers: no baseline 20 prompts; ReMax k = 1 10 x (1 + 1); k = 4 groups 5 x 4; ReMax k = 4 4 x (4 + 1).
    # Every critic-free algorithm of the registry, at k = 1 too where its block allows it (GRPO, RLOO and REINFORCE++
    # need two answers per prompt).
    costs = {e.key: (20 // e.cost_per_prompt, e.cost_per_prompt) for e in estimators(4)}
    assert costs == {"remax_k1": (10, 2), "remax_k4": (4, 5), "reinforce_k1": (20, 1), "reinforce_k4": (5, 4),
                     "grpo_k4": (5, 4), "rloo_k4": (5, 4), "reinforce_pp_k4": (5, 4)}


def test_measure_on_the_nano_model_and_the_report_section(tmp_path, one_torch_thread):
    from remax_bench.core.models import load_causal_lm, load_tokenizer
    from remax_bench.core.rewards import load_reward_function

    model, tokenizer = load_causal_lm("tiny:nano", seed=0), load_tokenizer("tiny:nano")
    prompts = ["Reverse: abc", "Uppercase: bad", "Sort the letters: hgab", "Repeat cab 2 times."]
    rows = measure(model, tokenizer, prompts, load_reward_function("gold"), answers=6, k=2, repeats=2,
                   max_response_length=6)
    assert [r["estimator"] for r in rows] == ["remax_k1", "remax_k2", "reinforce_k1", "reinforce_k2", "grpo_k2",
                                              "rloo_k2", "reinforce_pp_k2"]
    for r in rows:
        assert r["answers_per_batch"] == 6 and r["trace_cov"] >= 0 and 0 <= r["reward_mean"] <= 1
        assert 0 < r["generated_tokens_per_batch"] <= 6 * 6
    assert rows[2]["trace_cov_vs_none"] == pytest.approx(1.0)  # REINFORCE at k = 1 is the reference
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
    assert variance_markdown(record)[4].startswith("| REINFORCE (k = 1) | 6 × (1 + 0)")


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
    assert record["reward"] == "gold" and len(record["rows"]) == 7 and (written / "variance.png").is_file()
