"""bench --against trl: TRL's trainers on the same work as ours (settings, table, the missing-library message) and,
marked slow (importing TRL takes a minute on 2 shared cores), the real TRL trainers beside ours end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from remax_bench.core import algorithms
from remax_bench.core.suite_file import load_suite, load_suite_text
from remax_bench.peers import against
from remax_bench.peers.trl_settings import NotMatchable, trl_plan

REPO = Path(__file__).resolve().parent.parent


def _suite(**shared):
    suite = load_suite("bench_peers")
    data = suite.resolved()
    data["shared"].update(shared)
    import yaml

    return load_suite_text(yaml.safe_dump(data))


def test_the_registry_names_trls_trainer_of_each_algorithm_it_has():
    assert {algorithms.get(n).trl_trainer for n in algorithms.with_trl_trainer()} == {
        "GRPOTrainer", "RLOOTrainer", "DPOTrainer"}
    assert algorithms.get(algorithms.FOCUS).trl_trainer is None  # ReMax: set against TRL's GRPO instead


def test_grpo_settings_are_the_suites_in_trls_units():
    suite = _suite()
    plan = trl_plan(suite, "grpo", 0, "cpu")
    c = plan.config
    # 16 prompts x k=2 answers: one generation batch of 32 completions, one optimizer step of all of them
    assert (c["num_generations"], c["generation_batch_size"], c["per_device_train_batch_size"]) == (2, 32, 32)
    assert plan.steps_per_iteration == 1 and plan.rows_per_iteration == 32
    assert c["max_completion_length"] == 32 and c["beta"] == 0.05 and c["loss_type"] == "dapo"
    assert c["learning_rate"] == suite.shared.learning_rate and c["lr_scheduler_type"] == "constant"
    # TRL's defaults that differ from ours are set to ours
    assert c["gradient_checkpointing"] is False and c["bf16"] is False and c["disable_dropout"] is True
    assert c["num_iterations"] == 1 and c["gradient_accumulation_steps"] == 1 and c["top_k"] == 0
    assert not plan.differs[0].startswith("KL")  # the suite's grpo runs TRL's KL (k3 in the loss)


def test_mini_batches_become_trls_optimizer_steps_per_generation():
    plan = trl_plan(_suite(train_batch_size=16), "grpo", 0, "cpu")
    assert plan.config["per_device_train_batch_size"] == 16 and plan.config["generation_batch_size"] == 32
    assert plan.steps_per_iteration == 2
    # RLOO takes one update over the whole batch whatever train_batch_size says, in ours and so in TRL's
    rloo = trl_plan(_suite(train_batch_size=16), "rloo", 0, "cpu")
    assert rloo.config["per_device_train_batch_size"] == 32 and rloo.steps_per_iteration == 1
    with pytest.raises(NotMatchable, match="mini-batches"):
        trl_plan(_suite(train_batch_size=12), "grpo", 0, "cpu")


def test_a_kl_treatment_trl_cannot_run_is_named():
    data = load_suite("bench_peers").resolved()
    data["grpo"]["kl_override"] = None
    import yaml

    plan = trl_plan(load_suite_text(yaml.safe_dump(data)), "grpo", 0, "cpu")
    assert plan.differs[0].startswith("KL: TRL puts beta * k3 in the loss")


def test_dpo_settings():
    plan = trl_plan(_suite(), "dpo", 0, "cuda")
    c = plan.config
    assert c["per_device_train_batch_size"] == 32 and c["beta"] == 0.1 and c["precompute_ref_log_probs"] is True
    assert c["max_length"] == 64 + 32 and c["use_cpu"] is False
    with pytest.raises(NotMatchable, match="no TRL trainer"):
        trl_plan(_suite(), algorithms.FOCUS, 0, "cpu")


def test_without_trl_the_command_says_how_to_get_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert "pip install 'remax-bench[trl]'" in against.missing("trl")
    from remax_bench.cli import main

    result = CliRunner().invoke(main, ["bench", "--against", "trl", "--model", "tiny:nano", "-n", "2"])
    assert result.exit_code == 2 and "needs the trl package" in result.output


def _row(algo, seconds, tokens_per_s, answers, rollouts="hf", **extra):
    return {"algorithm": algo, "rollouts": rollouts, "time_per_iteration_s": seconds,
            "tokens_per_second": tokens_per_s, "peak_memory_mib": 100.0, "generate_s": seconds / 2,
            "score_s": seconds / 4, "train_s": seconds / 4, "answers_per_iteration": answers, **extra}


def test_the_side_by_side_table_and_remax_against_trls_grpo():
    ours = pd.DataFrame([_row("remax", 2.0, 500.0, 32), _row("grpo", 3.0, 330.0, 32), _row("dpo", 1.0, 900.0, math.nan)])
    peers = pd.DataFrame([
        _row("grpo", 3.6, 280.0, 32, trainer="trl.GRPOTrainer", version="1.16.0", matched=["k"], differs=["eps"]),
        _row("dpo", 1.1, 800.0, 32, trainer="trl.DPOTrainer", version="1.16.0", matched=["pairs"], differs=[]),
    ])
    table = against.side_by_side(ours, peers).set_index("algorithm")
    assert table.loc["grpo", "speedup"] == pytest.approx(3.6 / 3.0)
    assert table.loc["dpo", "speedup"] == pytest.approx(1.1)
    versus = against.remax_against_grpo(ours, peers)
    assert versus["equal"] and versus["speedup"] == pytest.approx(1.8)
    assert versus["tokens_per_s_ratio"] == pytest.approx(500 / 280)
    text = against.format_against(ours, peers)
    assert "grpo: 1.20x trl.GRPOTrainer's speed (meets the 1.2x target)" in text
    assert "dpo: 1.10x trl.DPOTrainer's speed (below the 1.2x target)" in text
    assert "ReMax vs trl.GRPOTrainer (32 answers per iteration each): 1.80x" in text
    assert "differs (TRL has no switch for it): eps" in text


@pytest.mark.slow
def test_trls_trainers_run_beside_ours_on_the_same_work(tmp_path):
    pytest.importorskip("trl")
    suite = tmp_path / "peers.yaml"
    data = load_suite("bench_peers").resolved()
    data["shared"].update(rollout_batch_size=4, train_batch_size=8, max_response_length=8)
    import yaml

    suite.write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, "-m", "remax_bench.cli", "bench", "--suite", str(suite), "--model", "tiny:nano",
                          "-n", "2", "--algorithms", "remax,grpo,rloo,dpo", "--against", "trl", "--results-dir",
                          str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ReMax vs trl.GRPOTrainer (8 answers per iteration each)" in out.stdout
    for algo, trainer in (("grpo", "GRPOTrainer"), ("rloo", "RLOOTrainer"), ("dpo", "DPOTrainer")):
        summary = json.loads((tmp_path / "r" / "bench-tiny_nano-trl" / algo / "seed0" / "summary.json").read_text())
        assert summary["peer"]["trainer"] == trainer and summary["time_per_iteration_s"] > 0
        assert summary["peak_memory_bytes"] > 0 and summary["model_state_bytes"]["policy"]["optimizer"] > 0
        steps = [json.loads(line) for line in (tmp_path / "r" / "bench-tiny_nano-trl" / algo / "seed0" /
                                               "metrics.jsonl").read_text().splitlines()]
        assert len(steps) == 2 and all(s["tokens"] > 0 for s in steps)
        if algo != "dpo":  # 4 prompts x 2 answers of at most 8 tokens were generated each iteration
            assert all(s["tokens"] <= 4 * 2 * 8 and s["time_generate_s"] > 0 for s in steps)
