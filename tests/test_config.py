import json
import re
from pathlib import Path

import pytest
import yaml

from remax_bench.core.config import SUITES_DIR, Suite, SuiteError
from remax_bench.core.suite_file import load_suite, load_suite_text, resolve_suite_path, to_yaml

TINY = (SUITES_DIR / "tiny.yaml").read_text()


def _with(edit) -> str:
    data = yaml.safe_load(TINY)
    edit(data)
    return yaml.safe_dump(data)


def _error(text: str) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite_text(text, "test.yaml")
    return str(info.value)


# -- shipped suites --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "tiny_family", "tiny_family_gold", "small_gpu", "7b_comparison", "7b_mistral"])
def test_shipped_suites_validate_and_round_trip(name):
    suite = load_suite(name)
    assert suite.name == name and suite.iterations > 0
    # the resolved dict is what stage configs carry; trainers re-validate it
    again = Suite.model_validate(json.loads(json.dumps(suite.resolved())))
    assert again == suite and again.config_hash() == suite.config_hash()
    assert load_suite_text(to_yaml(suite)) == suite


def test_tiny_suite_is_the_cpu_suite():
    suite = load_suite("tiny")
    assert suite.models.policy == "tiny:micro" and suite.runtime.device == "cpu"
    assert suite.eval.judge.type == "gold" and suite.eval.backend == "hf" and suite.eval.reference == "sft"
    assert suite.seeds == [0, 1] and suite.enabled_algorithms() == ["ppo", "remax", "dpo"]
    assert {suite.data.sft.source, suite.data.preferences.source, suite.data.prompts.source,
            suite.data.eval_prompts.source} == {"synthetic"}


def test_gpu_suites_use_deepspeed_and_hub_models():
    big = load_suite("7b_comparison")
    assert big.runtime.deepspeed.enabled and big.eval.judge.type == "openai" and big.eval.judge.model
    assert not big.models.policy.startswith("tiny:") and big.data.prompts.source != "synthetic"
    small = load_suite("small_gpu")
    assert not small.models.policy.startswith("tiny:") and small.data.preferences.source != "synthetic"


def test_bare_name_and_path_give_the_same_suite():
    assert resolve_suite_path("tiny") == SUITES_DIR / "tiny.yaml"
    assert load_suite("tiny") == load_suite(SUITES_DIR / "tiny.yaml") == load_suite(str(SUITES_DIR / "tiny.yaml"))


# -- errors: one SuiteError naming the field, what was expected and what was given -----------------
def test_unknown_top_level_key_has_did_you_mean():
    message = _error(TINY.replace("shared:", "shraed:", 1))
    assert message == "shraed: unknown key; did you mean 'shared'?"


def test_unknown_nested_key_has_did_you_mean():
    message = _error(_with(lambda d: d["shared"].update(learnig_rate=1.0)))
    assert message == "shared.learnig_rate: unknown key; did you mean 'learning_rate'?"
    message = _error(_with(lambda d: d["data"].update(sft={"source": "x.jsonl", "splt": "train"})))
    assert message == "data.sft.splt: unknown key; did you mean 'split'?"


def test_unknown_key_without_a_close_match_lists_the_allowed_ones():
    message = _error(_with(lambda d: d["dpo"].update(zzz=1)))
    assert message == "dpo.zzz: unknown key; expected one of: enabled, beta"


def test_wrong_type_names_field_expected_and_given():
    message = _error(_with(lambda d: d["shared"].update(rollout_batch_size="many")))
    assert message == "shared.rollout_batch_size: expected an integer > 0, got 'many' (a string)"
    # a quoted number is a string, not silently converted
    message = _error(_with(lambda d: d["shared"].update(iterations="100")))
    assert message == "shared.iterations: expected an integer > 0 or null, got '100' (a string)"
    message = _error(_with(lambda d: d["shared"].update(precision="fp16")))
    assert message == "shared.precision: expected one of 'fp32', 'bf16', got 'fp16' (a string)"


