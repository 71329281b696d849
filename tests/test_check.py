import json

import pytest

from remax_bench import check


def _stage(root, stage, seed, summary):
    d = root / stage / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"status": "completed"}))
    (d / "summary.json").write_text(json.dumps(summary))


def _states(policy, critic=None):
    states = {"policy": {"params": policy, "grads": policy, "optimizer": 2 * policy}}
    if critic:
        states["critic"] = {"params": critic, "grads": critic, "optimizer": 2 * critic}
    return states


@pytest.fixture
def suite_dir(tmp_path):
    root = tmp_path / "tiny"
    _stage(root, "sft", 0, {"heldout_gold_reward": 0.5})
    for seed, (ppo_gold, remax_gold) in enumerate([(0.6, 0.7), (0.62, 0.66)]):
        _stage(root, "ppo", seed, {"heldout_gold_reward": ppo_gold, "peak_memory_bytes": 200, "model_state_total_bytes": 100,
                                   "time_per_iteration_s": 2.0, "model_state_bytes": _states(10, 15)})
        _stage(root, "remax", seed, {"heldout_gold_reward": remax_gold, "peak_memory_bytes": 110, "model_state_total_bytes": 40,
                                     "time_per_iteration_s": 1.25, "model_state_bytes": _states(10)})
    _stage(root, "eval", 0, {"rows": [{"name": "remax", "win_rate": 80.0}, {"name": "ppo", "win_rate": 70.0}]})
    # Incomplete stages are not results.
    (root / "dpo" / ".seed0.partial").mkdir(parents=True)
    return root


def test_collect_metrics_averages_seeds_and_forms_ratios(suite_dir):
    m = check.collect_metrics(suite_dir)
    assert m["sft.heldout_gold_reward"] == 0.5
    assert m["ppo.heldout_gold_reward"] == pytest.approx(0.61)
    assert m["remax.heldout_gold_reward"] == pytest.approx(0.68)
    assert m["remax.peak_memory_ratio_vs_ppo"] == pytest.approx(0.55)
    assert m["remax.model_states_ratio_vs_ppo"] == pytest.approx(0.4)
    assert m["remax.iteration_time_ratio_vs_ppo"] == pytest.approx(0.625)
    assert m["remax.win_rate"] == 80.0
    assert not any(k.startswith("dpo.") for k in m)


def test_compare_directions_and_tolerances():
    metrics = {"a": 0.50, "b": 0.80, "c": 1.0}
    baseline = {"metrics": {
        "a": {"value": 0.55, "tolerance": 0.1, "direction": "higher"},  # 0.50 >= 0.45: pass
        "b": {"value": 0.60, "tolerance": 0.1, "direction": "lower"},   # 0.80 > 0.70: fail
        "c": {"value": 1.0, "tolerance": 0.0, "direction": "both"},
        "d": {"value": 1.0, "tolerance": 0.1},                           # missing: fail
    }}
    rows = {r.name: r for r in check.compare(metrics, baseline)}
    assert rows["a"].passed and not rows["b"].passed and rows["c"].passed
    assert not rows["d"].passed and rows["d"].note == "missing in results"


def test_rules_hold_on_a_good_run(suite_dir):
    rows = check.rules(suite_dir, check.collect_metrics(suite_dir))
    assert [r.passed for r in rows] == [True] * len(rows)
    assert {r.name for r in rows} == {
        "rule: ReMax builds no value model",
        "rule: ReMax peak memory below PPO's",
        "rule: ppo beats SFT on gold reward",
        "rule: remax beats SFT on gold reward",
        "rule: remax not worse than ppo on gold reward",
    }
    # Two seeds: the interval is their range, and its lower end (0.66 for ReMax) is what must beat SFT (0.5).
    beats = {r.name: r for r in rows}["rule: remax beats SFT on gold reward"]
    assert beats.now == pytest.approx(0.66) and "[0.66, 0.7] over 2 seeds" in beats.note


def test_rules_catch_a_critic_and_rl_below_sft(tmp_path):
    root = tmp_path / "tiny"
    _stage(root, "sft", 0, {"heldout_gold_reward": 0.5})
    _stage(root, "ppo", 0, {"heldout_gold_reward": 0.6, "peak_memory_bytes": 100, "model_state_total_bytes": 10,
                            "model_state_bytes": _states(1, 1)})
    _stage(root, "remax", 0, {"heldout_gold_reward": 0.4, "peak_memory_bytes": 150, "model_state_total_bytes": 10,
                              "model_state_bytes": _states(1, 1)})
    rows = {r.name: r.passed for r in check.rules(root, check.collect_metrics(root))}
    assert rows == {
        "rule: ReMax builds no value model": False,
        "rule: ReMax peak memory below PPO's": False,
        "rule: ppo beats SFT on gold reward": True,
        "rule: remax beats SFT on gold reward": False,
        "rule: remax not worse than ppo on gold reward": True,  # one seed each: no order is claimed
    }


