"""The algorithm registry is the one list every part reads: each entry must be complete and consistent."""

import importlib
from pathlib import Path

import pytest

from remax_bench.core import algorithms
from remax_bench.core.config import Suite
from remax_bench.core.suite_file import load_suite
from remax_bench.runner import plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", algorithms.NAMES)
def test_every_algorithm_has_a_suite_block_a_trainer_and_its_update(name):
    spec = algorithms.get(name)
    assert Suite.model_fields[name].annotation is spec.block
    module = importlib.import_module(spec.module)
    # An online algorithm is its estimator (one signature for all, run by trainers/online.py); an offline one
    # is its own stage.
    assert callable(module.advantages if spec.online else module.train)
    path, functions = spec.update.split(":")
    assert (ROOT / path).is_file() and path == f"trainers/{name}.py"
    for function in functions.split(","):
        assert callable(getattr(module, function.strip())), f"{spec.update}: {function} is not in {path}"


def test_the_stage_graph_follows_what_each_algorithm_needs():
    suite = load_suite("tiny_family")
    assert suite.enabled_algorithms() == list(algorithms.NAMES)  # every registered algorithm
    stages = {s.key: s for s in plan(suite)}
    seed = suite.seeds[0]
    for name in algorithms.NAMES:
        needs = stages[f"{name}/seed{seed}"].needs
        assert (f"reward_model/seed{seed}" in needs) == algorithms.get(name).reward_model
        assert f"sft/seed{seed}" in needs
    assert algorithms.needing_reward_model() == ["ppo", "remax", "reinforce", "grpo", "rloo", "reinforce_pp"]
    assert algorithms.needing_preferences() == ["dpo"]
    assert [a for a in algorithms.NAMES if algorithms.get(a).critic] == ["ppo"]


def test_algorithms_beyond_the_paper_are_off_unless_a_suite_enables_them():
    # tiny.yaml (and its committed baseline) keeps running exactly PPO, ReMax and DPO
    assert load_suite("tiny").enabled_algorithms() == ["ppo", "remax", "dpo"]


def test_unknown_algorithm_names_the_registered_ones():
    with pytest.raises(KeyError, match="ppo, remax, dpo"):
        algorithms.get("a2c")


def test_validate_table_lists_shared_settings_once_and_each_algorithms_own():
    from click.testing import CliRunner

    from remax_bench.cli import main

    result = CliRunner().invoke(main, ["validate", "tiny", "--table"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header[:3] == ["setting", "symbol", "shared"] and header[3:] == ["PPO", "ReMax", "DPO"]
    kl = next(line.split() for line in lines if line.strip().startswith("shared.kl_coef"))
    assert kl == ["shared.kl_coef", "beta", "0.2"]  # one value, the same for every algorithm
    clip = next(line.split() for line in lines if line.strip().startswith("ppo.clip_range"))
    assert clip == ["ppo.clip_range", "epsilon", "0.2", "–", "–"]  # PPO's own; not ReMax's or DPO's


def test_the_readme_map_names_every_algorithms_update():
    readme = (ROOT / "README.md").read_text()
    for spec in algorithms.REGISTRY.values():
        path, functions = spec.update.split(":")
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| {spec.label} |") and "trainers/" in line), None)
        assert row is not None, f"README's map has no row for {spec.label}"
        assert f"`{path}`" in row and all(f"`{f.strip()}`" in row for f in functions.split(",")), row
