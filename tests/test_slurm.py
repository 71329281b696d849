"""Stages as real Slurm jobs, on the one-node cluster of scripts/slurm-local.sh (`make test-slurm` starts it).

Marked ``slurm``: skipped unless REMAX_BENCH_SLURM=1, and skipped with the reason where no cluster answers.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
STAGES = ("sft", "reward_model", "ppo", "remax", "dpo")


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("submitit", reason="slurm: submitit is not installed (pip install 'remax-bench[slurm]')")
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("slurm: no Slurm commands here; `make test-slurm` installs Debian's slurmctld, slurmd and munge and "
                    "starts a one-node cluster (scripts/slurm-local.sh), which needs root and apt-get")
    answer = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=60)
    states = answer.stdout.split()
    if answer.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        pytest.skip(f"slurm: the cluster does not answer or has no usable node ({answer.stderr.strip() or states}); "
                    "start it with `scripts/slurm-local.sh start` (as root)")


def _suite(tmp_path: Path, name: str = "nano", runtime: dict | None = None, **blocks) -> Path:
    data = yaml.safe_load(NANO.read_text())
    data["name"] = name
    for block, values in blocks.items():
        data.setdefault(block, {}).update(values)
    data["runtime"].update({"executor": "slurm", "slurm": {"time_limit": "20:00", "signal_lead_s": 60, "poll_s": 1,
                                                           "cpus_per_node": 1}, **(runtime or {})})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _cli(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remax_bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "remax_bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())


def _job(job_id: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)


def _jobs(root: Path) -> dict[str, str]:
    return {key: record["job_id"] for key, record in json.loads((root / "slurm" / "jobs.json").read_text()).items()}


def _wait_for(condition, what: str, within: float = 900):
    deadline = time.time() + within
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_nano_graph_runs_as_slurm_jobs_after_their_inputs(tmp_path, cluster):
    suite = _suite(tmp_path)
    result = _cli("run", str(suite), "--results-dir", str(tmp_path / "res"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    root = tmp_path / "res" / "nano"
    for stage in STAGES:
        final = root / stage / "seed0"
        assert json.loads((final / "manifest.json").read_text())["status"] == "completed"
        assert (final / "checkpoint" / "config.json").is_file() and "[slurm] job" in (final / "stage.log").read_text()
    jobs = _jobs(root)
    assert sorted(jobs) == sorted(f"{s}/seed0" for s in STAGES) and len(set(jobs.values())) == 5
    shown = {key: _job(job_id) for key, job_id in jobs.items()}
    assert all(job["JobState"] == "COMPLETED" for job in shown.values()), shown
    # afterok: Slurm started each stage only once its inputs' jobs had ended.
    for later, earlier in [("reward_model", "sft"), ("dpo", "sft"), ("ppo", "reward_model"), ("remax", "reward_model")]:
        assert shown[f"{later}/seed0"]["StartTime"] >= shown[f"{earlier}/seed0"]["EndTime"], (later, earlier)
    script = (root / "slurm" / f"{jobs['ppo/seed0']}_submission.sh").read_text()
    for line in (f"--dependency=afterok:{jobs['sft/seed0']}:{jobs['reward_model/seed0']}", "--signal=USR1@60",
                 "--requeue", "--kill-on-invalid-dep=yes", "--time=20:00", "--cpus-per-task=1"):
        assert f"#SBATCH {line}" in script, script

    status = _cli("status", str(suite), "--results-dir", str(tmp_path / "res"))
    for key, job_id in jobs.items():
        assert re.search(rf"{key}\s+complete\s+{job_id}\s+COMPLETED", status.stdout), status.stdout
    report = _cli("report", str(tmp_path / "res"), "--out", str(tmp_path / "reports"))
    assert report.returncode == 0 and (tmp_path / "reports" / "nano" / "index.html").is_file(), report.stdout
    again = _cli("run", str(suite), "--results-dir", str(tmp_path / "res"))
    assert again.returncode == 0 and again.stdout.count("already complete, skipped") == 5, again.stdout
    assert _jobs(root) == jobs  # nothing submitted again


def test_a_cancelled_job_fails_with_slurms_reason_and_blocks_what_reads_it(tmp_path, cluster):
    suite = _suite(tmp_path, sft={"epochs": 100000})  # trains until stopped
    runner = _start("run", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft,reward_model")
    root = tmp_path / "res" / "nano"
    _wait_for(lambda: (root / "slurm" / "jobs.json").is_file() and len(_jobs(root)) == 2, "both jobs submitted")
    jobs = _jobs(root)
    _wait_for(lambda: (root / "sft" / ".seed0.partial" / "metrics.jsonl").is_file(), "SFT training")
    subprocess.run(["scancel", jobs["sft/seed0"]], check=True)
    out, _ = runner.communicate(timeout=600)
    assert runner.returncode == 1, out
    table = out[out.index("stage "):]
    assert re.search(rf"sft/seed0\s+failed\s+.*Slurm job {jobs['sft/seed0']} CANCELLED", table), table
    assert re.search(r"reward_model/seed0\s+blocked\s+.*DependencyNeverSatisfied", table), table
    status = _cli("status", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft,reward_model")
    assert re.search(rf"sft/seed0\s+\w+\s+{jobs['sft/seed0']}\s+CANCELLED", status.stdout), status.stdout


def test_an_unknown_partition_is_found_before_anything_is_submitted(tmp_path, cluster):
    suite = _suite(tmp_path)
    result = _cli("run", str(suite), "--results-dir", str(tmp_path / "res"), "--set", "runtime.slurm.partition=nosuch")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "runtime.slurm.partition: unknown partition 'nosuch'; this cluster has" in result.stderr
    assert not (tmp_path / "res").exists()


def test_two_ranks_start_through_srun(tmp_path, cluster):
    """runtime.num_gpus: 2 on CPU ranks: one job, two srun tasks, each a rank of one process group (SLURM_PROCID ->
    RANK, the job's first node -> MASTER_ADDR); each reads half of every global batch."""
    suite = _suite(tmp_path, "ranks", runtime={"num_gpus": 2, "deepspeed": {"enabled": True, "zero_stage": 2}},
                   sft={"batch_size": 16, "max_steps": 2})
    result = _cli("run", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft")
    root = tmp_path / "res" / "ranks"
    assert result.returncode == 0, result.stdout[-3000:] + (root / "logs" / "sft-seed0.log").read_text()[-3000:]
    manifest = json.loads((root / "sft" / "seed0" / "manifest.json").read_text())
    assert manifest["data_parallel"]["world_size"] == 2
    assert manifest["data_parallel"]["batch_sizes"]["sft.batch_size"] == {"global": 16, "per_rank": 8}
    job = _jobs(root)["sft/seed0"]
    assert f"[slurm] job {job}, attempt 1, on " in (root / "logs" / "sft-seed0.log").read_text()
    assert ", rank 1 of 2" in (root / "logs" / "sft-seed0.rank1.log").read_text()
    assert "#SBATCH --ntasks-per-node=2" in (root / "slurm" / f"{job}_submission.sh").read_text()


def _resumed_from(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"resumed from iteration (\d+)", log)]


def test_a_requeued_rl_stage_finishes_in_its_next_attempt(tmp_path, cluster):
    """`scontrol requeue` of a running ReMax stage: Slurm stops it (SIGTERM), puts the job back in the queue and
    starts it again; `run` follows the job through it, and the stage finishes, from its checkpoint."""
    iterations = 16
    suite = _suite(tmp_path, shared={"iterations": iterations}, runtime={"checkpoint_every": 2})
    runner = _start("run", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft,reward_model,remax")
    root = tmp_path / "res" / "nano"
    rows = root / "remax" / ".seed0.partial" / "metrics.jsonl"
    _wait_for(lambda: rows.is_file() and len(rows.read_text().splitlines()) >= 5, "remax past iteration 4")
    job = _jobs(root)["remax/seed0"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    out, _ = runner.communicate(timeout=900)
    assert runner.returncode == 0, out
    final = root / "remax" / "seed0"
    log = (final / "stage.log").read_text()
    assert f"[slurm] job {job}, attempt 2" in log and _job(job)["Restarts"] == "1", log[-3000:]
    resumed = _resumed_from(log)  # the stage's own checkpoint (remax_bench/core/checkpoint.py), of the same config
    assert len(resumed) == 1 and 2 <= resumed[0] < iterations, log[-3000:]
    steps = [json.loads(line)["step"] for line in (final / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(iterations))


def test_the_time_limit_warning_checkpoints_and_the_job_requeues_itself(tmp_path, cluster):
    """A 3-minute limit with SIGUSR1 a minute before it, and a ReMax stage too long for it: the stage checkpoints at
    the end of its iteration and exits resumable, the job requeues itself (no one else does), and the next attempt
    goes on from that checkpoint. The test then cancels the job."""
    slurm = {"time_limit": 3, "signal_lead_s": 60, "poll_s": 1, "cpus_per_node": 1}
    suite = _suite(tmp_path, shared={"iterations": 100000}, runtime={"checkpoint_every": 100000, "slurm": slurm})
    prepared = _cli("run", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft,reward_model",
                    "--set", "runtime.executor=local")  # where a stage ran is not part of what it is
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    runner = _start("run", str(suite), "--results-dir", str(tmp_path / "res"), "--only", "sft,reward_model,remax")
    root = tmp_path / "res" / "nano"
    log = root / "logs" / "remax-seed0.log"
    _wait_for(lambda: log.is_file() and _resumed_from(log.read_text()), "the second attempt to resume", within=900)
    job = _jobs(root)["remax/seed0"]
    subprocess.run(["scancel", job], check=True)
    out, _ = runner.communicate(timeout=600)
    text = log.read_text()
    assert f"[slurm] job {job}: warned of its time limit, the stage checkpointed; requeued" in text, text[-3000:]
    assert f"[slurm] job {job}, attempt 2" in text and _resumed_from(text)[0] > 0, text[-3000:]
    assert "already complete, skipped" in out and "remax/seed0" in out
