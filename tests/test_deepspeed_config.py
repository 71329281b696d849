"""The runtime block -> DeepSpeed JSON, the launcher command, and real one-process DeepSpeed on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from remax_bench.core.deepspeed_config import (
    DEFAULT_MASTER_PORT,
    deepspeed_config,
    free_port,
    launch_command,
    zero_settings,
)

REPO = Path(__file__).resolve().parents[1]


def runtime(stage=0, offload_optimizer=False, offload_params=False, num_gpus=1, num_nodes=1, accumulation=None,
            **extra):
    ds = SimpleNamespace(enabled=True, zero_stage=stage, offload_optimizer=offload_optimizer,
                         offload_params=offload_params)
    if accumulation is not None:
        ds.gradient_accumulation_steps = accumulation
    return SimpleNamespace(device="cuda", num_gpus=num_gpus, num_nodes=num_nodes, deepspeed=ds, **extra)


SHARED = SimpleNamespace(precision="bf16", max_grad_norm=1.0)


# -- JSON per ZeRO stage ----------------------------------------------------------------------------------
def test_stage0_is_plain_data_parallel_bf16():
    config = deepspeed_config(runtime(0), SHARED, 4, world_size=1)
    assert config["zero_optimization"] == {"stage": 0}
    assert config["bf16"] == {"enabled": True}
    assert config["fp16"] == {"enabled": False}
    assert config["gradient_clipping"] == 1.0
    assert config["steps_per_print"] >= 10**6
    assert config["wall_clock_breakdown"] is False
    assert "zero_force_ds_cpu_optimizer" not in config


@pytest.mark.parametrize("stage", [1, 2])
def test_stage1_and_2_partition_without_offload(stage):
    zero = deepspeed_config(runtime(stage), SHARED, 4, world_size=8)["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"] == {"device": "none", "pin_memory": True}
    assert "offload_param" not in zero  # parameters are only partitioned (and offloadable) at stage 3
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == int(5e8)


def test_stage2_with_optimizer_offload_allows_the_torch_optimizer():
    config = deepspeed_config(runtime(2, offload_optimizer=True), SHARED, 2, world_size=4)
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["zero_force_ds_cpu_optimizer"] is False
    assert config["zero_allow_untested_optimizer"] is True


def test_stage3_keys_with_and_without_offload():
    plain = deepspeed_config(runtime(3), SHARED, 2, world_size=4)["zero_optimization"]
    assert plain["stage"] == 3
    assert plain["offload_param"]["device"] == "none" and plain["offload_optimizer"]["device"] == "none"
    assert plain["stage3_gather_16bit_weights_on_model_save"] is True
    assert plain["stage3_param_persistence_threshold"] == int(1e5)
    assert "allgather_bucket_size" not in plain
    offloaded = deepspeed_config(runtime(3, True, True), SHARED, 2, world_size=4)["zero_optimization"]
    assert offloaded["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert offloaded["offload_optimizer"] == {"device": "cpu", "pin_memory": True}


def test_offload_needs_the_right_stage():
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        deepspeed_config(runtime(2, offload_params=True), SHARED, 1, world_size=1)
    with pytest.raises(ValueError, match="offload_optimizer needs zero_stage >= 1"):
        deepspeed_config(runtime(0, offload_optimizer=True), SHARED, 1, world_size=1)
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3"):
        zero_settings(runtime(4))


def test_offload_accepts_device_names_and_dicts():
    rt = {"num_gpus": 2, "deepspeed": {"zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "none"}}
    zero = deepspeed_config(rt, {"precision": "fp32", "max_grad_norm": None}, 1, world_size=2)
    assert zero["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert zero["zero_optimization"]["offload_param"]["device"] == "none"
    assert zero["bf16"] == {"enabled": False}
    assert zero["gradient_clipping"] == 0.0  # no max_grad_norm: clipping off


# -- batch arithmetic -------------------------------------------------------------------------------------
def test_train_batch_is_micro_times_accumulation_times_world():
    config = deepspeed_config(runtime(2, accumulation=3), SHARED, 4, world_size=8)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 96


def test_world_size_from_env_then_suite(monkeypatch):
    import torch.distributed

    # As in a process before any process group (another test may have started one in this process).
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "6")
    assert deepspeed_config(runtime(1), SHARED, 2)["train_batch_size"] == 12
    monkeypatch.delenv("WORLD_SIZE")
    # No process group, no launcher env: GPUs per node x nodes.
    assert deepspeed_config(runtime(1, num_gpus=4, num_nodes=2), SHARED, 2)["train_batch_size"] == 16


# -- inference config for frozen models -------------------------------------------------------------------
def test_inference_config_shards_frozen_models_only_under_stage3():
    for stage in (0, 1, 2):
        config = deepspeed_config(runtime(stage, offload_optimizer=stage > 0), SHARED, 4, stage="inference",
                                  world_size=2)
        assert config["zero_optimization"] == {"stage": 0}
        assert "gradient_clipping" not in config and "zero_force_ds_cpu_optimizer" not in config
        assert config["train_batch_size"] == 8  # DeepSpeed checks it even without an optimizer
    frozen = deepspeed_config(runtime(3, offload_params=True), SHARED, 4, stage="inference", world_size=2)
    assert frozen["zero_optimization"]["stage"] == 3
    assert frozen["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert frozen["bf16"] == {"enabled": True}
    with pytest.raises(ValueError, match="'train' or 'inference'"):
        deepspeed_config(runtime(0), SHARED, 4, stage="eval")


def test_frozen_models_placed_as_the_suite_says():
    chosen = runtime(2)
    chosen.deepspeed.frozen_models = "zero3_offload"  # trained under ZeRO-2, frozen ZeRO-3 offloaded
    config = deepspeed_config(chosen, SHARED, 4, stage="inference", world_size=2)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    chosen.deepspeed.frozen_models, chosen.deepspeed.zero_stage = "replicated", 3
    assert deepspeed_config(chosen, SHARED, 4, stage="inference", world_size=2)["zero_optimization"] == {"stage": 0}


# -- launch command ---------------------------------------------------------------------------------------
def test_launch_single_gpu():
    command = launch_command("trainers.remax", "c.json", "out/remax", runtime(2, num_gpus=1))
    assert command == ["deepspeed", "--num_gpus", "1", "--master_port", str(DEFAULT_MASTER_PORT), "--module",
                       "trainers.remax", "--config", "c.json", "--out", "out/remax"]


def test_launch_eight_gpus_with_port():
    command = launch_command("trainers.ppo", "c.json", "o", runtime(3, num_gpus=8, master_port=29611))
    assert command[:5] == ["deepspeed", "--num_gpus", "8", "--master_port", "29611"]
    assert command[5:] == ["--module", "trainers.ppo", "--config", "c.json", "--out", "o"]


def test_launch_two_nodes_with_hostfile():
    rt = runtime(3, num_gpus=8, num_nodes=2, hostfile="/etc/hosts.ds", master_addr="10.0.0.1")
    command = launch_command("trainers.dpo", "c.json", "o", rt)
    assert command == ["deepspeed", "--num_gpus", "8", "--num_nodes", "2", "--hostfile", "/etc/hosts.ds",
                       "--master_addr", "10.0.0.1", "--master_port", str(DEFAULT_MASTER_PORT), "--module",
                       "trainers.dpo", "--config", "c.json", "--out", "o"]
    with pytest.raises(ValueError, match="hostfile"):
        launch_command("trainers.dpo", "c.json", "o", runtime(3, num_gpus=8, num_nodes=2))


def test_launch_one_cpu_process_is_plain_python():
    rt = SimpleNamespace(device="cpu", num_gpus=0, num_nodes=1, deepspeed=SimpleNamespace(zero_stage=2))
    assert launch_command("trainers.sft", "c.json", "o", rt) == [
        sys.executable, "-m", "trainers.sft", "--config", "c.json", "--out", "o"]


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- real DeepSpeed, one process on the CPU accelerator ---------------------------------------------------
# All cases run in one child process (DeepSpeed keeps global state; a child leaves this process clean):
# each builds a seeded tiny Llama, wraps it with deepspeed.initialize and takes optimizer steps.
WORKER = textwrap.dedent(
    """
    import json, math, sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM
    from remax_bench.core.deepspeed_config import deepspeed_config, init_distributed_single_process

    backend = init_distributed_single_process()
    conf = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for case in json.loads(sys.argv[1]):
        rt = {"num_gpus": 1, "deepspeed": {"zero_stage": case["stage"],
              "offload_optimizer": case.get("offload_optimizer", False),
              "offload_params": case.get("offload_params", False),
              "gradient_accumulation_steps": case.get("accumulation", 1)}}
        shared = {"precision": case["precision"], "max_grad_norm": 1.0}
        torch.manual_seed(0)
        model = LlamaForCausalLM(conf)
        initial = [p.detach().clone().float() for p in model.parameters()]
        reference = LlamaForCausalLM(conf)
        reference.load_state_dict(model.state_dict())
        reference.requires_grad_(False)
        ref_engine, *_ = deepspeed.initialize(model=reference, config=deepspeed_config(rt, shared, 2, "inference"))
        with torch.no_grad():
            ref_loss = ref_engine(input_ids=ids, labels=ids).loss.item()
        config = deepspeed_config(rt, shared, 2)
        if case.get("ds_optimizer"):
            config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}
            engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                           config=config)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        losses = []
        for _ in range(2 * case.get("accumulation", 1)):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=case["stage"] == 3):
            change = sum((p.detach().float() - q).abs().sum().item() for p, q in zip(params, initial))
        results[case["name"]] = {
            "losses": losses, "ref_loss": ref_loss, "change": change, "global_steps": engine.global_steps,
            "dtype": str(params[0].dtype), "optimizer": type(optimizer).__name__,
            # ZeRO-3 marks every parameter it partitions with its shard (ds_tensor).
            "zero3_params": all(hasattr(p, "ds_tensor") for p in params),
            "ref_zero3_params": all(hasattr(p, "ds_tensor") for p in ref_engine.module.parameters()),
            "backend": backend,
        }
    print("RESULTS " + json.dumps(results))
    """
)

CASES = [
    {"name": "zero0_fp32", "stage": 0, "precision": "fp32"},
    {"name": "zero0_bf16", "stage": 0, "precision": "bf16"},
    {"name": "zero1_fp32_accum2", "stage": 1, "precision": "fp32", "accumulation": 2},
    {"name": "zero2_bf16", "stage": 2, "precision": "bf16"},
    {"name": "zero2_bf16_offload", "stage": 2, "precision": "bf16", "offload_optimizer": True},
    {"name": "zero3_bf16", "stage": 3, "precision": "bf16"},
    {"name": "zero3_fp32_offload_all", "stage": 3, "precision": "fp32", "offload_optimizer": True,
     "offload_params": True},
    {"name": "zero3_ds_torch_adam", "stage": 3, "precision": "fp32", "ds_optimizer": True},
]


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    script = tmp_path_factory.mktemp("ds") / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(script), json.dumps(CASES)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.deepspeed
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_deepspeed_trains_on_cpu(deepspeed_runs, case):
    result = deepspeed_runs[case["name"]]
    assert result["backend"] == "gloo"
    losses = result["losses"]
    assert all(x == x and abs(x) < 1e4 for x in losses), losses  # finite
    assert result["change"] > 1.0, "parameters did not move"
    # Optimizer steps happen once per accumulation window.
    assert result["global_steps"] == 2
    assert losses[-1] < losses[0]  # lr 1e-2 on a fixed batch: the loss goes down
    assert result["dtype"] == ("torch.bfloat16" if case["precision"] == "bf16" else "torch.float32")
    expected_optimizer = {0: ("AdamW", "FP16_UnfusedOptimizer", "BF16_Optimizer"), 1: ("DeepSpeedZeroOptimizer",),
                          2: ("DeepSpeedZeroOptimizer",), 3: ("DeepSpeedZeroOptimizer_Stage3",)}[case["stage"]]
    assert result["optimizer"] in expected_optimizer
    # The frozen copy (inference config) starts from the same weights: same first loss; ZeRO-3 shards it.
    assert result["ref_loss"] == pytest.approx(losses[0], rel=1e-2 if case["precision"] == "bf16" else 1e-5)
    assert result["zero3_params"] == result["ref_zero3_params"] == (case["stage"] == 3)
