"""`--set KEY=VALUE` on run, validate and bench, and `run --dry-run` on a machine that cannot run the suite."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core.config import SuiteError
from remax_bench.core.stage import config_hash
from remax_bench.core.suite_file import load_suite
from remax_bench.runner import Runner, plan

REPO = Path(__file__).resolve().parent.parent
NANO = REPO / "tests" / "fixtures" / "nano.yaml"


def test_overrides_set_dotted_fields_with_yaml_values():
    suite = load_suite(NANO, ["shared.kl_coef=0.1", "seeds=[0,1,2]", "shared.learning_rate=1e-4",
                              "runtime.deepspeed.zero_stage=1", "ppo.enabled=false", "shared.kl_coef=0.2"])
    assert suite.shared.kl_coef == 0.2  # the later of two wins, as on any command line
    assert suite.seeds == [0, 1, 2] and suite.shared.learning_rate == 1e-4
    assert suite.runtime.deepspeed.zero_stage == 1  # a block the file leaves out is created
    assert "ppo" not in suite.enabled_algorithms()


@pytest.mark.parametrize("override, message", [
    ("shared.nope=1", "shared.nope: unknown key; expected one of: max_prompt_length,"),
    ("shared.kl_coef=abc", "shared.kl_coef: expected a number >= 0, got 'abc' (a string)"),
    ("shared.kl_coef", "--set shared.kl_coef: expected KEY=VALUE with a dotted KEY, e.g. --set shared.kl_coef=0.1"),
    ("shared.kl_cof=0.1", "shared.kl_cof: unknown key; did you mean 'kl_coef'?"),
    ("seeds=[0,0]", "seeds: expected distinct integers >= 0, got [0, 0]"),
    ("shared.kl_coef.x=1", "--set shared.kl_coef.x=1: shared.kl_coef is 0.05, not a block of fields"),
    ("seeds=[0,1", "--set seeds=[0,1: the value is not valid YAML"),
    ("shared..kl=1", "--set shared..kl=1: expected a dotted path of field names before '='"),
    ("ppo.max_prompt_length=8", "ppo.max_prompt_length: cannot override shared.max_prompt_length in an algorithm block"),
])
def test_bad_overrides_get_the_schema_messages_and_exit_2_before_any_stage(tmp_path, override, message):
    with pytest.raises(SuiteError) as err:
        load_suite(NANO, [override])
    assert message in str(err.value)
    for args in (["run", str(NANO), "--results-dir", str(tmp_path / "r")], ["validate", str(NANO)],
                 ["bench", "--suite", str(NANO), "--model", "tiny:nano", "--results-dir", str(tmp_path / "r")]):
        result = CliRunner().invoke(main, [*args, "--set", override])
        assert result.exit_code == 2, result.output
        assert f"invalid suite {NANO} with --set {override}:" in result.output and message in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing started


def test_validate_prints_the_suite_with_its_overrides():
    result = CliRunner().invoke(main, ["validate", str(NANO), "--config-only", "--set", "shared.kl_coef=0.1",
                                       "--set", "seeds=[0,1,2]"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["shared"]["kl_coef"] == 0.1 and resolved["seeds"] == [0, 1, 2]
    assert f"config hash {load_suite(NANO, ['shared.kl_coef=0.1', 'seeds=[0,1,2]']).config_hash()}" in result.output


def test_overrides_reach_every_stage_config_and_its_identity(tmp_path):
    overrides = ["shared.kl_coef=0.1"]
    suite = load_suite(NANO, overrides)
    runner = Runner(suite, tmp_path, overrides=overrides)
    stages = plan(suite)
    plans = {s.key: s for s in stages}
    config = runner.stage_config(stages[-1], plans)
    assert config["overrides"] == overrides and config["suite"]["shared"]["kl_coef"] == 0.1
    # The same suite written in the file has the same identity: resume looks at values, not at their spelling.
    edited = yaml.safe_load(NANO.read_text())
    edited["shared"]["kl_coef"] = 0.1
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    def last_stage_config(suite):  # each runner plans its own suite (a stage carries the suite it was planned from)
        own = plan(suite)
        return Runner(suite, tmp_path).stage_config(own[-1], {s.key: s for s in own})

    assert config_hash(last_stage_config(load_suite(tmp_path / "edited.yaml"))) == config_hash(config)
    assert config_hash(last_stage_config(load_suite(NANO))) != config_hash(config)


def test_dry_run_of_a_gpu_suite_prints_the_plan_and_what_would_stop_it(tmp_path, monkeypatch):
    """suites/7b_comparison.yaml on this CPU machine without an OPENAI_API_KEY: the deepspeed commands, then the
    problems a real run would meet, exit 0, nothing written."""
    import torch

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["run", str(REPO / "suites" / "7b_comparison.yaml"), "--dry-run",
                                       "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in ("sft", "reward_model", "ppo", "remax", "dpo"):
        assert f"deepspeed --num_gpus 4 --master_port 29500 --module trainers.{stage} --config" in out, out
    assert "[3/6] ppo/seed2023: will run (missing) after sft/seed2023, reward_model/seed2023" in out
    assert "-m remax_bench.evaluation.stage --config" in out
    problems = out[out.index("what would stop a real run here"):].splitlines()[1:]
    expected = ["eval.judge.api_key_env: the environment variable OPENAI_API_KEY is not set"]
    if not torch.cuda.is_available():
        expected.append("runtime.device: 'cuda' but no CUDA device is available")
    assert len(problems) == len(expected) and all(p.strip().startswith(e) for p, e in zip(problems, expected)), out
    assert not (tmp_path / "r").exists()
    # A real run stops on the same problems, before any stage starts.
    real = CliRunner().invoke(main, ["run", str(REPO / "suites" / "7b_comparison.yaml"), "--results-dir",
                                     str(tmp_path / "r")])
    assert real.exit_code == 2 and expected[0] in real.output and not (tmp_path / "r").exists()
