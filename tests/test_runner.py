import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.runner import plan

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
sys.path.insert(0, str(NANO.parent))
from tracker_files import tensorboard_scalars  # noqa: E402


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
    first = _run(tmp_path, "--tracker", "tensorboard")
    assert first.returncode == 0, first.stdout + first.stderr
    root = tmp_path / "nano"
    for stage in ("sft", "reward_model", "ppo", "remax", "dpo"):
        final = root / stage / "seed0"
        manifest = json.loads((final / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert (final / "summary.json").is_file() and (final / "checkpoint" / "config.json").is_file()
        assert (final / "stage.log").is_file()
        # Every stage watched live: TensorBoard's reader finds the very figures of metrics.jsonl.
        rows = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
        scalars = tensorboard_scalars(root / "tensorboard" / stage / "seed0")
        names = {"sft": ("loss", "peak_memory_bytes"), "reward_model": ("loss", "accuracy"), "dpo": ("loss",),
                 "ppo": ("reward_mean", "kl", "policy_loss", "value_loss", "peak_memory_bytes"),
                 "remax": ("reward_mean", "kl", "policy_loss", "peak_memory_bytes")}[stage]
        for name in names:
            assert scalars[name] == {r["step"]: r[name] for r in rows if name in r}, (stage, name)
        assert scalars["summary/peak_memory_bytes"][rows[-1]["step"]] == json.loads(
            (final / "summary.json").read_text())["peak_memory_bytes"]
    remax = json.loads((root / "remax" / "seed0" / "summary.json").read_text())
    assert "critic" not in remax["model_state_bytes"]
    assert len((root / "remax" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 2

    # A second run skips everything that is complete: trackers watch a run, they are not part of what it is.
    second = _run(tmp_path, "--tracker", "none")
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
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "chosen": \n')
    data["data"]["preferences"] = str(tmp_path / "broken.jsonl")  # dpo and reward_model fail
    broken.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "remax_bench.cli", "run", str(broken), "--results-dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    table = result.stdout[result.stdout.index("stage "):]
    assert "sft/seed0" in table and "completed" in table
    assert "reward_model/seed0  failed" in table and "broken.jsonl" in table
    assert "remax/seed0" in table and "blocked" in table
    assert (tmp_path / "b" / "nano" / "reward_model" / "seed0.failed" / "manifest.json").is_file()

    # Once the data is there, the re-run completes the stage and its stale failure record is gone.
    fixed = _run(tmp_path / "b", "--only", "sft,reward_model")
    assert fixed.returncode == 0, fixed.stdout
    assert not (tmp_path / "b" / "nano" / "reward_model" / "seed0.failed").exists()


def _cli(cwd, *args):
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "remax_bench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_resume_does_not_depend_on_where_results_sit(tmp_path):
    """Run with a relative results path, then copy the folder elsewhere: a dry-run on the copy (given by an
    absolute path, from another directory) sees every stage complete, the copy's reproduce rule passes,
    and a dry-run gives the reason for each stage it would run."""
    (tmp_path / "work").mkdir()
    data = yaml.safe_load(NANO.read_text())
    data["shared"]["iterations"] = 3  # the reproduce rule re-runs the first three steps
    suite = tmp_path / "nano.yaml"
    suite.write_text(yaml.safe_dump(data))
    first = _cli(tmp_path / "work", "run", str(suite), "--results-dir", "res", "--only", "sft,reward_model,remax")
    assert first.returncode == 0, first.stdout + first.stderr
    manifest = json.loads((tmp_path / "work" / "res" / "nano" / "remax" / "seed0" / "manifest.json").read_text())
    assert manifest["config"]["inputs"] == {"sft": "sft/seed0/checkpoint", "reward_model": "reward_model/seed0/checkpoint"}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "work" / "res", copy)
    shutil.rmtree(tmp_path / "work" / "res")

    dry = _cli(tmp_path, "run", str(suite), "--results-dir", str(copy), "--only", "sft,reward_model,remax", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for key in ("sft/seed0", "reward_model/seed0", "remax/seed0"):
        assert f"{key}: complete" in dry.stdout, dry.stdout
    assert "will run" not in dry.stdout

    check = _cli(tmp_path, "check", str(copy / "nano"), "--baseline", str(tmp_path / "none.json"), "--update-baseline")
    assert "rule: remax reproducible with a fixed seed" in check.stdout, check.stdout + check.stderr
    line = next(text for text in check.stdout.splitlines() if "rule: remax reproducible" in text)
    assert "  pass  " in line, check.stdout

    # Reasons: a changed field, a changed input, a missing and a partial stage.
    data["shared"]["kl_coef"] = 0.1
    data["reward_model"]["epochs"] = 2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    (copy / "nano" / "dpo" / ".seed0.partial").mkdir(parents=True)
    dry = _cli(tmp_path, "run", str(changed), "--results-dir", str(copy), "--dry-run")
    out = dry.stdout
    # Every stage's config holds the whole resolved suite; a downstream stage names its changed input.
    assert "sft/seed0: will run (config changed: reward_model.epochs, shared.kl_coef)" in out, out
    assert "reward_model/seed0: will run (input changed: sft/seed0)" in out, out
    assert "remax/seed0: will run (input changed: sft/seed0, reward_model/seed0)" in out, out
    assert "ppo/seed0: will run (missing)" in out and "dpo/seed0: will run (partial: " in out, out
    assert not (copy / "nano" / ".configs" / "ppo-seed0.json").exists()  # a dry run writes nothing


def _long_sft_suite(tmp_path):
    data = yaml.safe_load(NANO.read_text())
    data["sft"]["epochs"] = 100000  # runs until stopped
    suite = tmp_path / "long.yaml"
    suite.write_text(yaml.safe_dump(data))
    return suite


def _start_runner_and_its_stage(tmp_path, suite):
    import os
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runner = subprocess.Popen([sys.executable, "-m", "remax_bench.cli", "run", str(suite), "--results-dir",
                               str(tmp_path / "res"), "--only", "sft"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children")
    deadline = time.time() + 120
    while time.time() < deadline:
        stage = children.read_text().split() if children.exists() else []
        if stage and (tmp_path / "res" / "nano" / "sft" / ".seed0.partial" / "metrics.jsonl").exists():
            return runner, int(stage[0])
        time.sleep(0.1)
    runner.kill()
    raise AssertionError("the stage never started")


def _holds(path, text, within=60.0):
    import time

    deadline = time.time() + within
    while time.time() < deadline:
        if path.is_file() and text in path.read_text():
            return True
        time.sleep(0.1)
    return False


def _gone(pid, within=10.0):
    import time

    deadline = time.time() + within
    while time.time() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "zombie" in status.read_text():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stage_dies_with_its_runner_on_sigkill_and_sigterm(tmp_path):
    import os
    import signal

    suite = _long_sft_suite(tmp_path)
    runner, stage = _start_runner_and_its_stage(tmp_path, suite)
    log = tmp_path / "res" / "nano" / "logs" / "sft-seed0.log"
    # The stage log holds each line as the stage prints it (the first progress line follows step 0's metrics)...
    assert _holds(log, "[progress] stage=sft step=0"), "the stage's output did not reach its log while it ran"
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert _gone(stage), "the stage outlived a SIGKILLed runner"
    assert "[progress] stage=sft step=0" in log.read_text()  # ... and keeps it when both are killed

    # SIGTERM (a scheduler): the stage is stopped, recorded as interrupted, and the runner exits 1.
    shutil.rmtree(tmp_path / "res" / "nano" / "sft" / ".seed0.partial")  # left by the SIGKILLed stage
    runner, stage = _start_runner_and_its_stage(tmp_path, suite)
    os.kill(runner.pid, signal.SIGTERM)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 1, out
    assert _gone(stage) and "interrupted" in out
    failed = tmp_path / "res" / "nano" / "sft" / "seed0.failed" / "manifest.json"
    assert failed.is_file(), out + (tmp_path / "res" / "nano" / "logs" / "sft-seed0.log").read_text()
    assert json.loads(failed.read_text())["status"] == "interrupted"


@pytest.mark.parametrize("edit, message", [
    (lambda d, t: d["data"].update(prompts=str(t / "missing.jsonl")), "data.prompts.source: data file"),
    (lambda d, t: d["models"].update(policy="tiny:huge"), "unknown tiny preset 'huge'"),
    (lambda d, t: d["models"].update(policy="./no/such/model"), "models.policy: model directory ./no/such/model not found"),
    (lambda d, t: d["eval"].update(enabled=True, judge={"type": "openai", "model": "m",
                                                        "api_key_env": "REMAX_BENCH_NO_SUCH_KEY"}),
     "eval.judge.api_key_env: the environment variable REMAX_BENCH_NO_SUCH_KEY is not set"),
])
def test_problems_found_before_any_stage_starts(tmp_path, edit, message):
    data = yaml.safe_load(NANO.read_text())
    edit(data, tmp_path)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data))
    for args in (["validate", str(suite)], ["run", str(suite), "--results-dir", str(tmp_path / "res")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("seeds", ["-1", "0,0"])
def test_bad_seeds_are_refused(tmp_path, seeds):
    result = CliRunner().invoke(main, ["run", str(NANO), "--seeds", seeds, "--dry-run", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and "distinct non-negative" in result.output


def test_cuda_without_a_gpu_is_found_before_any_stage_starts(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = yaml.safe_load(NANO.read_text())
    data["runtime"]["device"] = "cuda"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(tmp_path / "res")])
    assert result.exit_code == 2 and "runtime.device: 'cuda' but no CUDA device" in result.output, result.output
    assert not (tmp_path / "res").exists()
