"""A stage's identity is the suite fields it reads and its inputs' identities, and a stage that reads a field
outside its declaration is caught."""

import json
from pathlib import Path

import pytest
import yaml

from remax_bench.core import algorithms
from remax_bench.core.config import Shared, Suite
from remax_bench.core.identity import stage_identity, stage_reads
from remax_bench.core.reads import ReadLog, ReadView, covers
from remax_bench.core.stage import STRICT_READS_ENV, stage_main
from remax_bench.core.suite_file import load_suite_text

NANO = Path(__file__).parent / "fixtures" / "nano.yaml"
STAGES = ("sft", "reward_model", *algorithms.NAMES, "eval")


def _suite(edits: dict | None = None) -> dict:
    """The nano suite, resolved, with dotted edits {"shared.iterations": 7}."""
    data = yaml.safe_load(NANO.read_text())
    for dotted, value in (edits or {}).items():
        *blocks, key = dotted.split(".")
        target = data
        for block in blocks:
            target = target.setdefault(block, {})
        target[key] = value
    return load_suite_text(yaml.safe_dump(data)).resolved()


def _identities(edits: dict | None = None) -> dict[str, str]:
    suite = _suite(edits)
    return {stage: stage_identity({"stage": stage, "seed": 0, "suite": suite, "inputs": {}, "input_ids": {}})
            for stage in STAGES}


# Fields that only the algorithm stages (or the plan) read, and the stages whose identity each one moves.
ALGORITHM_EDITS = [
    ({"shared.iterations": 7}, {"ppo", "remax", "dpo", "reinforce", "grpo", "rloo", "reinforce_pp"}),
    ({"shared.kl_coef": 0.3}, {"ppo", "remax", "dpo", "reinforce", "grpo", "rloo", "reinforce_pp"}),
    ({"ppo.enabled": False}, {"ppo"}),
    ({"seeds": [0, 1]}, set()),  # the seed a stage runs with is in its config; the list is the plan's
    ({"remax.gamma": 0.9}, {"remax"}),
    ({"grpo.samples_per_prompt": 8}, {"grpo"}),
    ({"dpo.beta": 0.2}, {"dpo"}),
    ({"eval.generation.max_new_tokens": 5}, {"eval"}),
]


@pytest.mark.parametrize("edits, moved", ALGORITHM_EDITS, ids=lambda v: ",".join(v) if isinstance(v, dict) else None)
def test_a_field_moves_exactly_the_stages_that_read_it(edits, moved):
    before, after = _identities(), _identities(edits)
    assert {stage for stage in STAGES if before[stage] != after[stage]} == moved
    assert before["sft"] == after["sft"] and before["reward_model"] == after["reward_model"]


def test_preparation_fields_move_their_stage_and_shared_lengths_move_every_trained_one():
    before = _identities()
    assert {s for s, h in _identities({"sft.learning_rate": 5e-4}).items() if h != before[s]} == {"sft"}
    assert {s for s, h in _identities({"reward_model.epochs": 3}).items() if h != before[s]} == {"reward_model"}
    # DPO holds out the reward model's share of the pairs: the same eval_fraction, so it reads that field too.
    assert {s for s, h in _identities({"reward_model.eval_fraction": 0.2}).items() if h != before[s]} == {
        "reward_model", "dpo"}
    moved = {s for s, h in _identities({"shared.max_prompt_length": 48}).items() if h != before[s]}
    assert moved == set(STAGES) - {"eval"}


def test_an_input_identity_moves_the_stage_that_starts_from_it():
    suite = _suite()
    config = {"stage": "remax", "seed": 0, "suite": suite, "inputs": {"sft": "sft/seed0/checkpoint"},
              "input_ids": {"sft/seed0": "aaa"}}
    assert stage_identity(config) != stage_identity({**config, "input_ids": {"sft/seed0": "bbb"}})
    assert stage_identity(config) != stage_identity({**config, "seed": 1})


def test_every_algorithm_declares_its_own_block_and_none_of_the_others():
    for name in algorithms.NAMES:
        reads = stage_reads(name)
        assert covers(reads, f"{name}.enabled") and covers(reads, "shared.iterations")
        assert not any(covers(reads, f"{other}.enabled") for other in algorithms.NAMES if other != name)
        assert covers(reads, "data.prompts.source") == algorithms.get(name).online
    for stage in ("sft", "reward_model"):
        assert not covers(stage_reads(stage), "shared.iterations") and not covers(stage_reads(stage), "seeds")


