"""The path real hub checkpoints take, on stand-ins with their properties: weights saved in bf16 / fp16, a
tokenizer that adds a BOS, reward models with their own head class. Trained models must hold fp32 master
weights, every prompt must start with exactly one BOS, and a checkpoint without a reward head must never
score with a random one."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from remax_bench.core.models import (
    ModelSpecError,
    format_prompt,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_pretrained,
    tokenize_prompts,
)
from remax_bench.core.stage import stage_main
from remax_bench.core.suite_file import load_suite_text
from trainers import online, sft
from trainers.engine import TorchEngine, build_engine
from trainers.sequences import encode_pairs, generate

FIXTURES = Path(__file__).parent / "fixtures"
NANO = FIXTURES / "nano.yaml"
sys.path.insert(0, str(FIXTURES))
from real_checkpoints import (  # noqa: E402
    MISTRAL_STYLE_TEMPLATE,
    llama_style_tokenizer,
    save_llama,
    save_mistral_reward_model,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("real")
    plain, templated = llama_style_tokenizer(), llama_style_tokenizer(MISTRAL_STYLE_TEMPLATE)
    return {
        "bf16": save_llama(root / "llama-bf16", torch.bfloat16, plain),
        "fp16": save_llama(root / "llama-fp16", torch.float16, plain),
        "bf16-template": save_llama(root / "mistral-style-bf16", torch.bfloat16, templated),
        "rm": save_mistral_reward_model(root / "rm-mistral", torch.bfloat16, templated),
        "root": root,
    }


@pytest.mark.parametrize("saved", ["bf16", "fp16"])
def test_trained_models_hold_fp32_master_weights_and_optimizer_states(checkpoints, saved):
    path = checkpoints[saved]
    assert json.loads((path / "config.json").read_text())["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[saved]
    model = load_causal_lm(str(path))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    engine = TorchEngine(model, learning_rate=1e-6)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    engine.step(model(input_ids=ids, labels=ids).loss)
    states = [t for state in engine.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert states and {t.dtype for t in states} == {torch.float32}
    # Frozen models load in the suite's precision instead.
    assert {p.dtype for p in load_causal_lm(str(path), precision="bf16").parameters()} == {torch.bfloat16}


def _layer_forwards(model: torch.nn.Module, gradient_checkpointing: bool) -> int:
    """How often the first decoder layer starts its forward in one training step through the engine a suite
    with shared.gradient_checkpointing builds (a checkpointed layer starts it again in the backward pass,
    stopping once its saved tensors are back)."""
    engine = build_engine(model, 1e-3, _suite(gradient_checkpointing=gradient_checkpointing), batch_size=1)
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.tensor([[1, 5, 9, 12, 7, 8]])
    engine.step(model(input_ids=ids, labels=ids, use_cache=False).loss)
    return len(calls)


def test_gradient_checkpointing_recomputes_on_a_checkpoint_loaded_from_disk(checkpoints):
    # from_pretrained returns its model in eval mode, where transformers skips checkpointing silently: the
    # engine puts what it trains in train mode, so the backward pass runs each layer's forward again.
    assert not load_causal_lm(str(checkpoints["bf16"])).training
    assert _layer_forwards(load_causal_lm(str(checkpoints["bf16"])), gradient_checkpointing=False) == 1
    assert _layer_forwards(load_causal_lm(str(checkpoints["bf16"])), gradient_checkpointing=True) == 2


def test_rl_policies_train_without_dropout_and_with_the_fused_adamw(checkpoints):
    from trainers.engine import without_dropout

    model = load_causal_lm(str(checkpoints["bf16"]))
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.model.embed_tokens = torch.nn.Sequential(model.model.embed_tokens, torch.nn.Dropout(0.5))
    engine = TorchEngine(without_dropout(model), learning_rate=1e-3)
    assert model.training and {layer.self_attn.attention_dropout for layer in model.model.layers} == {0.0}
    ids = torch.tensor([[1, 5, 9, 12, 7, 8]])
    with torch.no_grad():  # train mode and no dropout: two forwards give the same log-probs
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert engine.optimizer.defaults["fused"]
    # The fused kernel's step is AdamW's: one step at lr 1e-3 from zero states moves each weight by ~lr.
    before = [p.detach().clone() for p in model.parameters()]
    engine.step(model(input_ids=ids, labels=ids).loss)
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before) if p.grad is not None]
    assert moved and max(moved) == pytest.approx(1e-3, rel=1e-3)


def _changed_fraction(model: torch.nn.Module, lr: float) -> float:
    torch.manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = torch.randint(3, 300, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    touched = [p.grad != 0 for p in model.parameters()]  # embeddings of unseen tokens get no gradient
    optimizer.step()
    changed = sum(int(((p.detach() != b) & t).sum()) for p, b, t in zip(model.parameters(), before, touched))
    return changed / sum(int(t.sum()) for t in touched)


def test_a_step_at_lr_1e_6_moves_fp32_master_weights_where_bf16_weights_round_it_away(checkpoints):
    fp32 = _changed_fraction(load_causal_lm(str(checkpoints["bf16"])), lr=1e-6)
    bf16 = _changed_fraction(load_causal_lm(str(checkpoints["bf16"]), precision="bf16"), lr=1e-6)
    print(f"share of weights with a gradient changed by one AdamW step at lr 1e-6: fp32 master {fp32:.1%}, "
          f"bf16 weights {bf16:.1%}")
    assert fp32 > 0.95  # Adam's first step moves every weight that has a gradient by ~lr
    assert bf16 < 0.2  # most bf16 weights cannot represent a change of 1e-6 relative to their size


def test_prompts_start_with_exactly_one_bos(checkpoints):
    for key in ("bf16", "bf16-template"):  # plain layout (no BOS in the text) and a template that writes one
        tokenizer = load_tokenizer(str(checkpoints[key]))
        bos = tokenizer.bos_token_id
        texts = [format_prompt(tokenizer, "reverse the word 'abc'"), format_prompt(tokenizer, "sort 'cab'")]
        assert (texts[0].startswith("<s>")) == (key == "bf16-template")
        for ids in tokenize_prompts(tokenizer, texts):
            assert ids[0] == bos and bos not in ids[1:], key
        # SFT, DPO and the reward model encode (prompt, response) pairs; left padding goes before the BOS.
        batch = encode_pairs(tokenizer, ["reverse the word 'abc'", "sort 'cab'"], ["cba", "abc"], 64, 8)
        for row, mask in zip(batch.input_ids, batch.attention_mask):
            prompt = row[: batch.prompt_width][mask[: batch.prompt_width].bool()]
            assert prompt[0] == bos and (prompt == bos).sum() == 1, key
        # Rollouts: the prompt part of what generate() returns.
        model = load_causal_lm(str(checkpoints[key])).eval()
        out = generate(model, tokenizer, ["reverse the word 'abc'"], 64, 4, greedy=True)
        prompt = out.input_ids[0, : out.prompt_width][out.attention_mask[0, : out.prompt_width].bool()]
        assert prompt[0] == bos and (prompt == bos).sum() == 1, key


def test_evaluation_and_the_reward_judge_see_one_bos(checkpoints):
    from remax_bench.evaluation.generation import GenerationSettings, HFGenerator
    from remax_bench.evaluation.judges import RewardModelJudge

    path = str(checkpoints["bf16"])
    generator = HFGenerator(path, GenerationSettings(max_new_tokens=4, temperature=0.0, top_p=1.0, batch_size=2))
    assert generator.record["dtype"] == "torch.float32"  # a bf16 checkpoint on the CPU generates in fp32
    bos = generator.tokenizer.bos_token_id
    for ids in generator._encode(generator.prompts([[{"role": "user", "content": "reverse 'abc'"}]])):
        assert ids[0] == bos and bos not in ids[1:]
    judge = RewardModelJudge(str(checkpoints["rm"]), batch_size=2)
    seen = []
    judge._load()
    judge.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"]),
                                          with_kwargs=True)
    judge.scores([[{"role": "user", "content": "reverse 'abc'"}]], ["cba"])
    mask = seen[0] != judge.tokenizer.pad_token_id
    assert (seen[0][mask] == judge.tokenizer.bos_token_id).sum() == 1


def test_reward_heads_load_from_their_checkpoint_and_are_never_made_up(checkpoints, tmp_path):
    rm = load_reward_model(str(checkpoints["rm"]))
    saved = load_reward_model(str(checkpoints["rm"]), precision="bf16")
    assert type(rm).__name__ == "MistralForSequenceClassification" and rm.score.weight.dtype == torch.float32
    assert torch.equal(rm.score.weight.to(torch.bfloat16), saved.score.weight)  # the trained head, not a new one
    # A plain causal LM as critic, frozen reward or judge: a clear error naming the checkpoint.
    with pytest.raises(ModelSpecError, match=r"llama-bf16.*no reward head.*score\.weight"):
        load_reward_model(str(checkpoints["bf16"]))
    with pytest.raises(ModelSpecError, match="no trained reward head"):
        load_reward_model("tiny:nano")
    # The reward-model stage alone starts a fresh head on a causal LM's body, seeded.
    a = load_reward_model(str(checkpoints["bf16"]), seed=3, new_head=True)
    b = load_reward_model(str(checkpoints["bf16"]), seed=3, new_head=True)
    assert torch.equal(a.score.weight, b.score.weight)


def _suite(**shared):
    data = yaml.safe_load(NANO.read_text())
    data["shared"].update(shared)
    return load_suite_text(yaml.safe_dump(data))


def test_sft_on_a_bf16_checkpoint_trains_fp32_and_says_so(checkpoints, tmp_path):
    data = yaml.safe_load(NANO.read_text())
    data["models"]["policy"] = str(checkpoints["bf16"])
    suite = load_suite_text(yaml.safe_dump(data))
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"stage": "sft", "seed": 0, "suite": suite.resolved(), "inputs": {}}))
    out = tmp_path / "sft" / "seed0"
    assert stage_main("sft", sft.train, ["--config", str(config), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_dtypes"] == {"policy": "float32"}
    assert {p.dtype for p in load_causal_lm(str(out / "checkpoint")).parameters()} == {torch.float32}


def test_a_bf16_suite_trains_fp32_weights_under_autocast_with_frozen_models_in_bf16(checkpoints, tmp_path,
                                                                                     monkeypatch):
    suite = _suite(precision="bf16", iterations=2)
    policy_dir, rm_dir = tmp_path / "sft", tmp_path / "rm"
    save_pretrained(load_causal_lm(str(checkpoints["bf16"])), load_tokenizer(str(checkpoints["bf16"])), policy_dir)
    save_pretrained(load_reward_model(str(policy_dir), seed=1, new_head=True), load_tokenizer(str(policy_dir)), rm_dir)
    autocast_dtypes = []
    real_forward = online.forward_logits

    def spy(model, batch):
        autocast_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real_forward(model, batch)

    monkeypatch.setattr(online, "forward_logits", spy)
    config = tmp_path / "remax.json"
    config.write_text(json.dumps({"stage": "remax", "seed": 0, "suite": suite.resolved(),
                                  "inputs": {"sft": str(policy_dir), "reward_model": str(rm_dir)},
                                  "skip_heldout": True}))
    out = tmp_path / "remax" / "seed0"
    assert stage_main("remax", online.train, ["--config", str(config), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_dtypes"] == {"policy": "float32", "reference": "bfloat16", "reward": "bfloat16"}
    assert {p.dtype for p in load_causal_lm(str(out / "checkpoint")).parameters()} == {torch.float32}
    assert autocast_dtypes == [torch.bfloat16, torch.bfloat16]  # each training forward ran under bf16 autocast
