"""The analytical memory model: parameter counts, per-component bytes by hand, algorithms, measured vs estimated."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from remax_bench.estimate import (
    GIB,
    EstimateInputs,
    compare_measured,
    estimate,
    estimate_table,
    format_estimate,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_bytes,
    paper_inputs,
    remax_saving,
    training_activation_bytes,
)
from remax_bench.model_shapes import KNOWN_MODELS, EstimateError, ModelShape, resolve_model

# A shape small enough to count by hand: h=64, 2 layers, 4 heads (head_dim 16), MLP 128, vocab 100.
#   layer: attention 4*64*64 = 16384, MLP 3*64*128 = 24576, norms 2*64 = 128 -> 41088; x2 = 82176
#   LM: + embeddings 6400 + final norm 64 + lm_head 6400 = 95040; scalar head: + 64 instead of lm_head = 88704
SMALL = ModelShape("small", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=100)
P_LM, P_RM = 95040, 88704


def small_inputs(**kw) -> EstimateInputs:
    values = dict(prompt_length=8, response_length=8, rollout_batch_per_gpu=2, train_batch_per_gpu=2,
                  precision="bf16", gradient_checkpointing=True, zero_stage=0, num_gpus=1)
    values.update(kw)
    return EstimateInputs(**values)


def states(est, model):
    return est.state_bytes()[model]


# -- parameter counts -------------------------------------------------------------------------------------
def test_hand_counted_small_shape():
    assert SMALL.num_params("lm") == P_LM
    assert SMALL.num_params("scalar") == P_RM


@pytest.mark.parametrize("name, published", [("Llama-2-7b", 6.74e9), ("Mistral-7B", 7.24e9),
                                             ("Llama-2-13b", 13.0e9), ("Qwen2.5-0.5B", 0.494e9),
                                             ("Qwen2.5-1.5B", 1.54e9)])
def test_known_models_match_published_counts(name, published):
    assert resolve_model(name).num_params() == pytest.approx(published, rel=0.01)


def test_llama2_7b_count_is_exact():
    # 32000*4096*2 (embeddings, lm_head) + 32*(4*4096^2 + 3*4096*11008 + 2*4096) + 4096
    assert KNOWN_MODELS["llama-2-7b"].num_params() == 6_738_415_616
    assert resolve_model("meta-llama/Llama-2-7b-hf").num_params() == 6_738_415_616


def _hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_counts_match_real_transformers_models():
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    gqa = MistralConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=48)
    assert resolve_model(gqa).num_params() == _hf_count(MistralForCausalLM(gqa))
    tied_bias = Qwen2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=True)
    assert resolve_model(tied_bias).num_params() == _hf_count(Qwen2ForCausalLM(tied_bias))
    scalar = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, num_labels=1)
    assert resolve_model(scalar).num_params("scalar") == _hf_count(LlamaForSequenceClassification(scalar))


def test_tiny_spec_counts_the_built_model():
    from remax_bench.core.models import build_tiny_model

    model, _ = build_tiny_model("tiny:nano,num_hidden_layers=3", seed=0)
    assert resolve_model("tiny:nano,num_hidden_layers=3").num_params() == _hf_count(model)


def test_raw_sizes_and_local_config_dir(tmp_path):
    seven = resolve_model("7b")
    assert (seven.hidden_size, seven.num_layers, seven.intermediate_size) == (4096, 32, 11008)
    assert resolve_model("125m").num_params() == pytest.approx(125e6, rel=0.1)
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=77, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=96).save_pretrained(tmp_path)
    shape = resolve_model(str(tmp_path))
    assert (shape.vocab_size, shape.num_layers, shape.hidden_size) == (77, 3, 48)


def test_unknown_model_says_what_works():
    with pytest.raises(EstimateError, match="known model"):
        resolve_model("./no/such/model dir")  # not a directory, not a valid hub id: fails without a download


# -- components by hand -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, params, grads, optimizer", [
    (0, 2 * P_LM, 2 * P_LM, 12 * P_LM),
    (1, 2 * P_LM, 2 * P_LM, 12 * P_LM // 4),
    (2, 2 * P_LM, 2 * P_LM // 4, 12 * P_LM // 4),
    (3, 2 * P_LM // 4, 2 * P_LM // 4, 12 * P_LM // 4),
])
def test_zero_stages_partition_states(stage, params, grads, optimizer):
    est = estimate(SMALL, small_inputs(zero_stage=stage, num_gpus=4), "sft")
    assert states(est, "policy") == {"params": params, "grads": grads, "optimizer": optimizer}
    assert est.cpu_bytes == 0


def test_fp32_and_torch_engine_are_4_4_8():
    for inputs in (small_inputs(precision="fp32"), small_inputs(engine="torch")):
        assert states(estimate(SMALL, inputs, "sft"), "policy") == {
            "params": 4 * P_LM, "grads": 4 * P_LM, "optimizer": 8 * P_LM}


def test_offload_moves_states_to_cpu():
    est = estimate(SMALL, small_inputs(zero_stage=3, num_gpus=4, offload_optimizer=True, offload_params=True), "sft")
    by_kind = {c.kind: c for c in est.components if c.phase == "states"}
    assert (by_kind["params"].gpu_bytes, by_kind["params"].cpu_bytes) == (0, 2 * P_LM // 4)
    assert (by_kind["grads"].gpu_bytes, by_kind["grads"].cpu_bytes) == (0, 4 * P_LM // 4)  # fp32 partition
    assert (by_kind["optimizer"].gpu_bytes, by_kind["optimizer"].cpu_bytes) == (0, 12 * P_LM // 4)
    assert est.state_gpu_bytes == 0 and est.cpu_bytes == (2 + 4 + 12) * P_LM // 4
    with pytest.raises(EstimateError, match="offload_params needs zero_stage 3"):
        small_inputs(zero_stage=2, offload_params=True)


def test_activation_logit_and_kv_formulas():
    inputs = small_inputs()  # s = 16, b = 2
    # Korthikanti: s*b*h*34 + 5*a*s^2*b = 16*2*64*34 + 5*4*256*2
    assert layer_activation_bytes(SMALL, 16, 2, inputs) == 69632 + 10240
    assert layer_activation_bytes(SMALL, 16, 2, small_inputs(flash_attention=True)) == 69632
    assert layer_activation_bytes(SMALL, 16, 2, small_inputs(precision="fp32")) == 2 * 79872
    assert training_activation_bytes(SMALL, 16, 2, small_inputs(gradient_checkpointing=False)) == 2 * 79872
    # checkpointed: each layer's input (2*s*b*h) + one layer recomputed
    assert training_activation_bytes(SMALL, 16, 2, inputs) == 2 * (2 * 16 * 2 * 64) + 79872
    assert logits_bytes(SMALL, 16, 2, inputs) == 2 * 16 * 100 * (2 + 4)
    # K and V: 2 * layers * kv_heads * head_dim * tokens * batch * bytes
    assert kv_cache_bytes(SMALL, 16, 2, inputs) == 2 * 2 * 4 * 16 * 16 * 2 * 2
    mistral = resolve_model("Mistral-7B")  # 8 kv heads of 128: GQA shrinks the cache 4x against 32 heads
    assert kv_cache_bytes(mistral, 512, 8, inputs) == 2 * 32 * 8 * 128 * 512 * 8 * 2 == GIB // 2


# -- the algorithms ---------------------------------------------------------------------------------------
def test_ppo_minus_remax_states_is_the_critic():
    inputs = small_inputs()
    ppo, remax = estimate(SMALL, inputs, "ppo"), estimate(SMALL, inputs, "remax")
    assert set(ppo.state_bytes()) == {"policy", "critic", "reference", "reward"}
    assert set(remax.state_bytes()) == {"policy", "reference", "reward"}
    assert states(ppo, "critic") == {"params": 2 * P_RM, "grads": 2 * P_RM, "optimizer": 12 * P_RM}
    assert ppo.state_gpu_bytes - remax.state_gpu_bytes == 16 * P_RM
    assert states(remax, "reference") == {"params": 2 * P_LM, "grads": 0, "optimizer": 0}


def test_remax_kv_cache_doubles_when_batched():
    def kv(est):
        return sum(c.gpu_bytes for c in est.components if c.kind == "kv_cache")

    inputs = small_inputs()
    assert kv(estimate(SMALL, inputs, "remax")) == 2 * kv(estimate(SMALL, inputs, "ppo")) == 2 * 16384
    assert kv(estimate(SMALL, small_inputs(remax_greedy_batched=False), "remax")) == 16384


def test_k_answers_per_prompt_scale_generation_unless_samples_are_held_equal():
    def kv(est):
        return sum(c.gpu_bytes for c in est.components if c.kind == "kv_cache")

    # small_inputs: 2 rollout rows per GPU -> PPO's cache is 16384 bytes for 2 sequences
    k = {"grpo": 4, "remax": 4}
    by_prompts = small_inputs(samples_per_prompt=k)
    assert kv(estimate(SMALL, by_prompts, "grpo")) == 4 * 16384  # 2 prompts x 4 answers
    assert kv(estimate(SMALL, by_prompts, "remax")) == 5 * 16384  # and one greedy answer per prompt
    by_samples = small_inputs(samples_per_prompt=k, rollout_batch_per_gpu=4, rollout_batch_unit="samples")
    assert kv(estimate(SMALL, by_samples, "grpo")) == 2 * 16384  # 4 answers: 1 prompt x 4
    assert kv(estimate(SMALL, by_samples, "reinforce")) == 2 * 16384  # 4 prompts x 1
    assert kv(estimate(SMALL, by_samples, "remax")) == 2 * 16384 + 16384 // 2  # 4 answers + 1 greedy


def test_estimate_inputs_read_k_from_the_suite():
    from remax_bench.core.suite_file import load_suite

    inputs = EstimateInputs.from_suite(load_suite("tiny_family"))
    assert inputs.rollout_batch_unit == "samples"
    assert inputs.samples_per_prompt == {"ppo": 1, "remax": 4, "reinforce": 1, "grpo": 4, "rloo": 4,
                                         "reinforce_pp": 4}


def test_phased_peak_by_hand():
    inputs = small_inputs()
    ppo = estimate(SMALL, inputs, "ppo")
    # PPO's largest phase: the policy's backward, checkpointed activations + logits (train batch 2, s 16).
    train_policy = 2 * (2 * 16 * 2 * 64) + 79872 + 2 * 16 * 100 * 6
    assert ppo.phase_bytes()["train:policy"] == train_policy
    assert ppo.peak_phase == "train:policy"
    frozen = 2 * P_LM + 2 * P_RM
    assert ppo.gpu_bytes == 16 * P_LM + 16 * P_RM + frozen + train_policy
    summed = estimate(SMALL, small_inputs(peak="sum"), "ppo")
    assert summed.gpu_bytes == ppo.state_gpu_bytes + sum(ppo.phase_bytes().values()) > ppo.gpu_bytes


def test_dpo_processes_chosen_and_rejected():
    inputs = small_inputs()
    dpo = estimate(SMALL, inputs, "dpo")
    train = {c.kind: c.gpu_bytes for c in dpo.components if c.phase == "train"}
    # batch 2 pairs -> 4 sequences of 16 tokens
    assert train["activations"] == training_activation_bytes(SMALL, 16, 4, inputs)
    assert train["logits"] == logits_bytes(SMALL, 16, 4, inputs)
    assert not any(c.kind == "kv_cache" for c in dpo.components)


def test_frozen_models_shard_under_zero3_or_on_request():
    replicated = estimate(SMALL, small_inputs(zero_stage=2, num_gpus=4), "remax")
    assert states(replicated, "reference")["params"] == 2 * P_LM
    sharded = estimate(SMALL, small_inputs(zero_stage=2, num_gpus=4, frozen_zero3=True), "remax")
    assert states(sharded, "reference")["params"] == 2 * P_LM // 4
    offloaded = estimate(SMALL, small_inputs(zero_stage=2, num_gpus=4, frozen_zero3=True, offload_frozen=True), "remax")
    assert offloaded.cpu_bytes == 2 * P_LM // 4 + 2 * P_RM // 4


def test_paper_setup_saves_about_46_percent():
    """ReMax paper (arXiv:2310.10505): ~46% less GPU memory than PPO on Llama-2-7B."""
    inputs = paper_inputs()
    ppo, remax = estimate("Llama-2-7b", inputs, "ppo"), estimate("Llama-2-7b", inputs, "remax")
    saving = remax_saving(ppo, remax)
    assert 0.43 < saving["saving_fraction"] < 0.49
    # PPO does not fit an 80 GB GPU once real overheads are added; ReMax does with room to spare.
    assert 65 * GIB < ppo.gpu_bytes < 80e9 and remax.gpu_bytes < 45 * GIB
    parts = saving["breakdown_bytes"]
    critic = states(ppo, "critic")
    assert parts["critic params"] + parts["critic grads"] + parts["critic optimizer"] == sum(critic.values())
    kv = [c.gpu_bytes for c in remax.components if c.kind == "kv_cache"][0]
    assert parts["policy kv_cache (generate)"] == -kv  # the greedy responses' cache is what ReMax pays extra
    assert sum(parts.values()) == saving["saving_bytes"]


def test_table_and_text():
    table = estimate_table(SMALL, small_inputs(), ["ppo", "remax", "dpo"])
    assert set(table["algorithm"]) == {"ppo", "remax", "dpo"}
    assert {"model", "kind", "phase", "gpu_bytes", "cpu_bytes", "in_peak"} <= set(table.columns)
    ppo_rows = table[table["algorithm"] == "ppo"]
    assert ppo_rows[ppo_rows["phase"] == "states"]["gpu_bytes"].sum() == estimate(SMALL, small_inputs(), "ppo").state_gpu_bytes
    text = format_estimate("Llama-2-7b", paper_inputs())
    assert "ReMax vs PPO: 45." in text and "critic optimizer" in text and "CPU, GiB per rank" in text


# -- inputs from a suite ----------------------------------------------------------------------------------
def _suite(enabled=True, **ds):
    shared = SimpleNamespace(max_prompt_length=128, max_response_length=64, rollout_batch_size=64,
                             train_batch_size=16, precision="bf16", gradient_checkpointing=True)
    deepspeed = SimpleNamespace(enabled=enabled, zero_stage=ds.get("zero_stage", 2),
                                offload_optimizer=ds.get("offload_optimizer", True), offload_params=False)
    return SimpleNamespace(shared=shared, runtime=SimpleNamespace(num_gpus=4, num_nodes=1, deepspeed=deepspeed))


def test_inputs_from_suite_split_batches_over_gpus():
    inputs = EstimateInputs.from_suite(_suite())
    assert (inputs.prompt_length, inputs.response_length, inputs.seq_len) == (128, 64, 192)
    assert (inputs.rollout_batch_per_gpu, inputs.train_batch_per_gpu, inputs.num_gpus) == (16, 4, 4)
    assert (inputs.engine, inputs.zero_stage, inputs.offload_optimizer) == ("deepspeed", 2, True)
    torch_run = EstimateInputs.from_suite(_suite(enabled=False), precision="fp32")
    assert (torch_run.engine, torch_run.num_gpus, torch_run.zero_stage, torch_run.rollout_batch_per_gpu) == (
        "torch", 1, 0, 64)
    assert torch_run.precision == "fp32"


def test_inputs_from_suite_place_the_frozen_models_as_the_trainers_do():
    assert not EstimateInputs.from_suite(_suite()).shard_frozen  # auto under ZeRO-2: replicated
    assert EstimateInputs.from_suite(_suite(zero_stage=3)).shard_frozen  # auto under ZeRO-3: sharded
    suite = _suite()
    suite.runtime.deepspeed.frozen_models = "zero3_offload"
    inputs = EstimateInputs.from_suite(suite)
    assert inputs.shard_frozen and inputs.offload_frozen
    config = pytest.importorskip("remax_bench.core.suite_file")
    paper = EstimateInputs.from_suite(config.load_suite("7b_comparison"))
    assert (paper.zero_stage, paper.shard_frozen, paper.offload_frozen) == (2, True, True)


def test_inputs_from_suite_use_the_trainers_split_rule():
    suite = _suite()
    suite.shared.train_batch_size = 18  # 4 ranks: 4.5 each; the trainers refuse it, so does the estimator
    with pytest.raises(EstimateError, match=r"shared.train_batch_size: .* split evenly over the 4 data-parallel"):
        EstimateInputs.from_suite(suite)


def test_inputs_from_the_tiny_suite():
    config = pytest.importorskip("remax_bench.core.suite_file")
    suite = config.load_suite("tiny")
    inputs = EstimateInputs.from_suite(suite)
    assert inputs.seq_len == suite.shared.max_prompt_length + suite.shared.max_response_length
    assert estimate(suite.models.policy, inputs, "remax").gpu_bytes > 0


# -- estimated vs measured --------------------------------------------------------------------------------
def test_compare_measured_against_real_model_states():
    """A tiny PPO's exact model states (torch engine, fp32) against the estimate."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from remax_bench.core.metrics import model_state_bytes
    from remax_bench.core.models import tiny_config

    spec = "tiny:nano"
    config = tiny_config(spec)
    config.num_labels = 1
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    critic = LlamaForSequenceClassification(config)
    reference = LlamaForCausalLM(config).requires_grad_(False)
    reward = LlamaForSequenceClassification(config).requires_grad_(False)
    measured = {}
    ids = torch.randint(0, config.vocab_size, (2, 6))
    for name, model in (("policy", policy), ("critic", critic)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        out = model(input_ids=ids)
        out.logits.float().mean().backward()
        optimizer.step()
        measured[name] = model_state_bytes(model, optimizer)
    measured["reference"] = model_state_bytes(reference)
    measured["reward"] = model_state_bytes(reward)
    est = estimate(spec, small_inputs(engine="torch", precision="fp32"), "ppo")
    summary = {"model_state_bytes": measured, "peak_memory_bytes": 2 * est.gpu_bytes,
               "memory_kind": "rss_above_baseline"}
    frame = compare_measured(est, summary).set_index(["model", "kind"])
    for model in ("policy", "critic", "reference", "reward"):
        assert frame.loc[(model, "params"), "rel_error"] == 0
    assert frame.loc[("policy", "grads"), "rel_error"] == 0
    # AdamW also keeps a 4-byte step counter per parameter tensor: a fraction of a percent at this size.
    assert abs(frame.loc[("policy", "optimizer"), "rel_error"]) < 0.01
    assert frame.loc[("policy", "optimizer"), "rel_error"] < 0
    assert frame.loc[("all", "peak (rss_above_baseline)"), "rel_error"] == pytest.approx(-0.5)


# -- command line -----------------------------------------------------------------------------------------
def test_cli_paper_and_csv(tmp_path):
    from remax_bench.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["estimate", "--paper"])
    assert result.exit_code == 0, result.output
    assert "ReMax vs PPO: 45." in result.output
    csv = tmp_path / "est.csv"
    result = runner.invoke(main, ["estimate", "--model", "tiny:nano", "--batch", "2", "--prompt-length", "8",
                                          "--response-length", "8", "--precision", "fp32", "--csv", str(csv),
                                          "--algorithms", "ppo,remax"])
    assert result.exit_code == 0, result.output
    assert csv.read_text().startswith("algorithm,model,kind,phase,gpu_bytes")
    bad = runner.invoke(main, ["estimate", "--model", "tiny:nope"])
    assert bad.exit_code != 0 and "unknown tiny preset" in bad.output