def test_quality_rules_read_the_interval_over_seeds(tmp_path):
    root = tmp_path / "tiny"
    _stage(root, "sft", 0, {"heldout_gold_reward": 0.5})
    # ReMax's mean (0.6) is above SFT, but one seed of three is below it: the interval's lower end is too.
    # PPO beats ReMax on every pair of seeds: with three seeds each the interval of P(ReMax > PPO) is [0, 0].
    for seed, (ppo_gold, remax_gold) in enumerate([(0.8, 0.45), (0.82, 0.65), (0.84, 0.7)]):
        _stage(root, "ppo", seed, {"heldout_gold_reward": ppo_gold})
        _stage(root, "remax", seed, {"heldout_gold_reward": remax_gold})
    rows = {r.name: r for r in check.rules(root, check.collect_metrics(root))}
    assert not rows["rule: remax beats SFT on gold reward"].passed
    assert rows["rule: remax beats SFT on gold reward"].now == pytest.approx(0.45)
    worse = rows["rule: remax not worse than ppo on gold reward"]
    assert not worse.passed and worse.now == 0.0
    assert "PPO is better than ReMax (P(ReMax > PPO) = 0.00 [0.00, 0.00], 3 seeds each)" in worse.note


def test_a_sweep_names_each_value_in_metrics_and_rules(tmp_path):
    root = tmp_path / "tiny"
    _stage(root, "sft", 0, {"heldout_gold_reward": 0.5})
    for label, gold in (("kl_coef=0.1", 0.7), ("kl_coef=0.05", 0.6)):
        _stage(root, f"remax@{label}", 0, {"heldout_gold_reward": gold, "model_state_bytes": _states(10)})
        _stage(root, f"eval@{label}", 0, {"rows": [{"name": "remax", "win_rate": 100 * gold}, {"name": "sft",
                                                                                               "win_rate": 50.0}]})
    metrics = check.collect_metrics(root)
    assert metrics["sft.heldout_gold_reward"] == 0.5
    assert metrics["remax@kl_coef=0.05.heldout_gold_reward"] == 0.6
    assert metrics["remax@kl_coef=0.1.win_rate"] == pytest.approx(70.0) and metrics["sft.win_rate"] == 50.0
    names = [r.name for r in check.rules(root, metrics)]
    assert names == ["rule: ReMax@kl_coef=0.05 builds no value model", "rule: remax@kl_coef=0.05 beats SFT on gold reward",
                     "rule: ReMax@kl_coef=0.1 builds no value model", "rule: remax@kl_coef=0.1 beats SFT on gold reward"]


def test_update_baseline_keeps_tolerances_and_sets_defaults(tmp_path):
    path = tmp_path / "b.json"
    old = {"metrics": {"remax.heldout_gold_reward": {"value": 0.1, "tolerance": 0.05, "direction": "higher"}}}
    now = {"remax.heldout_gold_reward": 0.66666, "remax.peak_memory_ratio_vs_ppo": 0.5}
    new = check.update_baseline_file(path, now, old, "tiny")
    assert new["metrics"]["remax.heldout_gold_reward"] == {"value": 0.6667, "tolerance": 0.05, "direction": "higher"}
    assert new["metrics"]["remax.peak_memory_ratio_vs_ppo"] == {"value": 0.5, "tolerance": 0.075, "direction": "lower"}
    assert json.loads(path.read_text()) == new


def test_check_cli_points_at_the_suite_folder_and_warns_on_another_suites_baseline(suite_dir, tmp_path):
    from click.testing import CliRunner

    from remax_bench.cli import main

    result = CliRunner().invoke(main, ["check", str(tmp_path), "--no-reproduce"])
    assert result.exit_code == 1 and f"give {suite_dir}" in result.output, result.output

    other = tmp_path / "other.json"
    check.update_baseline_file(other, check.collect_metrics(suite_dir), None, "small_gpu")
    result = CliRunner().invoke(main, ["check", str(suite_dir), "--baseline", str(other), "--no-reproduce"])
    assert "baseline" in result.output and "is for suite 'small_gpu'" in result.output, result.output

    # Without --baseline, the repository's baseline of this suite is used, from any working directory.
    result = CliRunner().invoke(main, ["check", str(suite_dir), "--no-reproduce"])
    assert "not found" not in result.output and "is for suite" not in result.output, result.output
