"""`run --jobs N`: the one scheduling loop, this machine's devices shared out and locked, and the same results.

The loop's tests run a probe stage (tests/fixtures/probe_stage.py: real processes writing the real results
layout, no training) so that they take seconds; the nano suite itself runs at --jobs 2 in the slow test.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from remax_bench import devices
from remax_bench.core.deepspeed_config import launch_command
from remax_bench.core.suite_file import load_suite_text
from remax_bench.runner import Runner, plan

FIXTURES = Path(__file__).parent / "fixtures"
NANO = FIXTURES / "nano.yaml"
REPO = Path(__file__).resolve().parent.parent


class ProbeRunner(Runner):
    def command(self, item, gpus=None, master_port=None):
        return [sys.executable, str(FIXTURES / "probe_stage.py"), "--config", str(self.config_path(item)),
                "--out", str(self.final_dir(item.key))]


@pytest.fixture
def probe(tmp_path, monkeypatch):
    folder = tmp_path / "probe"
    folder.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(folder))
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return folder


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def _nano(seeds=(0, 1)):
    data = yaml.safe_load(NANO.read_text())
    data["seeds"] = list(seeds)
    return load_suite_text(yaml.safe_dump(data))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores to split")
def test_jobs_run_ready_stages_at_once_each_on_its_own_cores_and_port(tmp_path, probe, monkeypatch):
    """Two seeds of nano: after SFT, the reward model and both DPO seeds are ready; after the reward model,
    PPO and ReMax of both seeds. With --jobs 2 two run at once, never three, each pinned to its own core with one
    thread and its own locked master port; the reward model and DPO each wait to see the other start (and would
    wait in vain if they ran one after the other)."""
    monkeypatch.setenv("PROBE_WAIT_reward_model", "dpo")
    monkeypatch.setenv("PROBE_WAIT_dpo", "reward_model")
    suite = _nano()
    lines = []
    outcomes = ProbeRunner(suite, tmp_path / "res", echo=lines.append).run(plan(suite), jobs=2)
    assert [o.status for o in outcomes] == ["completed"] * len(outcomes), "\n".join(lines)
    records = _records(probe)
    assert len(records) == 8 and max(r["running"] for r in records.values()) == 2
    assert all(r["threads"] == "1" and len(r["cores"]) == 1 and r["port_locked"] for r in records.values())
    ports = [r["port"] for r in records.values()]
    assert len(set(ports)) <= 2 < len(ports)  # two at once, each on its own port; given back when a stage ends
    beside = records["reward_model-seed0"], records["dpo-seed0"]
    assert beside[0]["cores"] != beside[1]["cores"] and beside[0]["port"] != beside[1]["port"]
    # Every port and core was given back: nothing is left locked.
    assert all(devices.Lock.take(f"port-{p}") is not None for p in set(ports))


def test_one_job_runs_the_same_loop_one_stage_at_a_time_on_the_whole_machine(tmp_path, probe):
    suite = _nano(seeds=(0,))
    outcomes = ProbeRunner(suite, tmp_path / "res", echo=lambda line: None).run(plan(suite))
    assert [o.status for o in outcomes] == ["completed"] * 5
    records = _records(probe)
    assert all(r["running"] == 1 and r["threads"] is None and r["port_locked"] for r in records.values())
    assert all(r["cores"] == sorted(os.sched_getaffinity(0)) for r in records.values())


def test_a_failed_stage_stops_only_what_reads_it(tmp_path, probe, monkeypatch):
    monkeypatch.setenv("PROBE_FAIL", "reward_model")
    suite = _nano(seeds=(0,))
    lines = []
    outcomes = {o.key: o for o in ProbeRunner(suite, tmp_path / "res", echo=lines.append).run(plan(suite), jobs=2)}
    assert outcomes["reward_model/seed0"].status == "failed"
    assert outcomes["reward_model/seed0"].detail == "stage reward_model failed: asked to by the test"
    assert outcomes["sft/seed0"].status == outcomes["dpo/seed0"].status == "completed"
    for key in ("ppo/seed0", "remax/seed0"):
        assert outcomes[key].status == "blocked" and "reward_model/seed0" in outcomes[key].detail


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores to split")
def test_a_stop_signal_reaches_every_running_stage_and_starts_no_other(tmp_path, probe, monkeypatch):
    """SIGTERM to the runner with two stages running (the reward model and the first DPO, each in its own session
    with a child standing for a rank): both process groups get SIGUSR1 and end resumable, the second DPO, ready
    and waiting for room, never starts, and the run ends with the stage contract's exit 75."""
    import signal
    import threading
    import time

    from remax_bench.core.stage import EXIT_RESUMABLE
    from remax_bench.runner import exit_code

    monkeypatch.setenv("PROBE_WAIT_reward_model", "dpo")
    monkeypatch.setenv("PROBE_WAIT_dpo", "reward_model")
    monkeypatch.setenv("PROBE_HOLD", "reward_model,dpo")
    held = [probe / "reward_model-seed0.held", probe / "dpo-seed0.held"]

    def stop_when_both_hold():
        deadline = time.time() + 300
        while not all(p.exists() for p in held) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    suite = _nano()
    lines = []
    runner = ProbeRunner(suite, tmp_path / "res", echo=lines.append)
    threading.Thread(target=stop_when_both_hold, daemon=True).start()
    outcomes = {o.key: o for o in runner.run(plan(suite), jobs=2)}
    text = "\n".join(lines)
    assert all(p.exists() for p in held), text
    for key in ("reward_model-seed0", "dpo-seed0"):
        assert (probe / f"{key}.usr1").exists() and (probe / f"{key}.child-usr1").exists(), key
        assert _records(probe)[key]["own_session"]
    for key in ("reward_model/seed0", "dpo/seed0"):
        assert outcomes[key].status == "interrupted", text
        assert outcomes[key].detail.startswith("stopped by SIGTERM: "), outcomes[key].detail
    assert not (probe / "dpo-seed1.start").exists() and outcomes["dpo/seed1"].status == "not run"
    assert "SIGTERM: stopping before dpo/seed1" in text
    assert runner.stopped_by == "SIGTERM" and exit_code(runner, list(outcomes.values())) == EXIT_RESUMABLE
    assert "[interrupt] stage dpo stopped" in text