def test_missing_model():
    assert _error(_with(lambda d: d["models"].pop("policy"))) == (
        "models.policy: a model is required (a tiny: spec, a Hugging Face id or a local path)"
    )


def test_missing_shared_value_says_what_is_expected():
    assert _error(_with(lambda d: d["shared"].pop("learning_rate"))) == (
        "shared.learning_rate: required; expected a number > 0"
    )


def test_negative_length():
    message = _error(_with(lambda d: d["shared"].update(max_response_length=-4)))
    assert message == "shared.max_response_length: expected an integer > 0, got -4"


def test_bounded_value():
    message = _error(_with(lambda d: d["shared"]["generation"].update(top_p=1.5)))
    assert message == "shared.generation.top_p: expected a number in (0, 1], got 1.5"


def test_unjudged_share_is_a_validated_eval_field():
    assert load_suite_text(TINY).eval.max_unjudged_fraction == 0.02
    message = _error(_with(lambda d: d["eval"].update(max_unjudged_fraction=1.5)))
    assert message == "eval.max_unjudged_fraction: expected a number in [0, 1], got 1.5"


def test_algorithm_block_cannot_override_shared():
    message = _error(_with(lambda d: d["ppo"].update(learning_rate=1e-5)))
    assert message == (
        "ppo.learning_rate: cannot override shared.learning_rate in an algorithm block; that would break the "
        "matched comparison (set it in shared: for all algorithms)"
    )
    # reported instead of the generic unknown-key error, in every algorithm block, nested keys too
    for algo, key in (("remax", "kl_coef"), ("dpo", "max_response_length"), ("remax", "generation")):
        message = _error(_with(lambda d: d[algo].update({key: 1})))
        assert message.startswith(f"{algo}.{key}: cannot override shared.{key}") and "unknown key" not in message


def test_exactly_one_budget():
    both = _error(_with(lambda d: d["shared"].update(token_budget=1000)))
    iterations = yaml.safe_load(TINY)["shared"]["iterations"]
    assert both == ("shared.iterations: set exactly one of shared.iterations and shared.token_budget "
                    f"(got both: iterations={iterations}, token_budget=1000)")
    neither = _error(_with(lambda d: d["shared"].pop("iterations")))
    assert neither == "shared.iterations: set exactly one of shared.iterations and shared.token_budget (got neither)"


def test_token_budget_becomes_iterations():
    # 10_000 tokens / (32 prompts * 24 tokens = 768 per iteration) = 13.02 -> 14 iterations
    suite = load_suite_text(_with(lambda d: (d["shared"].pop("iterations"), d["shared"].update(token_budget=10_000))))
    assert suite.iterations == 14 and suite.shared.resolved_iterations() == 14
    # an exact multiple does not round up: 7_680 / 768 = 10
    exact = load_suite_text(_with(lambda d: (d["shared"].pop("iterations"), d["shared"].update(token_budget=7_680))))
    assert exact.iterations == 10
    # every algorithm sees the same number
    assert {exact.algorithm_config(a)["iterations"] for a in ("ppo", "dpo", "remax")} == {10}


def test_yaml_syntax_error_names_the_line():
    message = _error("name: x\nmodels: [unclosed\n")
    assert message.startswith("test.yaml: not valid YAML at line 3")


def test_duplicate_key_is_an_error_not_a_silent_overwrite():
    message = _error(TINY + "\nseeds: [7]\n")
    assert "duplicate key 'seeds'" in message and "not valid YAML at line" in message


def test_exponent_without_a_dot_is_a_number():
    suite = load_suite_text(TINY.replace("learning_rate: 1.0e-4", "learning_rate: 1e-4"))
    assert suite.shared.learning_rate == 1e-4


def test_top_level_must_be_a_mapping():
    assert "top level must be a mapping" in _error("- a\n- b\n")
    assert "top level must be a mapping" in _error("")


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="none.yaml not found"):
        load_suite(tmp_path / "none.yaml")
    with pytest.raises(SuiteError, match=r"no_such_suite.yaml not found.*'tiny'"):
        load_suite("no_such_suite")