def test_the_view_records_fields_properties_and_methods():
    suite = load_suite_text(NANO.read_text())
    undeclared = []
    log = ReadLog(("shared.max_prompt_length", "remax"), undeclared.append)
    view = ReadView(suite, log)
    assert view.shared.max_prompt_length == 64 and isinstance(view.shared, Shared) and isinstance(view, Suite)
    assert view.iterations == 2  # a property, run on the view: it reads shared.iterations
    assert view.batch_size("sft.batch_size") == 16  # a method, run on the view
    assert getattr(view.ppo, "samples_per_prompt", 1) == 1  # a field the block does not have reads nothing
    assert view.remax.model_dump()["gamma"] == 1.0  # pydantic's own methods read the whole block
    assert undeclared == ["shared.iterations", "sft.batch_size"]
    assert log.fields == {"shared.max_prompt_length", "shared.iterations", "sft.batch_size", "remax"}
    with pytest.raises(AttributeError, match="read-only"):
        view.shared.iterations = 3


def _stage_reading(tmp_path, field_path: str, monkeypatch, strict: bool) -> tuple[int, dict]:
    """Run an SFT stage whose training reads one suite field; its exit code and manifest."""
    monkeypatch.setenv(STRICT_READS_ENV, "1" if strict else "0")
    tmp_path.mkdir()
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"stage": "sft", "seed": 0, "suite": _suite(), "inputs": {}}))
    out = tmp_path / "res" / "nano" / "sft" / "seed0"

    def train(run):
        value = run.suite
        for name in field_path.split("."):
            value = getattr(value, name)
        return {"value": value}

    code = stage_main("sft", train, ["--config", str(config), "--out", str(out)])
    manifest = out / "manifest.json" if code == 0 else out.with_name("seed0.failed") / "manifest.json"
    return code, json.loads(manifest.read_text())


def test_a_stage_that_reads_outside_its_declaration_is_caught(tmp_path, monkeypatch):
    code, manifest = _stage_reading(tmp_path / "strict", "ppo.clip_range", monkeypatch, strict=True)
    assert code == 1 and "stage sft read suite field ppo.clip_range" in manifest["error"]
    # Outside the tests a run on a cluster is not lost to it: the stage completes and says so.
    code, manifest = _stage_reading(tmp_path / "warn", "ppo.clip_range", monkeypatch, strict=False)
    assert code == 0 and any("ppo.clip_range" in w for w in manifest["warnings"])
    code, manifest = _stage_reading(tmp_path / "ok", "sft.learning_rate", monkeypatch, strict=True)
    assert code == 0 and "sft.learning_rate" in manifest["reads"] and not manifest["warnings"]


def test_results_recorded_before_stage_identities_are_kept(tmp_path):
    """A manifest whose config_hash is the digest of the whole stage config (as every stage recorded before
    identities were its reads), and a downstream stage that recorded that digest as its input's identity, are
    complete for a re-run of the same suite, and still after an edit of a field neither reads."""
    from remax_bench.core.results import json_digest, write_json
    from remax_bench.runner import Runner, plan

    def dry_run(edits=None) -> dict[str, str]:
        suite = load_suite_text(yaml.safe_dump(_suite(edits)))
        stages = plan(suite, only=["sft", "reward_model"])
        return {o.key: o.status for o in Runner(suite, tmp_path, echo=lambda *a: None).run(stages, dry_run=True)}

    suite = load_suite_text(NANO.read_text())
    runner = Runner(suite, tmp_path)
    stages = plan(suite, only=["sft", "reward_model"])
    plans = {s.key: s for s in stages}
    for item in stages:  # in plan order: the reward model's config records SFT's recorded digest
        config = runner.stage_config(item, plans)
        write_json(runner.final_dir(item.key) / "manifest.json",
                   {"status": "completed", "config": config, "config_hash": json_digest(config)})
    assert dry_run() == {"sft/seed0": "complete", "reward_model/seed0": "complete"}
    assert dry_run({"shared.iterations": 9, "ppo.enabled": False}) == {"sft/seed0": "complete",
                                                                       "reward_model/seed0": "complete"}
    assert dry_run({"sft.epochs": 2}) == {"sft/seed0": "planned", "reward_model/seed0": "planned"}


def test_where_the_launcher_starts_the_ranks_is_no_part_of_an_identity():
    before = _identities()
    assert _identities({"runtime.master_port": 29600}) == before
    moved = {s for s, h in _identities({"runtime.device": "auto"}).items() if h != before[s]}
    assert moved == set(STAGES)
