import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.config import load_suite, load_suite_text
from remax_bench.runner import plan

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _suite(**edits):
    data = yaml.safe_load(NANO.read_text())
    for key, value in edits.items():
        data[key] = value
    return load_suite_text(yaml.safe_dump(data))


def test_plan_order_and_dependencies():
    suite = load_suite("tiny")
    keys = [s.key for s in plan(suite)]
    assert keys[:2] == ["sft/seed0", "reward_model/seed0"]
    assert keys[2:] == ["ppo/seed0", "remax/seed0", "dpo/seed0", "eval/seed0",
                        "ppo/seed1", "remax/seed1", "dpo/seed1", "eval/seed1"]
    by = {s.key: s for s in plan(suite)}
    assert by["dpo/seed1"].needs == ["sft/seed0"]
    assert by["remax/seed1"].needs == ["sft/seed0", "reward_model/seed0"]
    assert set(by["eval/seed1"].needs) == {"sft/seed0", "ppo/seed1", "remax/seed1", "dpo/seed1"}


def test_plan_only_and_given_checkpoints():
    suite = _suite(sft={"path": "some/sft-model"}, dpo={"enabled": False})
    stages = plan(suite, seeds=[3], only=["sft", "remax"])
    assert [(s.key, s.given) for s in stages] == [("sft/seed3", "some/sft-model"), ("remax/seed3", None)]
    with pytest.raises(ValueError, match="--only names stages not in this suite's plan"):
        plan(suite, only=["dpo"])


def test_dry_run_prints_commands(tmp_path):
    result = CliRunner().invoke(main, ["run", str(NANO), "--dry-run", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "-m trainers.remax --config" in result.output
    assert "planned" in result.output and not any(tmp_path.iterdir())


def _run(tmp_path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "remax_bench.cli", "run", str(NANO), "--results-dir", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=600,
    )


def test_full_run_resume_and_failure_isolation(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    root = tmp_path / "nano"
    for stage in ("sft", "reward_model", "ppo", "remax", "dpo"):
        final = root / stage / "seed0"
        manifest = json.loads((final / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert (final / "summary.json").is_file() and (final / "checkpoint" / "config.json").is_file()
        assert (final / "stage.log").is_file()
    remax = json.loads((root / "remax" / "seed0" / "summary.json").read_text())
    assert "critic" not in remax["model_state_bytes"]
    assert len((root / "remax" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 2

    # A second run skips everything that is complete.
    second = _run(tmp_path)
    assert second.returncode == 0 and second.stdout.count("already complete, skipped") == 5

    # A stage killed mid-way leaves only a partial dir, which the next run discards and redoes.
    shutil.rmtree(root / "ppo" / "seed0")
    (root / "ppo" / ".seed0.partial").mkdir()
    (root / "ppo" / ".seed0.partial" / "metrics.jsonl").write_text("{}\n")
    third = _run(tmp_path, "--only", "ppo")
    assert third.returncode == 0, third.stdout
    assert not (root / "ppo" / ".seed0.partial").exists() and (root / "ppo" / "seed0" / "summary.json").is_file()

    # A failing stage does not stop independent ones; the table says what failed and the exit code is 1.
    broken = tmp_path / "broken.yaml"
    data = yaml.safe_load(NANO.read_text())
    data["data"]["preferences"] = str(tmp_path / "missing.jsonl")  # dpo and reward_model fail
    broken.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "remax_bench.cli", "run", str(broken), "--results-dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    table = result.stdout[result.stdout.index("stage "):]
    assert "sft/seed0" in table and "completed" in table
    assert "reward_model/seed0  failed" in table and "missing.jsonl not found" in table
    assert "remax/seed0" in table and "blocked" in table
    assert (tmp_path / "b" / "nano" / "reward_model" / "seed0.failed" / "manifest.json").is_file()