def test_judge_needs_model_and_key_stays_out():
    assert _error(_with(lambda d: d["eval"].update(judge={"type": "openai"}))) == (
        "eval.judge.model: a judge of type 'openai' needs eval.judge.model (the judge model's name), got null"
    )
    message = _error(_with(lambda d: d["eval"].update(judge={"type": "openai", "model": "gpt-4", "api_key": "x"})))
    assert message.startswith("eval.judge.api_key: a key is never part of a suite") and "api_key_env" in message


def test_gold_judge_needs_synthetic_data():
    message = _error(_with(lambda d: d["data"].update(eval_prompts="my/prompts.jsonl")))
    assert message.startswith("data.eval_prompts: eval.judge.type 'gold' scores the synthetic task only")
    message = _error(_with(lambda d: d["eval"]["alpaca_eval"].update(prompts="default")))
    assert message.startswith("eval.alpaca_eval.prompts: eval.judge.type 'gold'")


def test_dpo_needs_preferences():
    message = _error(_with(lambda d: d["data"].update(preferences=None)))
    assert message == "data.preferences: needed by dpo and the reward_model stage; expected a data source, got null"
    # without DPO and with a given reward model nothing reads them
    ok = load_suite_text(_with(lambda d: (d["data"].update(preferences=None), d["dpo"].update(enabled=False),
                                          d["reward_model"].update(path="some/rm"))))
    assert ok.data.preferences is None and ok.enabled_algorithms() == ["ppo", "remax"]


def test_runtime_checks():
    message = _error(_with(lambda d: d["runtime"].update(deepspeed={"offload_optimizer": True})))
    assert message.startswith("runtime.deepspeed.offload_optimizer: needs runtime.deepspeed.enabled")
    message = _error(_with(lambda d: d["runtime"].update(deepspeed={"enabled": True, "zero_stage": 2,
                                                                     "offload_params": True})))
    assert message == ("runtime.deepspeed.offload_params: needs runtime.deepspeed.enabled and zero_stage 3 "
                       "(got enabled=true, zero_stage=2)")
    message = _error(_with(lambda d: d["runtime"].update(num_nodes=2, deepspeed={"enabled": True})))
    assert message.startswith("runtime.hostfile: runtime.num_nodes > 1 needs runtime.hostfile")


def test_global_batch_sizes_must_split_over_the_ranks():
    def four_gpus(d, **blocks):
        d["runtime"] = {"num_gpus": 2, "num_nodes": 2, "hostfile": "hosts", "deepspeed": {"enabled": True}}
        for block, values in blocks.items():
            d[block].update(values)

    message = _error(_with(lambda d: four_gpus(d, shared={"rollout_batch_size": 6}, sft={"batch_size": 10})))
    assert ("shared.rollout_batch_size: a global batch size must split evenly over the 4 data-parallel ranks "
            "(runtime.num_gpus x runtime.num_nodes); got 6, which leaves 2 over") in message
    assert "sft.batch_size:" in message and "shared.train_batch_size" not in message
    suite = load_suite_text(_with(lambda d: four_gpus(d)))
    assert suite.runtime.data_parallel_size == 4 and suite.batch_size("sft.batch_size") == 64


def test_seeds():
    assert _error(_with(lambda d: d.update(seeds=[0, 0]))) == "seeds: expected distinct integers >= 0, got [0, 0]"
    assert _error(_with(lambda d: d.update(seeds=[]))) == "seeds: expected at least one seed, got []"
    assert _error(_with(lambda d: d.update(seeds=[0, "a"]))) == "seeds[1]: expected an integer, got 'a' (a string)"


def test_several_problems_in_one_message():
    message = _error(_with(lambda d: d["shared"].update(max_response_length=0, kl_coef=-1)))
    assert message.splitlines() == [
        "shared.max_response_length: expected an integer > 0, got 0",
        "shared.kl_coef: expected a number >= 0, got -1",
    ]


def test_empty_algorithm_block_means_defaults():
    text = re.sub(r"\nremax:\n(  .*\n)+", "\nremax:\n", TINY)
    assert "\nremax:\n\n" in text
    suite = load_suite_text(text)
    assert suite.remax.enabled and suite.remax.gamma == 1.0 and suite.remax.kl_override is None


