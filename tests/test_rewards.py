"""Verifiable rewards: a suite names a reward function instead of the learned reward model; clear errors;
the plan then trains no reward model for the algorithms that only optimise it; a stage runs on it for real."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from remax_bench.core import task
from remax_bench.core.config import SUITES_DIR, SuiteError
from remax_bench.core.rewards import RewardFunctionError, load_reward_function, score_all
from remax_bench.core.suite_file import load_suite_text
from remax_bench.runner import plan

FAMILY = (SUITES_DIR / "tiny_family.yaml").read_text()


def _suite(edit):
    data = yaml.safe_load(FAMILY)
    edit(data)
    return load_suite_text(yaml.safe_dump(data), "test.yaml")


def _error(edit) -> str:
    with pytest.raises(SuiteError) as info:
        _suite(edit)
    return str(info.value)


def test_gold_is_the_task_scorer_and_a_user_function_loads_by_import_path(tmp_path, monkeypatch):
    assert load_reward_function("gold") is task.gold_score
    (tmp_path / "my_rewards.py").write_text("def exact(prompt, response):\n    return float(response == 'ok')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    exact = load_reward_function("my_rewards:exact")
    assert score_all(exact, ["p", "q"], ["ok", "no"]) == [1.0, 0.0]


@pytest.mark.parametrize("spec,message", [
    ("gold_score", "expected 'gold' or an import path 'pkg.module:function'"),
    ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
    ("remax_bench.core.task:no_such_function", "module 'remax_bench.core.task' has no 'no_such_function'"),
    ("remax_bench.core.task:TASKS", "is a list, not a function"),
    ("remax_bench.core.task:true_answer", r"must accept two positional arguments \(prompt: str, response: str\); its "
                                     r"signature is true_answer\(prompt"),
])
def test_unusable_reward_functions_are_named_in_the_suite_error(spec, message):
    with pytest.raises(RewardFunctionError, match=message):
        load_reward_function(spec)
    error = _error(lambda d: d["shared"].update(reward_function=spec))
    assert error.startswith("shared.reward_function: ") and len(error.splitlines()) == 1


def test_a_reward_function_must_return_a_number():
    with pytest.raises(RewardFunctionError, match="must return a number, got str"):
        score_all(lambda prompt, response: "1", ["Reverse: abc"], ["cba"])


def test_gold_needs_synthetic_prompts():
    def edit(d):
        d["shared"]["reward_function"] = "gold"
        d["data"]["prompts"] = "prompts.jsonl"
    assert "shared.reward_function: 'gold' scores the synthetic task only" in _error(edit)


def test_the_plan_trains_no_reward_model_when_nothing_reads_it():
    def gold_without_ppo(d):
        d["shared"]["reward_function"] = "gold"
        d["ppo"] = {"enabled": False}
        d["dpo"] = {"enabled": False}
    stages = {s.key: s for s in plan(_suite(gold_without_ppo))}
    assert "reward_model/seed0" not in stages
    for name in ("remax", "reinforce", "grpo", "rloo", "reinforce_pp"):
        assert stages[f"{name}/seed0"].needs == ["sft/seed0"]
    # PPO's critic starts from the reward model, so with PPO enabled it is trained (for PPO only)
    stages = {s.key: s for s in plan(_suite(lambda d: d["shared"].update(reward_function="gold")))}
    assert stages["ppo/seed0"].needs == ["sft/seed0", "reward_model/seed0"]
    assert stages["grpo/seed0"].needs == ["sft/seed0"]


def test_shipped_true_reward_suite_plans_no_reward_model():
    from remax_bench.core.suite_file import load_suite

    suite = load_suite("tiny_family_gold")
    assert suite.shared.reward_function == "gold" and not suite.needs_reward_model_stage()
    assert "reward_model" not in {s.stage for s in plan(suite)}


def test_budget_errors_name_the_field():
    def indivisible(d):
        d["shared"]["rollout_batch_size"] = 30
    assert ("shared.rollout_batch_size: with rollout_batch_unit 'samples' it must be a multiple of "
            "remax.samples_per_prompt=4 (got 30)") in _error(indivisible)

    def token_budget_by_prompts(d):
        d["shared"].update(rollout_batch_unit="prompts", iterations=None, token_budget=40000)
    assert "shared.rollout_batch_unit: a token_budget holds generated tokens equal only when" in \
        _error(token_budget_by_prompts)
    with pytest.raises(SuiteError, match=r"grpo.samples_per_prompt: expected an integer >= 2, got 1"):
        _suite(lambda d: d["grpo"].update(samples_per_prompt=1))


def test_a_stage_trains_on_the_gold_reward_without_a_reward_model(tmp_path, one_torch_thread):
    from remax_bench.core.stage import stage_main
    from tests.test_critic_free import _stage_config
    from trainers import online

    config = _stage_config(tmp_path, "grpo", {"enabled": True, "samples_per_prompt": 2}, with_reward_model=False,
                           iterations=2, reward_function="gold")
    out = tmp_path / "grpo" / "seed0"
    assert stage_main("grpo", online.train, ["--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["model_state_bytes"]) == {"policy", "reference"}  # no reward model loaded
    assert summary["matched_budget"]["reward"] == "gold"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in rows)  # gold scores lie in [0, 1]


@pytest.mark.slow  # six stage processes (a minute alone on 2 cores); each stage runs in the fast tests on its own
def test_the_family_runs_end_to_end_on_the_true_reward_and_the_report_compares_it(tmp_path):
    import subprocess

    from remax_bench.report import load_results, summary_table

    data = yaml.safe_load((Path(__file__).parent / "fixtures" / "nano.yaml").read_text())
    data["name"] = "nano_family"
    data["shared"].update(reward_function="gold", rollout_batch_unit="samples")
    data["ppo"], data["dpo"] = {"enabled": False}, {"enabled": False}
    for name in ("reinforce", "grpo", "rloo", "reinforce_pp"):
        data[name] = {"enabled": True, "samples_per_prompt": 1 if name == "reinforce" else 2}
    data["remax"] = {"samples_per_prompt": 2}
    suite = tmp_path / "nano_family.yaml"
    suite.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "remax_bench.cli", "run", str(suite), "--results-dir",
                             str(tmp_path / "results")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reward_model" not in result.stdout  # nothing reads a reward model: none is trained
    table = summary_table(load_results(tmp_path / "results", "nano_family")).set_index("algorithm")
    assert list(table.index) == ["sft", "remax", "reinforce", "grpo", "rloo", "reinforce_pp"]
    online = table.drop(index="sft")
    assert (online["generated_tokens"] > 0).all() and online["time_per_1k_generated_tokens_s"].notna().all()
