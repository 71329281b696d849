import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from remax_bench.cli import main
from remax_bench.core.stage import EXIT_RESUMABLE
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


REPO = Path(__file__).resolve().parent.parent


def _cli(cwd, *args):
    """The command line in its own process, as a user runs it."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "remax_bench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def _run_here(monkeypatch, *args) -> tuple[int, str]:
    """The command line in this process (the runner); its stages still run as their own processes."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = CliRunner().invoke(main, ["run", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def nano_run(tmp_path_factory):
    """The nano suite run once, from its own process, into a results path relative to where it ran; the tests
    below read it, and the one that changes it leaves every stage complete again."""
    base = tmp_path_factory.mktemp("nano_run")
    (base / "work").mkdir()
    data = yaml.safe_load(NANO.read_text())
    data["shared"]["iterations"] = 3  # the reproduce rule re-runs the first three steps
    suite = base / "nano.yaml"
    suite.write_text(yaml.safe_dump(data))
    first = _cli(base / "work", "run", str(suite), "--results-dir", "res", "--tracker", "tensorboard")
    assert first.returncode == 0, first.stdout + first.stderr
    return suite, base / "work" / "res"


def test_full_run_resume_and_failure_isolation(nano_run, tmp_path, monkeypatch):
    suite, results = nano_run
    root = results / "nano"
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
    assert len((root / "remax" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 3

    # A second run skips everything that is complete: trackers watch a run, they are not part of what it is.
    code, out = _run_here(monkeypatch, str(suite), "--results-dir", str(results), "--tracker", "none")
    assert code == 0 and out.count("already complete, skipped") == 5, out

    # A stage killed mid-way leaves only a partial dir, which the next run discards and redoes.
    shutil.rmtree(root / "ppo" / "seed0")
    (root / "ppo" / ".seed0.partial").mkdir()
    (root / "ppo" / ".seed0.partial" / "metrics.jsonl").write_text("{}\n")
    code, out = _run_here(monkeypatch, str(suite), "--results-dir", str(results), "--only", "ppo")
    assert code == 0, out
    assert not (root / "ppo" / ".seed0.partial").exists() and (root / "ppo" / "seed0" / "summary.json").is_file()

    # A failing stage does not stop independent ones; the table says what failed and the exit code is 1.
    # (Pairs whose prompts are all over shared.max_prompt_length pass preflight, which reads the file but does
    # not tokenize, and fail the stages that train on them.) SFT reads no preference pair: its result, copied
    # in, is kept.
    broken = tmp_path / "broken.yaml"
    data = yaml.safe_load(suite.read_text())
    (tmp_path / "broken.jsonl").write_text(json.dumps({"prompt": "a" * 200, "chosen": "b", "rejected": "c"}) + "\n")
    data["data"]["preferences"] = str(tmp_path / "broken.jsonl")  # dpo and reward_model fail
    broken.write_text(yaml.safe_dump(data))
    shutil.copytree(root / "sft", tmp_path / "b" / "nano" / "sft")
    code, out = _run_here(monkeypatch, str(broken), "--results-dir", str(tmp_path / "b"))
    assert code == 1, out
    table = out[out.index("stage "):]
    assert "sft/seed0           skipped" in table
    assert "reward_model/seed0  failed" in table and "no row of data.preferences fits" in table
    assert "dpo/seed0           failed" in table  # tried although the reward model failed: it does not need it
    assert "remax/seed0         blocked" in table and "ppo/seed0           blocked" in table
    assert (tmp_path / "b" / "nano" / "reward_model" / "seed0.failed" / "manifest.json").is_file()

    # Once the data is there, the re-run completes the stage and its stale failure record is gone.
    code, out = _run_here(monkeypatch, str(suite), "--results-dir", str(tmp_path / "b"), "--only", "sft,reward_model")
    assert code == 0, out
    assert not (tmp_path / "b" / "nano" / "reward_model" / "seed0.failed").exists()


def test_resume_does_not_depend_on_where_results_sit(nano_run, tmp_path):
    """Run with a relative results path, then copy the folder elsewhere: a dry-run on the copy (given by an
    absolute path, from another directory) sees every stage complete, the copy's reproduce rule passes,
    and a dry-run gives the reason for each stage it would run."""
    suite, results = nano_run
    data = yaml.safe_load(suite.read_text())
    manifest = json.loads((results / "nano" / "remax" / "seed0" / "manifest.json").read_text())
    assert manifest["config"]["inputs"] == {"sft": "sft/seed0/checkpoint", "reward_model": "reward_model/seed0/checkpoint"}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(results, copy)
    away = results.with_name("res.away")  # nothing may point back to the original while the copy is read
    results.rename(away)
    try:
        dry = _cli(tmp_path, "run", str(suite), "--results-dir", str(copy), "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        for key in ("sft/seed0", "reward_model/seed0", "ppo/seed0", "remax/seed0", "dpo/seed0"):
            assert f"{key}: complete" in dry.stdout, dry.stdout
        assert "will run" not in dry.stdout

        check = _cli(tmp_path, "check", str(copy / "nano"), "--baseline", str(tmp_path / "none.json"),
                     "--update-baseline")
        assert "rule: remax reproducible with a fixed seed" in check.stdout, check.stdout + check.stderr
        line = next(text for text in check.stdout.splitlines() if "rule: remax reproducible" in text)
        assert "  pass  " in line, check.stdout
    finally:
        away.rename(results)

    # Reasons: a changed field, a changed input, a missing and a partial stage.
    data["shared"]["kl_coef"] = 0.1
    data["reward_model"]["epochs"] = 2
    shutil.rmtree(copy / "nano" / "ppo" / "seed0")
    shutil.rmtree(copy / "nano" / "dpo" / "seed0")
    (copy / "nano" / "dpo" / ".seed0.partial").mkdir(parents=True)
    files = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    out = _dry_run(tmp_path, data, copy, "sft,reward_model,ppo,remax,dpo")
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == files  # a dry run writes nothing
    # A stage's identity is the fields it reads: SFT reads neither; a downstream stage names its changed input.
    assert "sft/seed0: complete" in out, out
    assert "reward_model/seed0: will run (config changed: reward_model.epochs)" in out, out
    assert "remax/seed0: will run (input changed: reward_model/seed0)" in out, out
    assert "ppo/seed0: will run (missing)" in out and "dpo/seed0: will run (partial: " in out, out

    # Fields only the algorithms read leave SFT and the reward model complete.
    data = yaml.safe_load(suite.read_text())
    data["shared"]["iterations"], data["ppo"], data["seeds"] = 4, {"enabled": False}, [0, 1]
    data["remax"] = {"gamma": 0.9}
    out = _dry_run(tmp_path, data, copy)
    assert "sft/seed0: complete" in out and "reward_model/seed0: complete" in out, out
    assert "remax/seed0: will run (config changed: remax.gamma, shared.iterations)" in out, out
    assert "remax/seed1: will run (missing)" in out, out

    # An SFT field reruns SFT and, through the input identities, everything downstream.
    data = yaml.safe_load(suite.read_text())
    data["sft"]["learning_rate"] = 5e-4
    out = _dry_run(tmp_path, data, copy)
    assert "sft/seed0: will run (config changed: sft.learning_rate)" in out, out
    assert "reward_model/seed0: will run (input changed: sft/seed0)" in out, out
    assert "remax/seed0: will run (input changed: sft/seed0, reward_model/seed0)" in out, out


def _dry_run(tmp_path, data: dict, results_dir: Path, only: str = "sft,reward_model,remax") -> str:
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["run", str(edited), "--results-dir", str(results_dir), "--only", only,
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.output


def _long_sft_suite(tmp_path):
    data = yaml.safe_load(NANO.read_text())
    data["sft"].update(epochs=100000, max_steps=60)  # runs long enough to be stopped
    suite = tmp_path / "long.yaml"
    suite.write_text(yaml.safe_dump(data))
    return suite


def _start_runner_and_its_stage(tmp_path, suite, rows=0):
    """The runner, once its stage has written ``rows`` rows of metrics (an event of the stage's own)."""
    import os
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runner = subprocess.Popen([sys.executable, "-m", "remax_bench.cli", "run", str(suite), "--results-dir",
                               str(tmp_path / "res"), "--only", "sft"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children")
    # Waits for the stage's own file; the limit only ends a run that hangs (two imports of torch take minutes
    # on a loaded 2-core machine).
    deadline = time.time() + 600
    while time.time() < deadline:
        stage = children.read_text().split() if children.exists() else []
        metrics = tmp_path / "res" / "nano" / "sft" / ".seed0.partial" / "metrics.jsonl"
        if stage and metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
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

    # SIGTERM (a scheduler): the runner forwards it, the stage writes a checkpoint at the end of its iteration and
    # stops as interrupted, and the runner exits resumable.
    shutil.rmtree(tmp_path / "res" / "nano" / "sft" / ".seed0.partial")  # left by the SIGKILLed stage
    runner, stage = _start_runner_and_its_stage(tmp_path, suite, rows=2)
    os.kill(runner.pid, signal.SIGTERM)
    out, _ = runner.communicate(timeout=300)
    log = (tmp_path / "res" / "nano" / "logs" / "sft-seed0.log").read_text()
    assert runner.returncode == EXIT_RESUMABLE, out + log
    assert _gone(stage) and "interrupted" in out
    assert "checkpoint at iteration " in log, log
    written = int(log.split("checkpoint at iteration ")[1].split()[0])
    assert f"stopped by SIGTERM: a re-run resumes from iteration {written}" in out, out
    partial = tmp_path / "res" / "nano" / "sft" / ".seed0.partial" / "manifest.json"
    assert json.loads(partial.read_text())["status"] == "interrupted"

    # A dry run says where the stage would resume, and a config that only reschedules checkpoints keeps it; a
    # changed config starts over.
    def run(suite_file, *extra):
        return CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(tmp_path / "res"), "--only",
                                         "sft", *extra])

    dry = run(suite, "--dry-run")
    assert f"will run (partial: an interrupted attempt, will resume from iteration {written})" in dry.output, dry.output
    data = yaml.safe_load(suite.read_text())
    data["runtime"]["checkpoint_every"] = 1000
    suite.write_text(yaml.safe_dump(data))
    assert f"will resume from iteration {written}" in run(suite, "--dry-run").output
    data["sft"]["learning_rate"] = 0.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    assert "will run (partial: an interrupted attempt, redone from the start)" in run(changed, "--dry-run").output

    # `run` resumes by default; the console and the stage's log say from where.
    again = run(suite)
    assert again.exit_code == 0, again.output
    assert f"[resume] sft: resumed from iteration {written}" in again.output, again.output
    final = tmp_path / "res" / "nano" / "sft" / "seed0"
    assert f"resumed from iteration {written}" in (final / "stage.log").read_text()
    assert json.loads((final / "summary.json").read_text())["resumed_from"] == [written]


def _written(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


PROMPT_LINES = "".join(f'{{"prompt": "reverse: abc{i}"}}\n' for i in range(6))
# An eval stage that reads local files: a reward-model judge needs no key (the gold judge grades synthetic data only).
LOCAL_EVAL = {"enabled": True, "judge": {"type": "reward_model"}, "alpaca_eval": {"enabled": False},
              "mt_bench": {"enabled": False}}


@pytest.mark.parametrize("edit, message", [
    (lambda d, t: d["data"].update(prompts=str(t / "missing.jsonl")), "data.prompts.source: data file"),
    (lambda d, t: d["data"].update(prompts=_written(t / "p.jsonl", PROMPT_LINES + '{"prompt": "x", }\n')),
     "p.jsonl, line 7: not valid JSON (Expecting property name enclosed in double quotes, column 17)"),
    (lambda d, t: d["data"].update(preferences=_written(t / "pairs.jsonl", '{"prompt": "p", "chosen": "a"}\n')),
     "pairs.jsonl', line 1: expected columns prompt/chosen/rejected"),
    (lambda d, t: d.update(eval={**LOCAL_EVAL, "alpaca_eval": {"prompts": _written(
        t / "a.jsonl", '{"instruction": "One?"}\n{"instruction": "Two?",}\n')}}),
     "eval.alpaca_eval.prompts: " + "{t}/a.jsonl, line 2: not valid JSON"),
    (lambda d, t: d.update(eval={**LOCAL_EVAL, "mt_bench": {"questions": _written(
        t / "question.jsonl", b'{"question_id": 1, "turns": ["caf\xe9?"]}\n')}}),
     "eval.mt_bench.questions: {t}/question.jsonl, line 1: not UTF-8 text (byte 0xe9 at column 34)"),
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
    message = message.format(t=tmp_path)
    for args in (["validate", str(suite)], ["run", str(suite), "--results-dir", str(tmp_path / "res")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "res").exists()


def test_preflight_reads_the_data_of_every_registered_algorithm(tmp_path):
    """--only grpo reads data.prompts as --only remax does: the readers come from the stages' declarations."""
    data = yaml.safe_load(NANO.read_text())
    data["grpo"] = {"enabled": True}
    data["data"]["prompts"] = _written(tmp_path / "p.jsonl", PROMPT_LINES + '{"prompt": ""}\n')
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data))
    for only in ("grpo", "sft,dpo"):
        result = CliRunner().invoke(main, ["run", str(suite), "--only", only, "--dry-run", "--results-dir",
                                           str(tmp_path / "res")])
        # A dry run lists what would stop a real run and exits 0 (test_overrides.py); the list is the check.
        found = "p.jsonl', line 7: an empty or missing 'prompt'" in result.output
        assert found == (only == "grpo") and result.exit_code == 0, result.output


def test_a_results_folder_that_cannot_be_written_is_one_message(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    result = CliRunner().invoke(main, ["run", str(NANO), "--results-dir", str(tmp_path / "a_file" / "res")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"--results-dir: {tmp_path}/a_file/res/nano cannot be created: {tmp_path}/a_file is a file" in result.output

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # A read-only folder (root writes in any folder, so the refusal is the operating system's answer, given here)
    monkeypatch.setattr("tempfile.TemporaryFile", refused)
    result = CliRunner().invoke(main, ["run", str(NANO), "--results-dir", str(tmp_path / "ro")])
    assert result.exit_code == 2 and result.output.count("\n") == 2, result.output
    assert f"--results-dir: cannot write the results {tmp_path}/ro/nano in {tmp_path} (Permission denied)" in result.output


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