def test_one_kl_treatment_for_every_algorithm_unless_a_block_overrides_it():
    suite = load_suite_text(_with(lambda d: d.update(remax={"kl_override": None}, grpo={"enabled": True},
                                                     rloo={"enabled": True, "kl_override": "paper"})))
    assert suite.kl_treatment("ppo") == suite.kl_treatment("remax") == suite.shared.kl
    assert suite.kl_departures() == {}  # RLOO's paper treatment is the shared one
    suite = load_suite_text(_with(lambda d: d.update(remax={"kl_override": "paper"}, grpo={
        "enabled": True, "kl_override": {"estimator": "k2", "placement": "loss"}})))
    assert suite.kl_treatment("remax").shape == "per_token"
    assert suite.kl_departures() == {
        "remax": "-beta * k1 per-token reward, per-token (shared.kl: -beta * k1 per-token reward, return-to-go)",
        "grpo": "beta * k2 in the loss (shared.kl: -beta * k1 per-token reward, return-to-go)"}
    message = _error(_with(lambda d: d["remax"].update(kl_mode="per_token")))
    assert message.startswith("remax.kl_mode: unknown key; the KL treatment is shared.kl") and "kl_override: paper" in message
    message = _error(_with(lambda d: d["shared"].update(kl={"estimator": "k4"})))
    assert message == "shared.kl.estimator: expected one of 'k1', 'k2', 'k3', got 'k4' (a string)"


def test_data_source_shorthand():
    suite = load_suite_text(_with(lambda d: d["data"].update(prompts="prompts.jsonl")))
    assert suite.data.prompts.source == "prompts.jsonl" and suite.data.prompts.split == "train"


# -- the resolved view -----------------------------------------------------------------------------
def test_config_hash_is_stable_and_tracks_values():
    a, b = load_suite("tiny"), load_suite("tiny")
    assert a.config_hash() == b.config_hash() and len(a.config_hash()) == 12
    changed = load_suite_text(_with(lambda d: d["shared"].update(kl_coef=0.1)))
    assert changed.config_hash() != a.config_hash()
    # comments and key order do not change the config
    reordered = load_suite_text(yaml.safe_dump(dict(reversed(list(yaml.safe_load(TINY).items())))))
    assert reordered.config_hash() == a.config_hash()


def test_algorithm_config_merges_shared():
    suite = load_suite("tiny")
    merged = suite.algorithm_config("ppo")
    assert merged["learning_rate"] == suite.shared.learning_rate and merged["clip_range"] == suite.ppo.clip_range
    assert suite.algorithm_config("dpo")["beta"] == 0.1 and "clip_range" not in suite.algorithm_config("dpo")
    with pytest.raises(KeyError):
        suite.algorithm_config("sft")


def test_enabled_algorithms():
    suite = load_suite_text(_with(lambda d: d["ppo"].update(enabled=False)))
    assert suite.enabled_algorithms() == ["remax", "dpo"]


def test_validate_config_only_checks_a_gpu_suite_on_a_cpu_machine(monkeypatch):
    from click.testing import CliRunner

    from remax_bench.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    checked = CliRunner().invoke(main, ["validate", "7b_comparison", "--config-only"])
    assert checked.exit_code == 0, checked.output
    import torch

    if not torch.cuda.is_available():  # this machine cannot run it: said before any stage starts
        full = CliRunner().invoke(main, ["validate", "7b_comparison"])
        assert full.exit_code == 2 and "runtime.device" in full.output


def test_named_suites_ship_inside_the_package():
    import remax_bench

    assert SUITES_DIR == Path(remax_bench.__file__).resolve().parent / "suites"
    repo_suites = Path(__file__).resolve().parents[1] / "suites"
    assert sorted(p.name for p in SUITES_DIR.glob("*.yaml")) == sorted(p.name for p in repo_suites.glob("*.yaml"))
    assert json.loads((SUITES_DIR / "baselines" / "tiny.json").read_text())["metrics"]
