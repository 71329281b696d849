"""Checks that need no training: run by `validate` and at the start of `run`, before any stage starts.

Each finds something that would otherwise fail a stage late (after earlier stages trained, or after a
minute of network retries): a data file that is not there, an unknown tiny preset or a model that cannot
be found, ``device: cuda`` on a machine without one, a judge whose API key is not set, a tracker whose
library is not installed. One line each.
"""

from __future__ import annotations

import os
from pathlib import Path

from remax_bench.core import algorithms
from remax_bench.core.config import Suite
from remax_bench.core.trackers import missing_packages

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
NAMED_SOURCES = ("synthetic", "default")


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in DATA_SUFFIXES


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _model_problem(field: str, spec: str) -> str | None:
    from remax_bench.core.models import TINY_PREFIX, ModelSpecError, tiny_config

    if spec.startswith(TINY_PREFIX):
        try:
            tiny_config(spec)
        except ModelSpecError as err:
            return f"{field}: {err}"
        return None
    path = Path(spec).expanduser()
    if path.exists():
        return None if (path / "config.json").is_file() else f"{field}: {spec} has no config.json (not a model directory)"
    if _looks_local(spec) or len(spec.split("/")) > 2:
        return f"{field}: model directory {spec} not found"
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return (f"{field}: {spec!r} is neither a local directory nor in the Hugging Face cache, and the hub "
                    "is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)")
    return None


def problems(suite: Suite, stages: list[str] | None = None) -> list[str]:
    """What would stop the planned stages (all of the suite's when ``stages`` is None), one line each."""
    wanted = set(stages) if stages is not None else None
    known = {"sft", "reward_model", "ppo", "remax", "dpo", "eval"}

    def planned(*names: str) -> bool:
        # A stage this list does not know (a newer algorithm) is assumed to read everything.
        return wanted is None or bool(wanted & set(names)) or bool(wanted - known)

    found: list[str] = []
    models = [("models.policy", suite.models.policy, ("sft", "reward_model", "ppo", "remax", "dpo", "eval"))]
    if suite.models.reward:
        models.append(("models.reward", suite.models.reward, ("reward_model",)))
    if suite.sft.path:
        models.append(("sft.path", suite.sft.path, ("reward_model", "ppo", "remax", "dpo", "eval")))
    if suite.reward_model.path:
        models.append(("reward_model.path", suite.reward_model.path, ("ppo", "remax", "eval")))
    for field, spec, users in models:
        if planned(*users):
            problem = _model_problem(field, spec)
            if problem:
                found.append(problem)

    readers = {"sft": ("sft",), "preferences": ("reward_model", "dpo"), "prompts": ("ppo", "remax"),
               "eval_prompts": ("sft", "ppo", "remax", "dpo")}
    for name, users in readers.items():
        src = getattr(suite.data, name)
        if src is not None and planned(*users) and _looks_local(src.source):
            if not Path(src.source).expanduser().is_file():
                found.append(f"data.{name}.source: data file {src.source} not found")

    if suite.eval.enabled and planned("eval"):
        ev = suite.eval
        files = []
        if ev.alpaca_eval.enabled:
            files.append(("eval.alpaca_eval.prompts", ev.alpaca_eval.prompts))
        if ev.mt_bench.enabled:
            files += [("eval.mt_bench.questions", ev.mt_bench.questions),
                      ("eval.mt_bench.judge_prompts", ev.mt_bench.judge_prompts)]
        for field, source in files:
            if source not in NAMED_SOURCES and not Path(source).expanduser().is_file():
                found.append(f"{field}: {source} not found")
        if ev.judge.type == "openai" and not os.environ.get(ev.judge.api_key_env):
            found.append(f"eval.judge.api_key_env: the environment variable {ev.judge.api_key_env} is not set "
                         "(the openai judge reads its API key from it)")

    online = [name for name in suite.enabled_algorithms() if algorithms.get(name).online]
    if suite.shared.rollout_backend == "vllm" and online and planned(*online):
        from remax_bench.evaluation.generation import cuda_available, vllm_available, vllm_is_cpu_build

        if not vllm_available():
            found.append("shared.rollout_backend: 'vllm' but the vllm package is not installed (`make install` puts "
                         "its CPU build on CPU-only machines, the 'gpu' extra the CUDA build); or set it to 'hf'")
        elif not (vllm_is_cpu_build() or cuda_available()):
            found.append("shared.rollout_backend: 'vllm' with the CUDA build of vllm but no CUDA device here")

    if suite.runtime.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            found.append("runtime.device: 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return found + missing_packages(suite.runtime.trackers)
