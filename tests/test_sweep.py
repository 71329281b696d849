"""Sweeps: a list for a shared scalar field is one run of every algorithm per value, in the config hash and in the
result paths; the SFT and reward models are shared by the values of a field they do not read; a suite without
lists keeps today's configs, hashes and layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core import results, sweep
from remax_bench.core.config import SuiteError
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.runner import Runner, plan

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _nano(**shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    return data


def _suite(**shared):
    return load_suite_text(yaml.safe_dump(_nano(**shared)))


def test_a_list_is_a_sweep_with_one_concrete_suite_per_value():
    plain, swept = _suite(), _suite(kl_coef=[0.05, 0.1, 0.2])
    assert swept.sweep == {"shared.kl_coef": [0.05, 0.1, 0.2]} and swept.shared.kl_coef == 0.05
    assert "sweep" not in plain.resolved()  # a suite without lists: the configs and hashes of before
    assert swept.config_hash() != plain.config_hash()
    variants = sweep.variants(swept)
    assert [v.label for v in variants] == ["kl_coef=0.05", "kl_coef=0.1", "kl_coef=0.2"]
    assert [v.suite.shared.kl_coef for v in variants] == [0.05, 0.1, 0.2]
    assert all(not v.suite.sweep and v.shares_preparation for v in variants)
    assert variants[0].suite.config_hash() == plain.config_hash()  # nano's own beta is 0.05
    assert len({v.suite.config_hash() for v in variants}) == 3
    assert type(swept).model_validate(swept.resolved()) == swept  # the resolved form reads back
    assert sweep.variants(plain) == [sweep.Variant("", {}, plain, True)]
    # Two fields: their product; a field the SFT stage reads trains SFT once per value.
    grid = sweep.variants(_suite(kl_coef=[0.1, 0.2], max_response_length=[8, 6]))
    assert [v.label for v in grid] == ["kl_coef=0.1,max_response_length=8", "kl_coef=0.1,max_response_length=6",
                                       "kl_coef=0.2,max_response_length=8", "kl_coef=0.2,max_response_length=6"]
    assert not grid[0].shares_preparation


@pytest.mark.parametrize("value, message", [
    ([0.05, -1.0], "shared.kl_coef: the sweep's value -1.0 is not valid: Input should be greater than or equal to 0"),
    ([0.1, 0.1], "shared.kl_coef: the sweep's values must be distinct, got [0.1, 0.1]"),
    ([], "shared.kl_coef: expected a number >= 0, got a list []"),
])
def test_a_bad_sweep_names_the_field_and_the_value(value, message):
    with pytest.raises(SuiteError) as err:
        _suite(kl_coef=value)
    assert message in str(err.value)


def test_each_value_is_validated_as_a_whole_suite():
    # 6 prompts do not split into the 4 answers per prompt GRPO draws when the batch counts samples.
    data = _nano(rollout_batch_unit="samples", rollout_batch_size=[8, 6])
    data["grpo"] = {"enabled": True, "samples_per_prompt": 4}
    with pytest.raises(SuiteError, match=r"shared.rollout_batch_size: the sweep's value 6 is not valid: "
                                         r".*multiple of grpo.samples_per_prompt=4"):
        load_suite_text(yaml.safe_dump(data))
    with pytest.raises(SuiteError, match="shared.kl: expected a mapping"):
        _suite(kl=[{"estimator": "k1"}, {"estimator": "k3"}])  # a block is not a scalar: no sweep


def test_plan_runs_every_algorithm_per_value_and_shares_the_preparation():
    suite = _suite(kl_coef=[0.05, 0.1])
    stages = plan(suite)
    keys = [s.key for s in stages]
    assert keys == ["sft/seed0", "reward_model/seed0",
                    "ppo@kl_coef=0.05/seed0", "remax@kl_coef=0.05/seed0", "dpo@kl_coef=0.05/seed0",
                    "ppo@kl_coef=0.1/seed0", "remax@kl_coef=0.1/seed0", "dpo@kl_coef=0.1/seed0"]
    by = {s.key: s for s in stages}
    assert by["remax@kl_coef=0.1/seed0"].needs == ["sft/seed0", "reward_model/seed0"]
    runner = Runner(suite, "/results")
    assert runner.final_dir("remax@kl_coef=0.1/seed0") == Path("/results/nano/remax@kl_coef=0.1/seed0")
    config = runner.stage_config(by["remax@kl_coef=0.1/seed0"], by)
    assert config["stage"] == "remax" and config["suite"]["shared"]["kl_coef"] == 0.1 and "sweep" not in config["suite"]
    assert config["inputs"] == {"sft": "sft/seed0/checkpoint", "reward_model": "reward_model/seed0/checkpoint"}
    assert runner.config_path(by["remax@kl_coef=0.1/seed0"]).name == "remax@kl_coef=0.1-seed0.json"
    assert plan(suite, only=["remax"])[1].key == "remax@kl_coef=0.1/seed0"
    # A suite without lists: today's plan, keys and paths.
    assert [s.key for s in plan(load_suite("tiny"))][:3] == ["sft/seed0", "reward_model/seed0", "ppo/seed0"]


def test_eval_reads_its_own_values_checkpoints_by_algorithm_name():
    data = _nano(kl_coef=[0.05, 0.1])
    data["eval"] = {"backend": "hf", "judge": {"type": "gold"}}
    suite = load_suite_text(yaml.safe_dump(data))
    by = {s.key: s for s in plan(suite)}
    config = Runner(suite, "/r").stage_config(by["eval@kl_coef=0.1/seed0"], by)
    assert config["inputs"]["checkpoints"] == {"sft": "sft/seed0/checkpoint", "ppo": "ppo@kl_coef=0.1/seed0/checkpoint",
                                               "remax": "remax@kl_coef=0.1/seed0/checkpoint",
                                               "dpo": "dpo@kl_coef=0.1/seed0/checkpoint"}


def test_results_layout_helpers(tmp_path):
    for name in ("sft", "reward_model", "ppo@kl_coef=0.1", "ppo@kl_coef=0.05", "eval@kl_coef=0.1", "logs"):
        (tmp_path / name).mkdir()
    assert results.variants_in(tmp_path) == ["kl_coef=0.05", "kl_coef=0.1"]  # by value, not by text
    dirs = results.stage_dirs_of(tmp_path, "kl_coef=0.1")
    assert {k: v.name for k, v in dirs.items() if k != "logs"} == {
        "sft": "sft", "reward_model": "reward_model", "ppo": "ppo@kl_coef=0.1", "eval": "eval@kl_coef=0.1"}
    assert results.split_stage_dirname("ppo@kl_coef=0.1") == ("ppo", "kl_coef=0.1")
    assert results.variants_in(tmp_path / "missing") == [""]


def test_validate_table_shows_the_sweep(tmp_path):
    suite_file = tmp_path / "sweep.yaml"
    suite_file.write_text(yaml.safe_dump(_nano(kl_coef=[0.05, 0.1])))
    result = CliRunner().invoke(main, ["validate", str(suite_file), "--table", "--config-only"])
    assert result.exit_code == 0, result.output
    line = next(text for text in result.output.splitlines() if "shared.kl_coef" in text)
    assert "sweep [0.05, 0.1]" in line


@pytest.mark.slow
def test_a_swept_run_reports_and_checks(tmp_path):
    """nano with beta swept over two values (the gold scorer as reward, so ReMax needs no reward model): SFT once,
    ReMax per value, under remax@kl_coef=<value>/; report and check read the layout."""
    data = _nano(kl_coef=[0.05, 0.2], reward_function="gold", iterations=3, heldout_eval_every=1)
    data["ppo"], data["dpo"] = {"enabled": False}, {"enabled": False}
    suite_file = tmp_path / "nano.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "remax_bench.cli", *args], env=env, capture_output=True,
                              text=True, timeout=600)

    run = cli("run", str(suite_file), "--results-dir", str(tmp_path / "res"))
    assert run.returncode == 0, run.stdout + run.stderr
    root = tmp_path / "res" / "nano"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.name != "logs") == [
        "remax@kl_coef=0.05", "remax@kl_coef=0.2", "sft"]
    summaries = [json.loads((root / f"remax@kl_coef={b}" / "seed0" / "summary.json").read_text()) for b in (0.05, 0.2)]
    assert all("final_kl" in s and s["kl_treatment"]["shape"] == "return_to_go" for s in summaries)
    again = cli("run", str(suite_file), "--results-dir", str(tmp_path / "res"))
    assert again.stdout.count("already complete, skipped") == 3, again.stdout

    report = cli("report", str(tmp_path / "res"), "--out", str(tmp_path / "reports"))
    assert report.returncode == 0, report.stdout + report.stderr
    out = tmp_path / "reports" / "nano"
    assert (out / "frontier.png").is_file() and (out / "kl_coef=0.2" / "gold_vs_step.png").is_file()
    md = (out / "summary.md").read_text()
    assert "### kl_coef=0.05" in md and "Sweep: kl_coef=0.05, kl_coef=0.2" in md
    assert "KL regularisation: matched" in md

    check = cli("check", str(root), "--baseline", str(tmp_path / "b.json"), "--update-baseline")
    assert "remax@kl_coef=0.2.heldout_gold_reward" in json.loads((tmp_path / "b.json").read_text())["metrics"]
    assert "rule: remax reproducible with a fixed seed" in check.stdout, check.stdout + check.stderr
