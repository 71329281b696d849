"""Mid-stage checkpoints (remax_bench/core/checkpoint.py) and resume: the store on its own (atomic writes, the newest
kept, corrupt ones skipped), the data positions and running statistics the stages save, a stage that crashes and
resumes to the uninterrupted weights byte for byte, SIGUSR1's checkpoint at the end of the iteration, and the vLLM
rollout engine of a resumed stage (at its seam, and for real in a test marked vllm).

Every training stage killed with SIGKILL and resumed: tests/test_resume.py (slow; `make test-resume`); two ranks
under ZeRO-2 and ZeRO-3: tests/test_multirank.py."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from remax_bench.core import checkpoint, results
from remax_bench.core.checkpoint import CheckpointStore, Ranks, TrainingState, config_identity
from remax_bench.core.models import build_tiny_model, load_reward_model, load_tokenizer, save_pretrained
from remax_bench.core.stage import EXIT_RESUMABLE, StageRun, stage_main
from remax_bench.core.suite_file import load_suite_text
from trainers import online, sft
from trainers.engine import TorchEngine
from trainers.rollout import PromptSampler, RolloutEngine

REPO = Path(__file__).resolve().parent.parent
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _suite_data(**runtime):
    data = yaml.safe_load(NANO.read_text())
    data["runtime"].update(runtime)
    return data


class _Counter:
    """A stage part: a running total and a list."""

    def __init__(self):
        self.total, self.seen = 0, []

    def state_dict(self):
        return {"total": self.total, "seen": list(self.seen)}

    def load_state_dict(self, state):
        self.total, self.seen = state["total"], list(state["seen"])


def _engine(seed=0) -> TorchEngine:
    torch.manual_seed(seed)
    model, _ = build_tiny_model("tiny:nano", seed=seed)
    engine = TorchEngine(model, 1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    engine.step(model(input_ids=ids, labels=ids).loss)  # AdamW has moments and a step count from here on
    return engine


def _bytes_of(engine: TorchEngine) -> list:
    return [p.detach().clone() for p in engine.module.parameters()] + [
        t.clone() for s in engine.optimizer.state.values() for t in s.values()]


def test_store_keeps_the_newest_skips_half_written_and_corrupt_ones_and_restores_exactly(tmp_path):
    warnings = []
    store = CheckpointStore(tmp_path / "ckpt", Ranks(), keep=2, warn=warnings.append)
    engine, counter = _engine(), _Counter()
    state = TrainingState({"policy": engine}, {"counter": counter})
    saved = {}
    for iteration in (2, 4, 6):
        counter.total += iteration
        counter.seen.append(iteration)
        record = store.write(iteration, state, "config-a", {"note": iteration})
        assert record["bytes"] > 0 and Path(record["path"]).name == f"iteration-{iteration:08d}"
        saved[iteration] = (_bytes_of(engine), engine.steps, counter.state_dict(), torch.get_rng_state(), random.random())
        engine.step(engine.module(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 4, dtype=torch.long)).loss)
    assert [p.name for p in checkpoint.complete(store.root)] == ["iteration-00000006", "iteration-00000004"]
    # A write that never finished (no rename) and a folder without its manifest are never picked up.
    (store.root / ".iteration-00000008.tmp" / "engines").mkdir(parents=True)
    (store.root / "iteration-00000010").mkdir()
    assert checkpoint.newest_of_config(store.root, "config-a") == 6

    # The newest one truncated: skipped with a warning naming it, set aside, the one before is loaded.
    engine_file = store.root / "iteration-00000006" / "engines" / "policy" / "engine.pt"
    engine_file.write_bytes(engine_file.read_bytes()[:100])
    found = store.newest_sound("config-a")
    assert found == store.root / "iteration-00000004"
    assert len(warnings) == 1 and "iteration-00000006 is corrupt" in warnings[0] and "engine.pt has 100 bytes" in warnings[0]
    assert (store.root / "iteration-00000006.corrupt").is_dir() and not (store.root / ".iteration-00000008.tmp").exists()

    fresh, other = _engine(seed=1), _Counter()
    random.seed(99)
    records = store.load(found, TrainingState({"policy": fresh}, {"counter": other}))
    weights, steps, part, rng, next_random = saved[4]
    assert records["iteration"] == 4 and records["note"] == 4
    assert all(torch.equal(a, b) for a, b in zip(_bytes_of(fresh), weights))
    assert other.state_dict() == part and fresh.steps == steps == 2
    assert torch.equal(torch.get_rng_state(), rng) and random.random() == next_random  # the RNG where it was

    # A flipped byte (same size) is caught by its sha256.
    part_file = store.root / "iteration-00000004" / "rank0.pt"
    data = bytearray(part_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part_file.write_bytes(bytes(data))
    assert store.newest_sound("config-a") is None and "rank0.pt does not match its sha256" in warnings[-1]


def test_checkpoints_of_another_config_are_discarded_and_none_means_starting_over(tmp_path):
    warnings = []
    store = CheckpointStore(tmp_path / "ckpt", Ranks(), keep=2, warn=warnings.append)
    assert store.newest_sound("config-a") is None and not warnings  # none at all: start over, nothing to say
    store.write(3, TrainingState({"policy": _engine()}), "config-a", {})
    assert checkpoint.newest_of_config(store.root, "config-b") is None
    assert store.newest_sound("config-b") is None
    assert "written under another config; starting over" in warnings[0] and not store.root.exists()


def test_the_checkpoint_schedule_is_not_part_of_the_config_a_checkpoint_belongs_to():
    config = {"stage": "sft", "seed": 0, "suite": load_suite_text(yaml.safe_dump(_suite_data())).resolved()}
    rescheduled = json.loads(json.dumps(config))
    rescheduled["suite"]["runtime"].update(checkpoint_every=7, checkpoint_interval_s=60, keep_checkpoints=5)
    # Nor how the run is watched or how its values were spelled: a tracker added or a --set given keeps them.
    watched = json.loads(json.dumps(config))
    watched["suite"]["runtime"]["trackers"] = ["tensorboard"]
    watched["overrides"] = ["shared.iterations=6"]
    changed = json.loads(json.dumps(config))
    changed["suite"]["sft"]["learning_rate"] = 0.5  # a field SFT reads (shared.learning_rate it does not)
    assert config_identity(rescheduled) == config_identity(watched) == config_identity(config) != config_identity(changed)


def test_rng_states_round_trip_every_generator():
    states = checkpoint.rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoint.set_rng_states(states)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def _config(tmp_path, stage="sft", inputs=None, **edits) -> Path:
    data = _suite_data(checkpoint_every=2, keep_checkpoints=2)
    data["sft"]["epochs"] = 2  # 8 steps: a resume in the first pass goes on into the second
    for block, values in edits.items():
        data.setdefault(block, {}).update(values)
    suite = load_suite_text(yaml.safe_dump(data))
    path = tmp_path / f"{stage}.json"
    path.write_text(json.dumps({"stage": stage, "seed": 0, "suite": suite.resolved(), "inputs": inputs or {}}))
    return path


def _crashing_at(monkeypatch, step):
    """The stage raises right after it logs ``step``, before it could checkpoint that iteration."""
    real = StageRun.log

    def log(self, at, **metrics):
        real(self, at, **metrics)
        if at == step and not self.resumed_from:
            raise RuntimeError(f"crashed after iteration {at}")

    monkeypatch.setattr(StageRun, "log", log)


def _weights(out: Path) -> bytes:
    return (out / "checkpoint" / "model.safetensors").read_bytes()


def test_a_crashed_sft_resumes_from_its_newest_sound_checkpoint_to_the_uninterrupted_weights(
        tmp_path, monkeypatch, capfd, one_torch_thread):
    config = _config(tmp_path)
    reference = tmp_path / "reference" / "sft" / "seed0"
    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(reference)]) == 0

    out = tmp_path / "resumed" / "sft" / "seed0"
    with monkeypatch.context() as patch:
        _crashing_at(patch, 6)  # 7 iterations done; checkpoints at 2, 4 and 6 were due, the last two kept
        assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 1
    root = results.checkpoints_dir(out)
    assert [p.name for p in checkpoint.complete(root)] == ["iteration-00000006", "iteration-00000004"]
    newest = root / "iteration-00000006" / "rank0.pt"
    newest.write_bytes(newest.read_bytes()[:-10])  # the newest one damaged: the one before it is used
    capfd.readouterr()

    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 0
    err = capfd.readouterr().err
    assert f"checkpoint {root / 'iteration-00000006'} is corrupt" in err, err
    assert "[resume] sft: resumed from iteration 4" in err, err
    assert _weights(out) == _weights(reference)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(8))  # the rows of the lost iterations 4-6 are not kept twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == [4] and summary["iterations"] == 8
    assert summary["checkpoints"]["written"] == 3  # 2 and 4 of the first attempt, 6 again
    assert summary["heldout_loss_before"] == json.loads((reference / "summary.json").read_text())["heldout_loss_before"]
    assert not root.exists()  # the result holds the final state


def test_a_crashed_ppo_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, one_torch_thread):
    """PPO carries the most state: policy and critic engines, epochs of shuffled mini-batches (torch's RNG), running
    reward statistics, the prompt sampler's position."""
    model, tokenizer = build_tiny_model("tiny:nano", seed=0)
    sft_dir = save_pretrained(model, tokenizer, tmp_path / "sft")
    save_pretrained(load_reward_model(str(sft_dir), new_head=True), load_tokenizer(str(sft_dir)), tmp_path / "rm")
    config = _config(tmp_path, "ppo", {"sft": str(sft_dir), "reward_model": str(tmp_path / "rm")},
                     shared={"iterations": 5, "reward_normalize": True}, ppo={"ppo_epochs": 2},
                     runtime={"checkpoint_every": 3})
    runs = {}
    for name, crash in (("reference", None), ("resumed", 3)):
        out = tmp_path / name / "ppo" / "seed0"
        if crash is not None:
            with monkeypatch.context() as patch:
                _crashing_at(patch, crash)
                assert stage_main("ppo", online.train, ["--config", str(config), "--out", str(out)]) == 1
        assert stage_main("ppo", online.train, ["--config", str(config), "--out", str(out)]) == 0
        runs[name] = out
    assert _weights(runs["resumed"]) == _weights(runs["reference"])
    reference, resumed = (json.loads((runs[n] / "summary.json").read_text()) for n in ("reference", "resumed"))
    assert resumed["resumed_from"] == [3] and resumed["generated_tokens"] == reference["generated_tokens"]
    assert resumed["final_reward_mean"] == reference["final_reward_mean"]


def _through_a_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as a checkpoint reads it back


def test_batch_streams_and_prompt_samplers_resume_where_they_stood(tmp_path):
    from trainers.data import BatchStream

    suite = load_suite_text(yaml.safe_dump(_suite_data()))
    run = SimpleNamespace(suite=suite, world_size=1, per_rank=lambda field: 16, shard=lambda name, rows: rows,
                          seed=0, warn=lambda message: None)
    rows = list(range(40))  # 3 batches of 16 per pass, the last one short
    stream = BatchStream(run, rows, "sft.batch_size", 5, "data.sft")
    for _ in range(4):
        stream.next()
    again = BatchStream(run, rows, "sft.batch_size", 5, "data.sft")
    again.load_state_dict(_through_a_file(stream.state_dict()))
    assert [again.next() for _ in range(5)] == [stream.next() for _ in range(5)]  # into the next pass too

    sampler = PromptSampler(run, load_tokenizer("tiny:nano"))
    sampler.next(5)
    restored = PromptSampler(run, load_tokenizer("tiny:nano"))
    restored.load_state_dict(_through_a_file(sampler.state_dict()))
    assert [restored.next(7) for _ in range(6)] == [sampler.next(7) for _ in range(6)]  # across passes too


class _Engine:
    """Stands in for the vLLM rollout engine at its seam: records syncs, generations and the request count."""

    def __init__(self, *args, **kwargs):
        self.calls, self.events = 0, []

    def record(self):
        return {"backend": "vllm"}

    def sync(self, model):
        self.events.append("sync")

    def generate(self, prompts, greedy=False):
        self.calls += 1
        self.events.append(f"generate {self.calls}")
        raise StopIteration  # the layout is tested elsewhere; only the order matters here


def test_a_resumed_vllm_rollout_engine_takes_the_policys_weights_before_its_first_rollout(monkeypatch):
    import trainers.vllm_rollout as vllm_rollout

    monkeypatch.setattr(vllm_rollout, "VLLMRollouts", _Engine)
    data = _suite_data()
    data["shared"]["rollout_backend"] = "vllm"
    suite = load_suite_text(yaml.safe_dump(data))
    run = SimpleNamespace(suite=suite, stage="remax", inputs={"sft": "unused"}, seed=0, world_size=1,
                          device=torch.device("cpu"), manifest_extra={}, timer=SimpleNamespace(phase=lambda name: _Null()))
    policy = SimpleNamespace(steps=0, module=torch.nn.Linear(1, 1))
    models = SimpleNamespace(policy=policy, tokenizer=None)

    def rollout(engine):
        with pytest.raises(StopIteration):
            engine.generate(["a"])

    before = RolloutEngine(run, models)
    rollout(before)
    rollout(before)
    assert before.vllm.events == ["generate 1", "generate 2"]  # the engine starts on the policy's own weights

    policy.steps = 7  # the resumed policy, loaded from a checkpoint: its steps match no sync of the new engine
    resumed = RolloutEngine(run, models)
    resumed.synced_at = 7
    resumed.load_state_dict(before.state_dict())
    rollout(resumed)
    assert resumed.vllm.events == ["sync", "generate 3"]  # its weights first; its sampling seeds go on from 3


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _stage_env(**extra) -> dict:
    """A stage process: this checkout and tests/fixtures importable (killed_stage), one thread."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "fixtures")]),
            "OMP_NUM_THREADS": "1", **extra}


def _rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigusr1_stops_the_stage_at_the_end_of_its_iteration_with_a_complete_checkpoint(tmp_path):
    config = _config(tmp_path, sft={"epochs": 1000, "max_steps": 40}, runtime={"checkpoint_every": None})
    out = tmp_path / "sft" / "seed0"
    env = _stage_env()
    command = [sys.executable, "-m", "trainers.sft", "--config", str(config), "--out", str(out)]
    stage = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    metrics = results.partial_dir(out) / "metrics.jsonl"
    deadline = time.time() + 300
    while _rows(metrics) < 2 and stage.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # polls the stage's own per-iteration rows (an event), not a guessed duration
    assert _rows(metrics) >= 2, stage.communicate()[1][-3000:]
    stage.send_signal(signal.SIGUSR1)
    _, err = stage.communicate(timeout=300)
    assert stage.returncode == EXIT_RESUMABLE, err[-3000:]
    line = next(text for text in err.splitlines() if text.startswith("[interrupt]"))
    during = int(line.split("received during iteration ")[1].split(";")[0])
    written = int(line.split("checkpoint at iteration ")[1].split()[0])
    assert written == during + 1, line  # the iteration running when the signal came, and no more
    root = results.checkpoints_dir(out)
    newest = checkpoint.complete(root)[0]
    assert checkpoint.iteration_of(newest) == written and CheckpointStore(root, Ranks(), 2).verify(newest) == []
    assert _rows(metrics) == written  # one row per iteration done, kept with the interrupted attempt
    assert json.loads((results.partial_dir(out) / "manifest.json").read_text())["status"] == "interrupted"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[resume] sft: resumed from iteration {written}" in again.stderr
    assert [json.loads(text)["step"] for text in (out / "metrics.jsonl").read_text().splitlines()] == list(range(40))


@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_a_killed_remax_stage_with_vllm_rollouts_resumes_to_the_uninterrupted_weights(tmp_path):
    """The real engine (CPU build): the resumed stage's engine starts from the SFT checkpoint and must take the
    resumed policy's weights, and go on with the sampling seeds where they were, before its first rollout."""
    model, tokenizer = build_tiny_model("tiny:micro,num_hidden_layers=2", seed=5)  # vLLM's CPU attention: head dim 32
    sft_dir = save_pretrained(model, tokenizer, tmp_path / "sft")
    data = yaml.safe_load(NANO.read_text())
    data["models"]["policy"] = "tiny:micro,num_hidden_layers=2"
    data["shared"].update(iterations=5, rollout_backend="vllm", reward_function="gold", max_prompt_length=48)
    data["runtime"]["checkpoint_every"] = 2
    config = tmp_path / "remax.json"
    config.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": load_suite_text(yaml.safe_dump(data)).resolved(),
                                  "inputs": {"sft": str(sft_dir)}}))

    def remax(out: Path, *wrapper: str):
        return subprocess.run([sys.executable, "-m", *wrapper, "trainers.remax", "--config", str(config), "--out",
                               str(out)], capture_output=True, text=True, timeout=900,
                              env=_stage_env(REMAX_BENCH_KILL_AT="2"))

    reference, resumed = tmp_path / "reference" / "remax" / "seed0", tmp_path / "resumed" / "remax" / "seed0"
    assert remax(reference).returncode == 0
    assert remax(resumed, "killed_stage").returncode == -9
    again = remax(resumed, "killed_stage")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[resume] remax: resumed from iteration 2" in again.stderr
    assert (resumed / "checkpoint" / "model.safetensors").read_bytes() == \
        (reference / "checkpoint" / "model.safetensors").read_bytes()
    engine = json.loads((resumed / "summary.json").read_text())["rollout_engine"]
    assert engine["weight_syncs"] == 3  # the resumed policy's weights first, then after iterations 2 and 3


def test_a_stop_signal_is_noted_by_a_training_stage_and_stops_the_eval_stage_at_once(tmp_path):
    from remax_bench.core.stage import StageInterrupted

    suite = load_suite_text(yaml.safe_dump(_suite_data())).resolved()
    training = StageRun("sft", {"stage": "sft", "seed": 0, "suite": suite}, tmp_path / "sft" / "seed0")
    training.done = 5
    training.take_stop_signal(signal.SIGUSR1)
    assert (training.stop_signal, training.stop_during) == ("SIGUSR1", 5)  # acted on at the end of iteration 5
    evaluation = StageRun("eval", {"stage": "eval", "seed": 0, "suite": suite}, tmp_path / "eval" / "seed0")
    with pytest.raises(StageInterrupted, match="SIGTERM received; this stage keeps no checkpoints"):
        evaluation.take_stop_signal(signal.SIGTERM)
