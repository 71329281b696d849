import pytest
import yaml

from remax_bench.config import SUITES_DIR, SuiteError, load_suite, load_suite_text

TINY = (SUITES_DIR / "tiny.yaml").read_text()


def _with(edit) -> str:
    data = yaml.safe_load(TINY)
    edit(data)
    return yaml.safe_dump(data)


def _error(text: str) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite_text(text, "test.yaml")
    return str(info.value)


@pytest.mark.parametrize("name", ["tiny", "small_gpu", "7b_comparison", "7b_mistral"])
def test_shipped_suites_validate(name):
    suite = load_suite(name)
    assert suite.name and suite.iterations > 0


def test_bare_name_and_path_give_the_same_suite():
    assert load_suite("tiny") == load_suite(SUITES_DIR / "tiny.yaml")


def test_unknown_top_level_key_has_did_you_mean():
    text = TINY.replace("shared:", "shraed:", 1)
    message = _error(text)
    assert "shraed: unknown key; did you mean 'shared'?" in message


def test_unknown_nested_key_has_did_you_mean():
    message = _error(_with(lambda d: d["shared"].update(learnig_rate=1.0)))
    assert "shared.learnig_rate: unknown key; did you mean 'learning_rate'?" in message


def test_wrong_type_names_the_field_and_value():
    message = _error(_with(lambda d: d["shared"].update(rollout_batch_size="many")))
    assert "shared.rollout_batch_size" in message and "'many'" in message


def test_missing_model():
    message = _error(_with(lambda d: d["models"].pop("policy")))
    assert "models.policy: a model is required" in message


def test_negative_length():
    message = _error(_with(lambda d: d["shared"].update(max_response_length=-4)))
    assert "shared.max_response_length" in message and "greater than 0" in message and "-4" in message


def test_algorithm_block_cannot_override_shared():
    message = _error(_with(lambda d: d["ppo"].update(learning_rate=1e-5)))
    assert message == (
        "ppo.learning_rate: cannot override shared.learning_rate in an algorithm block; that would break the "
        "matched comparison (set it in shared: for all algorithms)"
    )


def test_exactly_one_budget():
    assert "exactly one of shared.iterations and shared.token_budget" in _error(
        _with(lambda d: d["shared"].update(token_budget=1000))
    )
    assert "exactly one of" in _error(_with(lambda d: d["shared"].pop("iterations")))


def test_token_budget_becomes_iterations():
    # 10_000 tokens / (32 prompts * 24 tokens) = 13.02 -> 14 iterations
    suite = load_suite_text(_with(lambda d: (d["shared"].pop("iterations"), d["shared"].update(token_budget=10_000))))
    assert suite.iterations == 14


def test_yaml_syntax_error_names_the_line():
    message = _error("name: x\nmodels: [unclosed\n")
    assert "not valid YAML at line 3" in message


def test_top_level_must_be_a_mapping():
    assert "top level must be a mapping" in _error("- a\n- b\n")


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "none.yaml")


def test_judge_needs_model_and_gold_needs_synthetic():
    assert "needs eval.judge.model" in _error(_with(lambda d: d["eval"].update(judge={"type": "openai"})))
    message = _error(_with(lambda d: d["data"].update(eval_prompts="my/prompts.jsonl")))
    assert "'gold' scores the synthetic task only" in message


def test_config_hash_is_stable_and_tracks_values():
    a, b = load_suite("tiny"), load_suite("tiny")
    assert a.config_hash() == b.config_hash()
    changed = load_suite_text(_with(lambda d: d["shared"].update(kl_coef=0.1)))
    assert changed.config_hash() != a.config_hash()


def test_algorithm_config_merges_shared():
    suite = load_suite("tiny")
    merged = suite.algorithm_config("ppo")
    assert merged["learning_rate"] == suite.shared.learning_rate and merged["clip_range"] == suite.ppo.clip_range
