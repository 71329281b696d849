"""Model shapes for the memory estimator: a Llama-family decoder's dimensions and parameter count, from a
published config (``KNOWN_MODELS``), a raw size (``7b``), a tiny: spec, a local directory or a hub id."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class EstimateError(ValueError):
    """A model spec or an input the estimator cannot use."""


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-family decoder (RMSNorm, RoPE, gated MLP, optional GQA)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    num_kv_heads: int | None = None  # None: multi-head attention (kv heads = heads)
    head_dim: int | None = None  # None: hidden_size // num_heads
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_params(self) -> int:
        h, d = self.hidden_size, self.dim_per_head
        q, kv = self.num_heads * d, self.kv_heads * d
        attention = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attention += q + 2 * kv
        if self.o_bias:
            attention += h
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + h
        return attention + mlp + 2 * h  # two RMSNorm weights

    def num_params(self, head: str = "lm") -> int:
        """Parameters of the causal LM (``head="lm"``) or of a scalar-head reward/value model (``"scalar"``)."""
        h = self.hidden_size
        body = self.vocab_size * h + self.num_layers * self.layer_params() + h  # embeddings, layers, final norm
        if head == "lm":
            return body + (0 if self.tie_word_embeddings else self.vocab_size * h)
        if head == "scalar":
            return body + h  # score: Linear(h, 1, bias=False) as in LlamaForSequenceClassification
        raise EstimateError(f"head must be 'lm' or 'scalar'; got {head!r}")


# Shapes from the models' published config.json files.
KNOWN_MODELS: dict[str, ModelShape] = {
    "llama-2-7b": ModelShape("Llama-2-7b", 4096, 32, 32, 11008, 32000),
    "llama-2-13b": ModelShape("Llama-2-13b", 5120, 40, 40, 13824, 32000),
    "mistral-7b": ModelShape("Mistral-7B", 4096, 32, 32, 14336, 32000, num_kv_heads=8),
    "llama-3-8b": ModelShape("Llama-3-8B", 4096, 32, 32, 14336, 128256, num_kv_heads=8),
    "qwen2.5-0.5b": ModelShape("Qwen2.5-0.5B", 896, 24, 14, 4864, 151936, num_kv_heads=2,
                               tie_word_embeddings=True, qkv_bias=True),
    "qwen2.5-1.5b": ModelShape("Qwen2.5-1.5B", 1536, 28, 12, 8960, 151936, num_kv_heads=2,
                               tie_word_embeddings=True, qkv_bias=True),
}
_KNOWN_SUFFIXES = ("-hf", "-chat", "-instruct", "-v0.1", "-v0.2", "-v0.3", "-base")


def _known_key(spec: str) -> str | None:
    name = spec.strip().lower().split("/")[-1]
    name = name.replace("meta-llama-3", "llama-3")
    changed = True
    while changed:
        changed = False
        for suffix in _KNOWN_SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name if name in KNOWN_MODELS else None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mb])\s*$", re.IGNORECASE)


def shape_for_size(n_params: float, vocab_size: int = 32000) -> ModelShape:
    """A plausible Llama-style shape for a raw size such as ``7b`` or ``125m``.

    Rule: Llama's aspect ratio (hidden / layers = 128, as in Llama-2-7B and -13B), head size 64 below a hidden
    size of 2048 and 128 from there on, gated MLP of width 8h/3 rounded up to a multiple of 256, untied
    embeddings with the Llama-2 vocabulary (32000). The hidden size is the one whose parameter count is nearest
    to the target among multiples of 64 (below 1024), 256 (below 4096) and 512 (from 4096): nominal sizes are
    loose, so ``7b`` and ``13b`` land on Llama-2-7B's and -13B's shapes (6.74B, 13.0B).
    """
    best: tuple[float, ModelShape] | None = None
    widths = [*range(64, 1024, 64), *range(1024, 4096, 256), *range(4096, 32768 + 1, 512)]
    for h in widths:
        head_dim = 64 if h < 2048 else 128
        shape = ModelShape(
            name=f"{_format_count(n_params)} (derived)",
            hidden_size=h,
            num_layers=max(1, round(h / 128)),
            num_heads=max(1, h // head_dim),
            intermediate_size=256 * math.ceil(8 * h / 3 / 256),
            vocab_size=vocab_size,
        )
        error = abs(shape.num_params() - n_params) / n_params
        if best is None or error < best[0]:
            best = (error, shape)
    assert best is not None
    return best[1]


def _format_count(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def shape_from_config(config: Any, name: str | None = None) -> ModelShape:
    """A ModelShape from a transformers config (object or dict)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type", "") or ""
    heads = int(get("num_attention_heads"))
    return ModelShape(
        name=name or get("_name_or_path", None) or model_type or "model",
        hidden_size=int(get("hidden_size")),
        num_layers=int(get("num_hidden_layers")),
        num_heads=heads,
        intermediate_size=int(get("intermediate_size")),
        vocab_size=int(get("vocab_size")),
        num_kv_heads=int(get("num_key_value_heads", None) or heads),
        head_dim=get("head_dim", None),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=bool(get("attention_bias", False)) or model_type == "qwen2",
        o_bias=bool(get("attention_bias", False)),
        mlp_bias=bool(get("mlp_bias", False)),
    )


def resolve_model(model: Any) -> ModelShape:
    """A ModelShape from: a ModelShape, a transformers config, a dict, or a string spec.

    String specs: ``tiny:<preset>[,k=v]`` (remax_bench.core.models.tiny_config), a known name (``Llama-2-7b``,
    ``meta-llama/Llama-2-7b-hf``, ``Mistral-7B``, ``Qwen2.5-0.5B``, ...), a raw size (``7b``, ``125m``), or a
    local directory / HF id read with ``AutoConfig.from_pretrained`` (works offline for local directories and
    cached ids).
    """
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, dict):
        return shape_from_config(model)
    if not isinstance(model, (str, Path)):
        return shape_from_config(model)
    spec = str(model)
    from remax_bench.core.models import is_tiny_spec

    if is_tiny_spec(spec):
        from remax_bench.core.models import ModelSpecError, tiny_config

        try:
            return shape_from_config(tiny_config(spec), name=spec)
        except ModelSpecError as err:
            raise EstimateError(str(err)) from err
    if Path(spec).is_dir():
        from transformers import AutoConfig

        return shape_from_config(AutoConfig.from_pretrained(spec), name=spec)
    key = _known_key(spec)
    if key is not None:
        return replace(KNOWN_MODELS[key], name=spec)
    size = _SIZE.match(spec)
    if size:
        return shape_for_size(float(size.group(1)) * (1e9 if size.group(2).lower() == "b" else 1e6))
    try:
        from transformers import AutoConfig

        return shape_from_config(AutoConfig.from_pretrained(spec), name=spec)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, or not a decoder config
        known = ", ".join(m.name for m in KNOWN_MODELS.values())
        raise EstimateError(
            f"cannot get a config for model {spec!r} ({type(err).__name__}: {err}). Give a local model directory, "
            f"a tiny: spec, a raw size like 7b or 125m, or a known model: {known}"
        ) from err