def test_gpus_are_locked_per_device_across_runs(tmp_path, monkeypatch):
    """Two runs on a machine with GPUs 0-3: a stage of the second gets only GPUs that no stage of the first holds,
    and waits (naming the holder) while none is free; a GPU held by another process is skipped."""
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    first = devices.DevicePool([0, 1, 2, 3], [0, 1], jobs=2, first_port=29500)
    second = devices.DevicePool([0, 1, 2, 3], [0, 1], jobs=2, first_port=29500)
    a = first.take(2)
    assert a.gpus == [0, 1]
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, fcntl; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}'); f.flush(); "
                               "print('held', flush=True); sys.stdin.read()",
                               str(devices.lock_dir() / "gpu-2.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        b = second.take(1)
        assert b.gpus == [3] and b.port != a.port
        wait = second.take(1)
        assert wait == (f"waiting for 1 GPU(s); busy: GPU 0 (pid {os.getpid()}), GPU 1 (pid {os.getpid()}), "
                        f"GPU 2 (pid {holder.pid}), GPU 3 (a stage of this run)"), wait
    finally:
        holder.stdin.close()
        holder.wait()
    assert second.take(1).gpus == [2]  # the other process ended: its lock went with it
    first.give_back(a)
    assert second.take(1) == "all slots in use"
    second.give_back(b)
    assert second.take(2).gpus == [0, 1]


def test_a_share_of_gpus_reaches_the_launcher_and_a_one_process_stage(tmp_path):
    runtime = load_suite_text(yaml.safe_dump({**yaml.safe_load(NANO.read_text()), "runtime": {
        "device": "cuda", "num_gpus": 2, "deepspeed": {"enabled": True}}})).runtime
    command = launch_command("trainers.ppo", "c.json", "o", runtime, gpus=[2, 3], master_port=29611)
    assert command[:5] == ["deepspeed", "--include", "localhost:2,3", "--master_port", "29611"]
    share = devices.Share([5], [0, 1], 29612)
    assert share.env(ranks=1, one_process=True) == {"MASTER_PORT": "29612", "CUDA_VISIBLE_DEVICES": "5",
                                                    "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert "CUDA_VISIBLE_DEVICES" not in share.env(ranks=2, one_process=False)
    assert share.env(ranks=2, one_process=False)["OMP_NUM_THREADS"] == "1"


def test_a_port_something_listens_on_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        port, lock = devices.take_port(busy)
        assert port > busy
        lock.release()


def test_more_gpus_than_the_machine_has_is_refused_before_a_stage_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    runtime = load_suite_text(yaml.safe_dump({**yaml.safe_load(NANO.read_text()), "runtime": {
        "device": "cuda", "num_gpus": 4, "deepspeed": {"enabled": True}}})).runtime
    assert devices.problems(runtime, ["sft", "ppo"], 2) == [
        "runtime.num_gpus: a stage needs 4 GPUs and this machine shows 2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b")
    assert "name GPUs by index" in devices.problems(runtime, ["sft"], 1)[0]


def _threads_run(tmp_path: Path, name: str, *args: str, threads: str | None = None) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    result = subprocess.run([sys.executable, "-m", "remax_bench.cli", "run", str(NANO), "--results-dir",
                             str(tmp_path / name), *args], capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / name / "nano"


FIGURES_THAT_ARE_TIMES = ("time", "second", "memory", "rss", "bytes", "per_s")


def _figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(word in k for word in FIGURES_THAT_ARE_TIMES)}


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores to split")
def test_two_jobs_give_the_sequential_runs_results(tmp_path):
    """The nano suite at --jobs 2 on 2 cores (each stage one core, one thread) and one stage at a time with one
    thread each: the same weights, byte for byte, and the same figures at every step. (With a different number
    of threads a CPU matrix product may split its sums differently: the last bits of a result then differ.)"""
    parallel = _threads_run(tmp_path, "parallel", "--jobs", "2")
    sequential = _threads_run(tmp_path, "sequential", threads="1")
    for stage in ("sft", "reward_model", "ppo", "remax", "dpo"):
        a, b = parallel / stage / "seed0", sequential / stage / "seed0"
        assert json.loads((a / "manifest.json").read_text())["torch_threads"] == 1
        assert (a / "checkpoint" / "model.safetensors").read_bytes() == (b / "checkpoint" / "model.safetensors").read_bytes()
        rows = [[_figures(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
        assert rows[0] == rows[1], stage
    start = {s: json.loads((parallel / s / "seed0" / "manifest.json").read_text())["start"] for s in ("ppo", "remax")}
    end = {s: json.loads((parallel / s / "seed0" / "manifest.json").read_text())["end"] for s in ("ppo", "remax")}
    assert start["ppo"] < end["remax"] and start["remax"] < end["ppo"]  # they ran side by side


def _screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: lines, with the cursor moves the live display uses (ESC[nF: n lines
    up, to the start; ESC[J: clear to the end)."""
    import re

    lines, row = [""], 0
    for token in re.split(r"(\x1b\[\d+F|\x1b\[J|\n)", output):
        if token == "\n":
            row += 1
            lines = lines[:row] + [""] if row >= len(lines) else lines
        elif token == "\x1b[J":
            lines = lines[:row] + [""]
        elif token.startswith("\x1b["):
            row -= int(token[2:-1])
        elif token:
            lines[row] = token
    return [line for line in lines if line]


def test_the_live_display_keeps_one_line_per_running_stage(capsys):
    from remax_bench.cli import LiveBoard

    board = LiveBoard()
    board.tty = True
    board("[1/3] ppo/seed0: running")
    board.progress("    ppo step 1", key="ppo")
    board.progress("    remax step 1", key="remax")
    board.progress("    ppo step 2", key="ppo")
    shown = capsys.readouterr().out
    assert _screen(shown) == ["[1/3] ppo/seed0: running", "    ppo step 2", "    remax step 1"]
    board("[2/3] remax/seed0: completed")
    board.forget("remax")
    shown += capsys.readouterr().out
    assert _screen(shown) == ["[1/3] ppo/seed0: running", "[2/3] remax/seed0: completed", "    ppo step 2"]
