import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from remax_bench.core.models import (
    ModelSpecError,
    build_tiny_model,
    byte_tokenizer,
    count_parameters,
    format_prompt,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    prepare_tokenizer,
    save_pretrained,
    tiny_config,
)


def test_byte_tokenizer_is_one_token_per_byte_and_round_trips():
    tok = byte_tokenizer()
    text = "abc é"  # é is two UTF-8 bytes
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) == 6
    assert tok.decode(ids) == text
    assert len(tok) == 256 + 6
    assert tok.padding_side == "left" and tok.pad_token == "<|pad|>" and tok.eos_token == "<|eos|>"


def test_chat_template_marks_roles_and_ends_assistant_turns_with_eos():
    tok = byte_tokenizer()
    assert format_prompt(tok, "Reverse: abc") == "<|user|>Reverse: abc<|assistant|>"
    two_turns = tok.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert two_turns == "<|user|>a<|assistant|>b<|eos|><|user|>c<|assistant|>"
    # Role markers are single special tokens, not spelled out byte by byte.
    assert len(tok("<|user|>", add_special_tokens=False)["input_ids"]) == 1


def test_tiny_spec_presets_and_overrides():
    config = tiny_config("tiny:micro,num_hidden_layers=2,tie_word_embeddings=true")
    assert config.hidden_size == 128 and config.num_hidden_layers == 2 and config.tie_word_embeddings
    assert config.vocab_size == 262 and config.pad_token_id == byte_tokenizer().pad_token_id
    with pytest.raises(ModelSpecError, match="unknown tiny preset 'huge'"):
        tiny_config("tiny:huge")
    with pytest.raises(ModelSpecError, match="LlamaConfig field"):
        tiny_config("tiny:nano,not_a_field=3")


def test_tiny_model_is_seeded():
    a, _ = build_tiny_model("tiny:nano", seed=1)
    b, _ = build_tiny_model("tiny:nano", seed=1)
    c, _ = build_tiny_model("tiny:nano", seed=2)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_model_saves_as_a_standard_hf_directory(tmp_path):
    model, tok = build_tiny_model("tiny:nano", seed=0)
    save_pretrained(model, tok, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits)
    assert format_prompt(loaded_tok, "x") == format_prompt(tok, "x")
    assert loaded_tok("héllo", add_special_tokens=False)["input_ids"] == tok("héllo", add_special_tokens=False)["input_ids"]
    # The same loaders take the directory, as they would take a hub id.
    assert count_parameters(load_causal_lm(str(tmp_path / "ckpt"))) == count_parameters(model)
    assert load_tokenizer(str(tmp_path / "ckpt")).padding_side == "left"


def test_reward_model_from_causal_checkpoint_and_back(tmp_path):
    model, tok = build_tiny_model("tiny:nano", seed=0)
    save_pretrained(model, tok, tmp_path / "sft")
    rm = load_reward_model(str(tmp_path / "sft"), seed=0, new_head=True)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    # The body is the SFT model's.
    assert torch.equal(rm.model.embed_tokens.weight, model.model.embed_tokens.weight)
    save_pretrained(rm, tok, tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    batch = tok(["ab", "abcd"], return_tensors="pt", padding=True)
    assert torch.allclose(rm(**batch).logits, again(**batch).logits)
    assert rm(**batch).logits.shape == (2, 1)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSpecError, match="could not load model"):
        load_causal_lm(str(tmp_path / "nowhere"))


def test_tokenizer_without_pad_gets_eos_and_without_either_is_an_error():
    tok = byte_tokenizer()
    tok.pad_token = None
    assert prepare_tokenizer(tok).pad_token == "<|eos|>"
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ModelSpecError, match="neither a pad nor an eos token"):
        prepare_tokenizer(tok)
