"""runtime.executor and runtime.slurm without a cluster: the schema, what each stage's job asks Slurm for, the
rank variables a task derives from srun's, and the preflight on a machine without Slurm. (Real jobs:
tests/test_slurm.py.)"""

import os
from pathlib import Path

import pytest
import yaml

from remax_bench.core.config import SuiteError
from remax_bench.core.slurm_config import time_limit_seconds
from remax_bench.core.stage import config_hash
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.runner import Runner, plan

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _suite(runtime: dict):
    data = yaml.safe_load(NANO.read_text())
    data["runtime"] = runtime
    ranks = runtime.get("num_gpus", 1) * runtime.get("num_nodes", 1)  # every global batch splits over them
    data["shared"].update(rollout_batch_size=ranks * 4, train_batch_size=ranks * 4)
    data["sft"]["batch_size"] = data["reward_model"]["batch_size"] = ranks * 4
    return load_suite_text(yaml.safe_dump(data))


GPU_CLUSTER = {"device": "cuda", "num_gpus": 8, "num_nodes": 2, "deepspeed": {"enabled": True, "zero_stage": 2},
               "executor": "slurm",
               "slurm": {"partition": "gpu", "account": "lab", "time_limit": "2-00:00:00", "cpus_per_node": 96,
                         "sbatch": ["--constraint=h100", "--exclusive"], "setup": ["module load cuda"],
                         "signal_lead_s": 900}}


@pytest.mark.parametrize("limit, seconds", [(90, 5400), ("90", 5400), ("10:30", 630), ("1:00:00", 3600),
                                            ("2-00:00:00", 172800), ("1-12", 129600), ("1-2:30", 95400)])
def test_time_limits_read_as_sbatch_reads_them(limit, seconds):
    assert time_limit_seconds(limit) == seconds


@pytest.mark.parametrize("slurm, message", [
    ({"time_limit": "two days"}, "time_limit: expected minutes or Slurm's [days-]hours:minutes:seconds"),
    ({"time_limit": 10, "signal_lead_s": 600}, "signal_lead_s: the warning before the time limit must be shorter"),
    ({"sbatch": ["constraint=h100"]}, "sbatch: expected options like '--constraint=h100'"),
    ({"partiton": "gpu"}, "partiton"),
])
def test_bad_slurm_settings_name_the_field(slurm, message):
    with pytest.raises(SuiteError, match=None) as err:
        _suite({"device": "cpu", "executor": "slurm", "slurm": slurm})
    assert message in str(err.value), str(err.value)


def test_several_nodes_need_a_hostfile_only_outside_slurm():
    with pytest.raises(SuiteError, match="runtime.num_nodes > 1 needs runtime.hostfile, or runtime.executor: slurm"):
        _suite({**GPU_CLUSTER, "executor": "local"})
    assert _suite(GPU_CLUSTER).runtime.data_parallel_size == 16


def test_where_a_stage_runs_is_not_part_of_what_it_is(tmp_path):
    """Moving a suite onto the cluster keeps its finished stages: executor and slurm are watch fields, read by no
    stage (no declaration covers them, so a stage that read one through its ReadView would be caught)."""
    from remax_bench.core.identity import stage_reads
    from remax_bench.core.reads import covers
    from remax_bench.runner import STAGE_MODULES

    for stage in STAGE_MODULES:
        assert not [f for f in ("runtime.executor", "runtime.slurm.partition") if covers(stage_reads(stage), f)], stage
    local = load_suite(NANO)
    slurm = load_suite(NANO, ["runtime.executor=slurm", "runtime.slurm.partition=gpu", "runtime.slurm.time_limit=60"])
    assert local.config_hash() == slurm.config_hash()
    stages = plan(local)
    plans = {s.key: s for s in stages}
    for item in stages:
        assert config_hash(Runner(local, tmp_path).stage_config(item, plans)) == \
            config_hash(Runner(slurm, tmp_path).stage_config(item, plans))


def test_each_stage_asks_slurm_for_its_nodes_ranks_gpus_and_time():
    from remax_bench.slurm import job_parameters

    runtime = _suite(GPU_CLUSTER).runtime
    ppo = job_parameters("ppo", runtime, "s.ppo.seed0", ["101", "102"])
    assert {k: ppo[k] for k in ("nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "partition", "account")} \
        == {"nodes": 2, "ntasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 12, "partition": "gpu",
            "account": "lab"}
    assert ppo["additional_parameters"] == {"signal": "USR1@900", "requeue": True, "kill_on_invalid_dep": "yes",
                                            "time": "2-00:00:00", "constraint": "h100", "exclusive": True,
                                            "dependency": "afterok:101:102"}
    assert ppo["setup"] == ["module load cuda"] and "--kill-on-bad-exit=1" in ppo["srun_args"]
    evaluation = job_parameters("eval", runtime, "s.eval.seed0", [])
    assert (evaluation["nodes"], evaluation["ntasks_per_node"], evaluation["gpus_per_node"]) == (1, 1, 1)
    assert "dependency" not in evaluation["additional_parameters"]
    cpu = job_parameters("sft", _suite({"device": "cpu", "executor": "slurm"}).runtime, "s.sft.seed0", [])
    assert "gpus_per_node" not in cpu and cpu["ntasks_per_node"] == 1 and "cpus_per_task" not in cpu


def test_a_task_takes_its_rank_from_what_srun_set(monkeypatch):
    pytest.importorskip("submitit")
    from remax_bench.slurm import PORT_BASE, PORT_SPAN, rank_environment

    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert rank_environment() == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "MASTER_ADDR": "gpu07",
                                  "MASTER_PORT": str(PORT_BASE + 4242 % PORT_SPAN)}
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert rank_environment() == {}  # one process: the stage starts its own one-rank group


def test_without_sbatch_a_slurm_run_stops_before_anything_is_submitted(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from remax_bench.cli import main

    suite = tmp_path / "suite.yaml"
    data = yaml.safe_load(NANO.read_text())
    data["runtime"]["executor"] = "slurm"
    suite.write_text(yaml.safe_dump(data))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for args in (["run", str(suite), "--results-dir", str(tmp_path / "res")], ["validate", str(suite)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "runtime.executor: 'slurm' but sbatch is not on PATH" in result.output
    assert not (tmp_path / "res").exists()
    dry = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(tmp_path / "res"), "--dry-run"])
    assert dry.exit_code == 0 and "sbatch is not on PATH" in dry.output
    assert os.environ["PATH"] == str(empty)
