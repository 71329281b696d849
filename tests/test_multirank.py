"""Two real ranks on CPU, through the deepspeed launcher the GPU suites use (``--num_gpus 2`` starts two
processes on DeepSpeed's CPU accelerator, gloo between them).

Marked ``multirank``: skipped by ``make test``, run by ``make test-multirank`` and ``make test-slow``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_resume import KillingRunner  # every rank of each stage SIGKILLs itself after iteration 4

from remax_bench.core.deepspeed_config import free_port
from remax_bench.core.models import load_causal_lm
from remax_bench.core.suite_file import load_suite
from remax_bench.runner import Runner, plan

pytestmark = [pytest.mark.multirank, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
STAGES = ("sft", "reward_model", "ppo", "remax", "dpo")


@pytest.fixture(autouse=True)
def _needs_deepspeed():
    pytest.importorskip("deepspeed")


def _env(extra_path: Path | None = None) -> dict:
    """One thread per rank (two ranks share the cores); the launcher found next to this python."""
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def _suite(tmp_path: Path, name: str, num_gpus: int, zero_stage: int, **blocks) -> Path:
    data = yaml.safe_load(NANO.read_text())
    data["name"] = name
    for block, values in blocks.items():
        data.setdefault(block, {}).update(values)
    data["runtime"] = {"device": "cpu", "num_gpus": num_gpus, "master_port": free_port(),
                       "deepspeed": {"enabled": True, "zero_stage": zero_stage}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(suite: Path, results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remax_bench.cli", "run", str(suite), "--results-dir", str(results),
                           *args], capture_output=True, text=True, timeout=800, env=_env())


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stage_dir / "checkpoint" / "model.safetensors"))


def test_sft_global_batch_on_two_ranks_equals_one_rank(tmp_path):
    """Global batch 16 on 2 ranks (8 each) trains the same weights as 16 on one rank."""
    sft = {"batch_size": 16, "max_steps": 3, "learning_rate": 1.0e-2}
    one = _suite(tmp_path, "one", 1, 2, sft=sft)
    two = _suite(tmp_path, "two", 2, 2, sft=sft)
    for suite in (one, two):
        result = _run(suite, tmp_path / "results", "--only", "sft")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one_dir, two_dir = tmp_path / "results" / "one" / "sft" / "seed0", tmp_path / "results" / "two" / "sft" / "seed0"
    a, b = _weights(one_dir), _weights(two_dir)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    # The same global losses step by step.
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (one_dir, two_dir)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    manifest = json.loads((two_dir / "manifest.json").read_text())
    assert manifest["data_parallel"] == {"world_size": 2,
                                         "batch_sizes": {"sft.batch_size": {"global": 16, "per_rank": 8}}}
    draws = json.loads((two_dir / "summary.json").read_text())["data_parallel"]["draws"]["data.sft"]
    assert draws == {"rows_per_rank": [24, 24], "batches": [3, 3], "batches_with_rows_on_several_ranks": 0,
                     "rows_on_several_ranks": 0}
    # Only rank 0 wrote results: nothing of rank 1 is left.
    assert sorted(p.name for p in two_dir.parent.iterdir()) == ["seed0"]
    # Only rank 0 logged to the tracker (TensorBoard, the default): one event file, rank 0's global losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = tmp_path / "results" / "two" / "tensorboard" / "sft" / "seed0"
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [tensor_util.make_ndarray(e.tensor_proto).item() for e in accumulator.Tensors("loss")] == losses[1]


def _length_data(tmp_path: Path) -> dict:
    """SFT demonstrations with one-token and over-long answers, so sampled answers end at different lengths
    on the two ranks; RL prompts of both kinds."""
    sft, prompts = tmp_path / "sft.jsonl", tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"short {i}", "response": "k"} for i in range(32)]
    rows += [{"prompt": f"long {i}", "response": "abcdefghijklmnopqrstuvwxyz"} for i in range(32)]
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts.write_text("".join(json.dumps({"prompt": f"{kind} {i}"}) + "\n" for i in range(40, 56)
                               for kind in ("short", "long")))
    return {"sft": str(sft), "prompts": str(prompts)}


def test_every_stage_on_two_ranks_under_zero3(tmp_path):
    """SFT, reward model, PPO, ReMax and DPO on 2 ranks under ZeRO-3: disjoint draws, identical weights, and
    generation that finishes when the ranks' answers end at different lengths."""
    suite = _suite(tmp_path, "zero3", 2, 3, data=_length_data(tmp_path),
                   sft={"batch_size": 8, "epochs": 2, "learning_rate": 1.0e-2},
                   reward_model={"batch_size": 8, "max_steps": 2},
                   shared={"iterations": 4, "rollout_batch_size": 4, "train_batch_size": 2})
    result = _run(suite, tmp_path / "results")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "results" / "zero3"
    data_of = {"sft": "data.sft", "reward_model": "data.preferences", "dpo": "data.preferences",
               "ppo": "data.prompts", "remax": "data.prompts"}
    for stage in STAGES:
        final = root / stage / "seed0"
        summary = json.loads((final / "summary.json").read_text())
        parallel = summary["data_parallel"]
        draws = parallel["draws"][data_of[stage]]
        assert draws["batches_with_rows_on_several_ranks"] == 0 and min(draws["rows_per_rank"]) > 0, (stage, draws)
        if stage != "sft":  # within one pass over the data no row is drawn twice (SFT makes two passes)
            assert draws["rows_on_several_ranks"] == 0, (stage, draws)
        digests = parallel["weights_sha256_by_rank"]
        assert len(digests) == 2 and digests[0] == digests[1] and digests[0], (stage, digests)
        assert json.loads((final / "manifest.json").read_text())["deepspeed_configs"][0]["zero_optimization"][
            "stage"] == 3
        assert sorted(p.name for p in final.parent.iterdir()) == ["seed0"], stage  # rank 1 left nothing
    # The frozen reference and reward models are ZeRO-3 inference engines (runtime.deepspeed.frozen_models
    # auto): each rank holds part of their parameters.
    full = sum(p.numel() * 4 for p in load_causal_lm("tiny:nano").parameters())
    for stage in ("ppo", "remax"):
        configs = json.loads((root / stage / "seed0" / "manifest.json").read_text())["deepspeed_configs"]
        inference = [c for c in configs if "optimizer" not in c and "gradient_clipping" not in c]
        assert [c["zero_optimization"]["stage"] for c in inference] == [3, 3], stage
        reference = json.loads((root / stage / "seed0" / "summary.json").read_text())["model_state_bytes"]["reference"]
        assert 0 < reference["params"] < full, (stage, reference, full)
    for stage in ("ppo", "remax"):
        widths = json.loads((root / stage / "seed0" / "summary.json").read_text())["data_parallel"][
            "generated_widths_by_rank"]
        # At least one generate call where one rank's answers all ended before the other's: under ZeRO-3 that
        # rank had to keep running forwards (synced generation) for the other to finish.
        assert any(w0 != w1 for w0, w1 in zip(*widths)), (stage, widths)


