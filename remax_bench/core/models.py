"""Model specs: a Hugging Face id or local directory, or a ``tiny:`` spec built from a config.

A ``tiny:`` model is a small Llama with random (seeded) weights and a byte-level tokenizer that needs no
download. It goes through exactly the same code as a hub model afterwards: it is saved as a normal HF
directory (weights, config, tokenizer, chat template) that the Auto classes load back.

Spec grammar: ``tiny:<preset>[,key=value...]``, for example ``tiny:micro`` or
``tiny:small,num_hidden_layers=4``. Keys are LlamaConfig fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

TINY_PREFIX = "tiny:"

# Shapes of the tiny presets; parameter counts are for the 262-token byte vocabulary.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),  # ~0.04M
    "micro": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),  # ~0.9M
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=768),  # ~5M
    "25m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1536),  # ~27M
    "100m": dict(hidden_size=768, num_hidden_layers=14, num_attention_heads=12, intermediate_size=2304),  # ~108M
}

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# One turn per role marker; an assistant turn ends with the eos token, which is what generation stops on.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% else %}<|assistant|>{{ message['content'] }}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ModelSpecError(ValueError):
    """A model spec that cannot be parsed or loaded."""


def is_tiny_spec(spec: str) -> bool:
    return str(spec).startswith(TINY_PREFIX)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def tiny_config(spec: str) -> LlamaConfig:
    """The LlamaConfig of a ``tiny:`` spec (no weights built)."""
    if not is_tiny_spec(spec):
        raise ModelSpecError(f"not a tiny spec: {spec!r} (expected 'tiny:<preset>[,key=value...]')")
    preset, *overrides = spec[len(TINY_PREFIX):].split(",")
    if preset not in TINY_PRESETS:
        raise ModelSpecError(f"unknown tiny preset {preset!r} in {spec!r}; choose one of {sorted(TINY_PRESETS)}")
    fields: dict[str, Any] = dict(TINY_PRESETS[preset])
    known = set(LlamaConfig().to_dict())
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ModelSpecError(f"bad tiny spec item {item!r} in {spec!r}: expected key=value with a LlamaConfig field")
        fields[key] = _parse_value(value.strip())
    tokenizer = byte_tokenizer()
    fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=fields.pop("max_position_embeddings", 512),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=fields.pop("tie_word_embeddings", False),
        **fields,
    )


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per UTF-8 byte, plus pad/bos/eos and chat role markers."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every byte stays its own token
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="left",
        **SPECIAL_TOKENS,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (generation and scoring put the response at the right edge) and a pad token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSpecError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token; "
                "give a tokenizer with a pad token"
            )
        # Common for Llama-family checkpoints; pad positions are always masked, so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(spec_or_path: str) -> PreTrainedTokenizerBase:
    if is_tiny_spec(spec_or_path):
        return byte_tokenizer()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec_or_path)
    except OSError as err:
        raise ModelSpecError(f"could not load tokenizer {spec_or_path!r}: {err}") from err
    return prepare_tokenizer(tokenizer)


def build_tiny_model(spec: str, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    config = tiny_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, byte_tokenizer()


# Trained models (policy, critic, reward-model trainee, SFT, DPO policy) always hold fp32 master weights, whatever
# the checkpoint's dtype: AdamW on bf16 weights loses most small updates (at lr 1e-6 a step rounds away in bf16)
# and fp16 would need loss scaling. bf16 enters only through autocast (StageRun.autocast). Frozen models
# (reference, reward, judges) load in the suite's precision. So "fp32" is the default of both loaders.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _dtype(precision: str) -> torch.dtype:
    try:
        return DTYPES[precision]
    except KeyError:
        raise ModelSpecError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}") from None


def load_causal_lm(spec_or_path: str, seed: int = 0, precision: str = "fp32"):
    """A causal LM from a tiny spec (built, seeded), an HF id or a local directory, in ``precision``."""
    if is_tiny_spec(spec_or_path):
        model, _ = build_tiny_model(spec_or_path, seed)
        return model.to(_dtype(precision))
    try:
        return AutoModelForCausalLM.from_pretrained(spec_or_path, dtype=_dtype(precision))
    except OSError as err:
        raise ModelSpecError(f"could not load model {spec_or_path!r}: {err}") from err


def load_reward_model(spec_or_path: str, seed: int = 0, precision: str = "fp32", new_head: bool = False):
    """A causal LM with a scalar head that reads the last non-pad token (Bradley-Terry reward model).

    ``new_head=True`` is for the reward-model stage only: from a causal-LM checkpoint (e.g. the SFT model) the
    body is reused and the head starts fresh (seeded). Everywhere else (critic, frozen reward, judge) a
    checkpoint without a trained head is an error: a random head gives random scores.
    """
    if is_tiny_spec(spec_or_path):
        if not new_head:
            raise ModelSpecError(f"{spec_or_path!r} is a fresh tiny model: it has no trained reward head; "
                                 "give a trained reward model (a checkpoint of the reward_model stage)")
        config = tiny_config(spec_or_path)
        config.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForSequenceClassification(config)
        return model.to(_dtype(precision))
    try:
        config = AutoConfig.from_pretrained(spec_or_path)
        config.num_labels = 1
        if config.pad_token_id is None:
            config.pad_token_id = prepare_tokenizer(AutoTokenizer.from_pretrained(spec_or_path)).pad_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the new head's init is seeded too
            model, info = AutoModelForSequenceClassification.from_pretrained(
                spec_or_path, config=config, dtype=_dtype(precision), output_loading_info=True,
            )
    except OSError as err:
        raise ModelSpecError(f"could not load reward model {spec_or_path!r}: {err}") from err
    head = getattr(model, "score", None)
    fresh = [k for k in info.get("missing_keys", []) if k.startswith("score.")]
    if fresh and not new_head:
        raise ModelSpecError(
            f"{spec_or_path!r} has no reward head ({', '.join(sorted(fresh))} not in the checkpoint): it is not a "
            "trained reward model, and a new head would score at random. Give a *ForSequenceClassification "
            "checkpoint with one output (or a reward_model stage's checkpoint)"
        )
    if head is None:
        raise ModelSpecError(f"{spec_or_path!r} loads as {type(model).__name__}, which has no `score` head")
    return model


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts a BOS in front of the text it encodes (Llama, Mistral: yes; GPT-2, Qwen: no)."""
    cached = getattr(tokenizer, "_remax_bench_adds_bos", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        ids = tokenizer("a", add_special_tokens=True)["input_ids"] if bos is not None else []
        cached = bool(ids) and ids[0] == bos
        tokenizer._remax_bench_adds_bos = cached
    return cached


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of formatted prompts as the model expects them: exactly one BOS where its tokenizer adds one.

    Chat templates of Llama-family checkpoints already write the BOS into the text, and encoding with special
    tokens would then give two; plain layouts and FastChat templates hold none, and encoding without special
    tokens would give none. So: encode without, and put the BOS in front only where it is missing.
    """
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if not tokenizer_adds_bos(tokenizer):
        return encoded
    bos = tokenizer.bos_token_id
    return [ids if ids[:1] == [bos] else [bos, *ids] for ids in encoded]


def save_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def format_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """One user turn in the model's chat template, ready for the assistant's answer."""
    return format_conversation(tokenizer, [{"role": "user", "content": instruction}])


def format_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    if tokenizer.chat_template is None:
        # Base checkpoints without a template: a plain, documented layout.
        text = "".join(
            f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n" for m in messages
        )
        return text + "Assistant:"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
