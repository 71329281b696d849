"""`make gpu-check`: PPO, ReMax, GRPO and DPO benched on one GPU at a realistic shape (suites/gpu_check.yaml).

    python -m remax_bench.gpu_check [--out reports/gpu_check.md]    # one CUDA GPU, a few minutes
    python -m remax_bench.gpu_check --dry                           # the same path on CPU at a tiny shape

It runs ``remax-bench bench``'s own path (each algorithm a stage in its own process, from the same initial
checkpoints) and writes the table: peak GPU memory (the allocator's peak), time per iteration with its generate /
score / train split, and ReMax against PPO. It needs only torch, transformers and the small packages the package
imports (pydantic, pyyaml, pandas, click, psutil): vLLM, DeepSpeed, AlpacaEval and FastChat are imported where
they are used, never on this path. Any failure (a stage that does not finish, no GPU) exits non-zero and says so
in the table's file too.

The dry mode is what the test suite runs, so the check cannot rot between GPU runs: the same suite, the same
stages and the same table at the tiny:nano shape, on CPU, with short answers and two iterations.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from remax_bench import comparison
from remax_bench.bench import bench_suite, prepare_initial_models, ratios, run_bench
from remax_bench.core import algorithms
from remax_bench.core.config import Suite
from remax_bench.core.suite_file import load_suite

SUITE = "gpu_check"
DRY = {"model": "tiny:nano", "device": "cpu", "max_prompt_length": 96, "max_response_length": 8,
       "rollout_batch_size": 4, "train_batch_size": 8, "iterations": 2}
# A chat model's system preamble, here to bring the short synthetic instructions to ~256 prompt tokens (bytes).
PREAMBLE = ("You are a careful assistant. Read the instruction below, work on it step by step, check every letter "
            "of your answer against the instruction, and reply with the answer alone, without any explanation. ")


def check_suite(dry: bool) -> tuple[Suite, str, str]:
    """(suite, model spec, device) of the check; the dry mode shrinks only sizes, never the path."""
    suite = load_suite(SUITE)
    if not dry:
        return suite, suite.models.policy, "cuda"
    data = suite.resolved()
    data["shared"].update({k: DRY[k] for k in ("max_prompt_length", "max_response_length", "rollout_batch_size",
                                               "train_batch_size", "iterations")})
    data["runtime"]["device"] = DRY["device"]
    return Suite.model_validate(data), DRY["model"], DRY["device"]


def preamble_for(suite: Suite) -> str:
    """The preamble cut so that the longest synthetic prompt still fits shared.max_prompt_length (byte tokens)."""
    room = suite.shared.max_prompt_length - 48  # role markers and the longest synthetic instruction (~40 bytes)
    return (PREAMBLE * (1 + room // len(PREAMBLE)))[:room].rstrip() + " "


def with_system_preamble(model_dir: str, preamble: str) -> None:
    """The saved tokenizer's chat template opens every conversation with the system preamble."""
    from remax_bench.core.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    if tokenizer.chat_template.startswith("<|system|>"):
        return
    tokenizer.chat_template = "<|system|>" + preamble + tokenizer.chat_template
    tokenizer.save_pretrained(model_dir)


def answers(suite: Suite, names: list[str]) -> str:
    """What each online algorithm generates per prompt: k sampled answers, and a greedy one where it needs it."""
    parts = []
    for name in algorithms.online(names):
        greedy = " + 1 greedy" if algorithms.get(name).greedy_baseline else ""
        parts.append(f"{algorithms.label(name)} {suite.samples_per_prompt(name)} sampled{greedy}")
    return ", ".join(parts)


def markdown(table: pd.DataFrame) -> str:
    columns = {"algorithm": "algorithm", "peak_memory_mib": "peak memory (MiB)", "model_states_mib": "model states (MiB)",
               "time_per_iteration_s": "time per iteration (s)", "generate_s": "generate (s)", "score_s": "score (s)",
               "train_s": "train (s)", "tokens_per_second": "tokens/s"}
    shown = table[list(columns)].rename(columns=columns)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def report(table: pd.DataFrame, suite: Suite, model: str, device: str, expected: list[str], seconds: float) -> str:
    import torch
    import transformers

    from remax_bench.model_shapes import resolve_model

    params = resolve_model(model).num_params()
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else platform.machine()
    shared = suite.shared
    kind = table.memory_kind.iloc[0] if len(table) else "none"
    lines = [
        f"# GPU check: {', '.join(expected)} at one shape",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {gpu}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}; {seconds / 60:.1f} min in all",
        f"model `{model}`: {params / 1e6:,.1f}M parameters (random weights, byte vocabulary); the reward "
        "model and PPO's critic the same shape with a scalar head",
        f"{shared.rollout_batch_size} prompts per iteration ({answers(suite, expected)}), prompts up to "
        f"{shared.max_prompt_length} and answers up to "
        f"{shared.max_response_length} tokens, {shared.precision} autocast over fp32 master weights, gradient "
        f"checkpointing {'on' if shared.gradient_checkpointing else 'off'}; {suite.iterations} iterations, the "
        "first left out of the averages",
        f"peak memory: {kind.replace('_', ' ')}",
        "",
        markdown(table) if len(table) else "(no algorithm finished)",
        "",
    ]
    r = ratios(table)
    if r:
        lines.append(f"ReMax vs PPO: peak memory {r['peak_memory_saving']:+.1%} saved, model states "
                     f"{r['model_states_saving']:+.1%} saved, speed-up {r['speedup']:.2f}x")
        lines.append(comparison.PAPER_LINE)
    missing = [a for a in expected if a not in set(table.algorithm if len(table) else [])]
    if missing:
        lines.append(f"FAILED: {', '.join(missing)} did not finish; see the stage logs under the results folder")
    return "\n".join(lines) + "\n"


def run(dry: bool, out: Path, results_dir: Path, echo=print) -> int:
    start = time.time()
    suite, model, device = check_suite(dry)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu-check: no CUDA device is visible (run --dry for the CPU path)")
    expected = suite.enabled_algorithms()
    bench = bench_suite(suite, model, suite.iterations, device)
    initial = prepare_initial_models(bench, results_dir / bench.name / "initial")
    for model_dir in initial:
        with_system_preamble(model_dir, preamble_for(bench))
    table = run_bench(suite, model, suite.iterations, results_dir, expected, device, echo=echo)
    text = report(table, bench, model, device, expected, time.time() - start)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    echo(text)
    echo(f"written to {out}")
    return 0 if len(table) == len(expected) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same path on CPU at a tiny shape (what the tests run)")
    parser.add_argument("--out", default="reports/gpu_check.md", help="the table's file (markdown)")
    parser.add_argument("--results-dir", default="results-gpu-check", help="the stages' results and logs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        return run(args.dry, out, Path(args.results_dir))
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# GPU check FAILED\n\n{type(err).__name__}: {err}\n\n```\n{traceback.format_exc()}```\n")
        print(f"gpu-check FAILED: {type(err).__name__}: {err} (written to {out})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
