"""Stages run on their own (python -m trainers.<stage>) and fail cleanly on bad input."""

import json
from pathlib import Path

import pytest
import yaml

from remax_bench.core.models import load_causal_lm
from remax_bench.core.stage import stage_main
from remax_bench.core.suite_file import load_suite_text
from trainers import sft

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"


def _config(tmp_path, stage="sft", **shared_edits):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared_edits)
    suite = load_suite_text(yaml.safe_dump(data))
    path = tmp_path / f"{stage}.json"
    path.write_text(json.dumps({"stage": stage, "seed": 0, "suite": suite.resolved(), "inputs": {}}))
    return path, suite


def test_sft_stage_alone_writes_the_results_layout(tmp_path):
    config, _ = _config(tmp_path)
    out = tmp_path / "sft" / "seed0"
    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["heldout_loss"] < summary["heldout_loss_before"]
    policy = summary["model_state_bytes"]["policy"]
    # AdamW: two fp32 moments per parameter, plus one fp32 step counter per parameter tensor.
    n_tensors = len(list(load_causal_lm("tiny:nano").parameters()))
    assert policy["optimizer"] == 2 * policy["params"] + 4 * n_tensors and policy["grads"] == policy["params"]
    assert not (out.parent / ".seed0.partial").exists()
    rows = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "loss" in rows[0]


def test_empty_dataset_fails_with_the_cause_and_no_result(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = yaml.safe_load(NANO.read_text())
    data["data"]["sft"] = str(empty)
    suite = load_suite_text(yaml.safe_dump(data))
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"stage": "sft", "seed": 0, "suite": suite.resolved(), "inputs": {}}))
    out = tmp_path / "sft" / "seed0"
    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 1
    assert not out.exists()
    manifest = json.loads((tmp_path / "sft" / "seed0.failed" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "empty.jsonl" in manifest["error"]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config, _ = _config(tmp_path)
    calls = {"n": 0}
    real = sft.sft_loss

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    out = tmp_path / "sft" / "seed0"
    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 1
    failed = tmp_path / "sft" / "seed0.failed"
    manifest = json.loads((failed / "manifest.json").read_text())
    assert "NonFiniteError" in manifest["error"] and "step 2" in manifest["error"]
    assert (failed / "checkpoint" / "config.json").is_file()  # saved after steps 0 and 1


@pytest.mark.parametrize("where", ["seed_everything", "train"])
def test_an_interrupt_is_recorded_wherever_it_lands_once_the_partial_folder_exists(tmp_path, monkeypatch, where):
    """A runner stopped by SIGTERM sends its stage SIGINT the moment it is told, and a loaded machine can
    deschedule the stage between creating metrics.jsonl and entering train(): the interrupt landed in open()
    (seeding), outside the stage's handler, and left no interrupted record. Here it lands there on purpose: the
    partial folder stays (a re-run resumes from it or starts over) and says it was interrupted."""
    from remax_bench.core import stage as stage_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "seed_everything":
        monkeypatch.setattr(stage_module, "seed_everything", interrupted)
    config, _ = _config(tmp_path)
    out = tmp_path / "sft" / "seed0"
    try:
        code = stage_main("sft", interrupted if where == "train" else sft.train, ["--config", str(config), "--out", str(out)])
    except KeyboardInterrupt:
        pytest.fail(f"an interrupt in {where} escaped the stage unrecorded")
    assert code == 130 and not out.exists() and not (out.parent / "seed0.failed").exists()
    manifest = json.loads((out.parent / ".seed0.partial" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"


@pytest.mark.deepspeed
# ZeRO-3 (partitioned weights, gathered for generation) in the fast tests; ZeRO-2 with the slow ones: its engine
# steps are tested in-process (test_deepspeed_config) and its SFT stage on one and two ranks (test_multirank).
@pytest.mark.parametrize("zero_stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_deepspeed_zero_path_trains_sft_and_remax_in_one_cpu_process(tmp_path, zero_stage):
    """The same trainers under DeepSpeed (CPU accelerator, one process, gloo), each stage in its own process."""
    pytest.importorskip("deepspeed")
    import subprocess
    import sys

    data = yaml.safe_load(NANO.read_text())
    data["runtime"]["deepspeed"] = {"enabled": True, "zero_stage": zero_stage}
    suite = load_suite_text(yaml.safe_dump(data))
    sft_out, rm_dir = tmp_path / "sft" / "seed0", tmp_path / "rm"
    configs = {
        "sft": {"stage": "sft", "seed": 0, "suite": suite.resolved(), "inputs": {}},
        "remax": {"stage": "remax", "seed": 0, "suite": suite.resolved(),
                  "inputs": {"sft": str(sft_out / "checkpoint"), "reward_model": str(rm_dir)}},
    }
    for stage, out in (("sft", sft_out), ("remax", tmp_path / "remax" / "seed0")):
        path = tmp_path / f"{stage}.json"
        path.write_text(json.dumps(configs[stage]))
        proc = subprocess.run([sys.executable, "-m", f"trainers.{stage}", "--config", str(path), "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if stage == "sft":
            from remax_bench.core.models import load_reward_model, load_tokenizer, save_pretrained

            ckpt = str(sft_out / "checkpoint")
            save_pretrained(load_reward_model(ckpt, new_head=True), load_tokenizer(ckpt), rm_dir)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert manifest["deepspeed_configs"][0]["zero_optimization"]["stage"] == zero_stage
    summary = json.loads((tmp_path / "remax" / "seed0" / "summary.json").read_text())
    assert "critic" not in summary["model_state_bytes"] and summary["iterations"] == 2