FAILING_SFT = '''
import os
import time

from trainers import sft
from remax_bench.core.stage import stage_main

_loss, _calls = sft.sft_loss, [0]


def sft_loss(*args, **kwargs):
    _calls[0] += 1
    if os.environ["RANK"] == "1" and _calls[0] == 2:  # rank 1, mid-way: rank 0 waits for it in a collective
        if os.environ.get("STALL"):
            time.sleep(300)  # alive but stuck: the launcher sees nothing wrong
        raise RuntimeError("rank 1 cannot go on")
    return _loss(*args, **kwargs)


sft.sft_loss = sft_loss
raise SystemExit(stage_main("sft", sft.train))
'''


def test_a_rank_that_raises_fails_the_stage_with_its_error(tmp_path, monkeypatch):
    """The real launcher and stage code; only the second step of rank 1 raises. The launcher stops rank 0
    (otherwise waiting for rank 1 in a collective) and the runner reports rank 1's error."""
    (tmp_path / "failing_sft.py").write_text(FAILING_SFT)
    suite = load_suite(str(_suite(tmp_path, "broken", 2, 2, sft={"batch_size": 16, "max_steps": 4})))
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)

    class FailingRunner(Runner):
        def command(self, item, **share):
            return ["failing_sft" if part == "trainers.sft" else part for part in super().command(item, **share)]

    lines = []
    runner = FailingRunner(suite, tmp_path / "results", echo=lines.append)
    outcome, = runner.run(plan(suite, only=["sft"]))
    assert outcome.status == "failed"
    assert outcome.detail.startswith("stage sft failed on rank 1 of 2: RuntimeError: rank 1 cannot go on"), outcome
    stage = tmp_path / "results" / "broken" / "sft"
    assert not (stage / "seed0").exists()
    manifest = json.loads((stage / "seed0.failed.rank1" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "rank 1 cannot go on" in manifest["error"]
    # Rank 0 did not hang: gloo saw its peer go (on GPUs the launcher terminates it), and its error comes after.
    log = (tmp_path / "results" / "broken" / "logs" / "sft-seed0.log").read_text()
    assert log.index("failed on rank 1 of 2") < log.find("failed on rank 0 of 2") or "rank 0 of 2" not in log


def test_a_stuck_rank_fails_the_stage_at_the_collective_timeout(tmp_path, monkeypatch):
    """Rank 1 stops answering without exiting (as a rank on another node might look): rank 0 gives up at
    runtime.collective_timeout_s, fails the stage with its error, and the launcher stops rank 1."""
    (tmp_path / "failing_sft.py").write_text(FAILING_SFT)
    suite = load_suite(str(_suite(tmp_path, "stuck", 2, 2, sft={"batch_size": 16, "max_steps": 4})))
    suite.runtime.collective_timeout_s = 15
    for key, value in {**_env(tmp_path), "STALL": "1"}.items():
        monkeypatch.setenv(key, value)

    class FailingRunner(Runner):
        def command(self, item, **share):
            return ["failing_sft" if part == "trainers.sft" else part for part in super().command(item, **share)]

    outcome, = FailingRunner(suite, tmp_path / "results", echo=lambda line: None).run(plan(suite, only=["sft"]))
    assert outcome.status == "failed" and outcome.seconds < 200, outcome
    assert outcome.detail.startswith("stage sft failed on rank 0 of 2:"), outcome


FIXTURES = Path(__file__).parent / "fixtures"


# Six launches of two ranks each: 10-14 minutes on 2 loaded cores. ZeRO-3 (partitioned weights and optimizer) in
# make test-multirank and CI; ZeRO-2 with `make test-slow`, which runs everything.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("zero_stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_sft_and_remax_killed_on_two_ranks_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch, zero_stage):
    """SFT, then ReMax (scored by the gold function), on 2 ranks: each killed with SIGKILL on both ranks after
    iteration 4, with a checkpoint (every rank's ZeRO partition, through DeepSpeed's save_checkpoint) after 3; run
    again, each resumes from 3 and ends with the very weights of an uninterrupted 2-rank run."""
    path = _suite(tmp_path, f"resume{zero_stage}", 2, zero_stage, sft={"batch_size": 16, "epochs": 2},
                  shared={"iterations": 6, "rollout_batch_size": 4, "train_batch_size": 4, "reward_function": "gold"})
    data = yaml.safe_load(path.read_text())
    data["runtime"]["checkpoint_every"] = 3
    path.write_text(yaml.safe_dump(data))
    reference = _run(path, tmp_path / "reference", "--only", "sft,remax")
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    suite = load_suite(str(path))
    for key, value in {**_env(FIXTURES), "REMAX_BENCH_KILL_AT": "4"}.items():
        monkeypatch.setenv(key, value)
    console, attempts = [], []
    for _ in range(3):  # SFT killed; SFT resumed and ReMax killed; ReMax resumed
        attempts.append(KillingRunner(suite, tmp_path / "resumed", echo=console.append).run(plan(suite, only=["sft", "remax"])))
        if all(o.status in ("completed", "skipped") for o in attempts[-1]):
            break
    assert [[o.status for o in outcomes] for outcomes in attempts] == [
        ["failed", "blocked"], ["completed", "failed"], ["skipped", "completed"]], "\n".join(console)
    for stage in ("sft", "remax"):
        final, uninterrupted = (root / suite.name / stage / "seed0" for root in (tmp_path / "resumed", tmp_path / "reference"))
        assert (final / "checkpoint" / "model.safetensors").read_bytes() == \
            (uninterrupted / "checkpoint" / "model.safetensors").read_bytes(), stage
        assert f"[resume] {stage}: resumed from iteration 3" in "\n".join(console), stage
        assert "resumed from iteration 3" in (final / "stage.log").read_text()
        summary = json.loads((final / "summary.json").read_text())
        digests = summary["data_parallel"]["weights_sha256_by_rank"]
        assert summary["resumed_from"] == [3] and digests[0] == digests[1], (stage, digests)
