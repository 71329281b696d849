"""`remax-bench bench`: PPO, ReMax and DPO on one model and one shared block, for N iterations.

No SFT or reward-model training: the given model is the starting policy and reference, and the same model
with a fresh scalar head is the reward model (and PPO's critic). The algorithms see identical weights,
prompts, lengths and batch sizes, each in its own process, so peak memory and time per iteration compare
directly. Quality is not the point here; the suite report is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from remax_bench import comparison
from remax_bench.core import algorithms, results
from remax_bench.core.config import Suite

BENCH_ALGORITHMS = algorithms.NAMES
MIB = 2**20


def bench_suite(base: Suite, model: str, iterations: int, device: str | None = None,
                gradient_checkpointing: bool | None = None, rollout_backend: str | None = None) -> Suite:
    data = base.resolved()
    backend = rollout_backend or data["shared"]["rollout_backend"]
    data["name"] = "bench-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", model) + ("-vllm" if backend == "vllm" else "")
    data["models"] = {**data["models"], "policy": model, "reward": None}
    data["shared"] = {**data["shared"], "iterations": iterations, "token_budget": None, "heldout_eval_every": 0,
                      "rollout_backend": backend}
    if gradient_checkpointing is not None:
        data["shared"]["gradient_checkpointing"] = gradient_checkpointing
    # Only what N iterations consume: DPO's one reference pass should not dominate its timing.
    pairs = max(64, 2 * iterations * data["shared"]["train_batch_size"])
    data["data"]["synthetic"] = {**data["data"]["synthetic"], "n_pairs": pairs, "n_eval": 16}
    data["sft"] = {**data["sft"], "path": None}
    data["reward_model"] = {**data["reward_model"], "path": None}
    data["eval"] = {**data["eval"], "enabled": False}
    data["seeds"] = [data["seeds"][0]]
    if device:
        data["runtime"] = {**data["runtime"], "device": device}
    return Suite.model_validate(data)


def prepare_initial_models(suite: Suite, out: Path) -> tuple[str, str]:
    """The starting policy and the reward model, saved as HF directories (built once, seeded)."""
    from remax_bench.core.models import load_causal_lm, load_reward_model, load_tokenizer, save_pretrained

    seed = suite.seeds[0]
    policy_dir, reward_dir = out / "policy", out / "reward_model"
    if not (policy_dir / "config.json").is_file():
        tokenizer = load_tokenizer(suite.models.policy)
        save_pretrained(load_causal_lm(suite.models.policy, seed=seed), tokenizer, policy_dir)
    if not (reward_dir / "config.json").is_file():
        tokenizer = load_tokenizer(str(policy_dir))
        save_pretrained(load_reward_model(str(policy_dir), seed=seed, new_head=True), tokenizer, reward_dir)
    return str(policy_dir), str(reward_dir)


def run_bench(base: Suite, model: str, iterations: int, results_dir: str | Path, chosen=BENCH_ALGORITHMS,
              device: str | None = None, echo=print, gradient_checkpointing: bool | None = None,
              rollout_backends: tuple[str, ...] | None = None, overrides=()) -> pd.DataFrame:
    """The chosen algorithms, each in its own process, once per rollout backend (default: the suite's).
    ``overrides``: the --set KEY=VALUE that made ``base`` from its file, recorded in every manifest."""
    tables = [_run_one_backend(base, model, iterations, results_dir, chosen, device, echo, gradient_checkpointing,
                               backend, overrides) for backend in (rollout_backends or (None,))]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _run_one_backend(base, model, iterations, results_dir, chosen, device, echo, gradient_checkpointing,
                     backend, overrides) -> pd.DataFrame:
    from remax_bench.runner import Runner, StagePlan, algorithm_stage, outcome_table

    suite = bench_suite(base, model, iterations, device, gradient_checkpointing, backend)
    runner = Runner(suite, results_dir, echo=echo, overrides=overrides)
    echo(f"bench: {model}, {iterations} iterations of {', '.join(chosen)}, rollouts through "
         f"{suite.shared.rollout_backend}; results in {runner.root}")
    policy_dir, reward_dir = prepare_initial_models(suite, runner.root / "initial")
    seed = suite.seeds[0]
    stages = [StagePlan("sft", seed, given=policy_dir), StagePlan("reward_model", seed, given=reward_dir)]
    for algo in chosen:
        stages.append(algorithm_stage(algo, seed, seed))
        results.discard(runner.final_dir(f"{algo}/seed{seed}"))  # a benchmark always measures afresh
    echo(outcome_table(runner.run(stages)))
    return pd.DataFrame([bench_row(algo, summary) for algo, summary in finished_summaries(runner, chosen, seed)])


def finished_summaries(runner, names, seed: int) -> list[tuple[str, dict]]:
    """Each named stage's summary where its run completed; a stage that did not finish has no row."""
    finals = [(name, runner.final_dir(f"{name}/seed{seed}")) for name in names]
    return [(name, results.read_json(final / "summary.json")) for name, final in finals if results.is_complete(final)]


def bench_row(algo: str, summary: dict) -> dict:
    split = summary.get("time_split_s") or {}
    engine = summary.get("rollout_engine") or {"backend": "hf"}
    budget = summary.get("matched_budget") or {}
    time_per_iteration = summary.get("time_per_iteration_s", math.nan)
    return {
        "algorithm": algo,
        "rollouts": engine["backend"],
        "peak_memory_mib": summary.get("peak_memory_bytes", math.nan) / MIB,
        "model_states_mib": summary.get("model_state_total_bytes", math.nan) / MIB,
        "engine_mib": (engine.get("engine_weight_bytes", 0) + engine.get("engine_kv_cache_bytes", 0)) / MIB,
        "time_per_iteration_s": time_per_iteration,
        "generate_s": split.get("generate", math.nan),
        "sync_s": split.get("sync", 0.0),
        "score_s": split.get("score", math.nan),
        "train_s": split.get("train", math.nan),
        "generate_ms_per_token": summary.get("generate_ms_per_token", math.nan),
        "sync_share": split.get("sync", 0.0) / time_per_iteration if time_per_iteration else math.nan,
        "engine_start_s": engine.get("engine_start_s", 0.0),
        "tokens_per_second": summary.get("tokens_per_second", math.nan),
        # sampled and greedy answers generated per iteration (the work of an online algorithm)
        "answers_per_iteration": (budget["samples_per_iteration"] + budget["greedy_per_iteration"]
                                  if budget else math.nan),
        "memory_kind": summary.get("memory_kind", ""),
    }


def ratios(table: pd.DataFrame, algorithm: str = algorithms.FOCUS) -> dict[str, float]:
    """One algorithm against PPO: memory saving (share of PPO's) and speed-up (PPO time / its time)."""
    by = table.set_index("algorithm")
    if not {comparison.BASELINE, algorithm} <= set(by.index):
        return {}
    base, other = by.loc[comparison.BASELINE], by.loc[algorithm]
    return {
        "peak_memory_saving": comparison.saving(other.peak_memory_mib, base.peak_memory_mib),
        "model_states_saving": comparison.saving(other.model_states_mib, base.model_states_mib),
        "speedup": comparison.speedup(other.time_per_iteration_s, base.time_per_iteration_s),
    }


def engine_speedup_bound(generate_s: float, iteration_s: float) -> float:
    """Amdahl's bound on what a faster rollout engine can buy: the iteration's time over its time without
    generation. Scoring and training cost the same whatever engine generates the answers."""
    rest = iteration_s - generate_s
    return iteration_s / rest if rest > 0 else math.inf


def format_bench(table: pd.DataFrame, model: str) -> str:
    if table.empty:
        return "no algorithm finished; see the logs above"
    shown = table.drop(columns=["memory_kind"]).round(3).to_string(index=False)
    kind = table.memory_kind.iloc[0]
    lines = [f"model {model}; peak memory is {kind.replace('_', ' ')} (a vLLM rollout engine's weights and KV cache "
             "included: engine_mib); times are per iteration (s), the engine's one-off start-up apart", shown, ""]
    backends = list(dict.fromkeys(table.rollouts))
    compared_with_ppo = False
    for backend in backends:
        r = ratios(table[table.rollouts == backend])
        if r:
            compared_with_ppo = True
            lines.append(f"ReMax vs PPO ({backend} rollouts): peak memory {r['peak_memory_saving']:+.1%} saved, "
                         f"model states {r['model_states_saving']:+.1%} saved, speed-up {r['speedup']:.2f}x")
    for row in table[(table.rollouts == "hf") & (table.generate_s > 0)].itertuples():  # DPO generates nothing
        bound = engine_speedup_bound(row.generate_s, row.time_per_iteration_s)
        lines.append(f"{row.algorithm} (hf rollouts): generation is {row.generate_s / row.time_per_iteration_s:.1%} "
                     f"of an iteration: a rollout engine that generated for free would make it {bound:.2f}x faster")
    if len(backends) > 1:
        for algo in dict.fromkeys(table.algorithm):
            rows = table[table.algorithm == algo].set_index("rollouts")
            if {"hf", "vllm"} <= set(rows.index):
                hf, vllm = rows.loc["hf"], rows.loc["vllm"]
                speedup = comparison.speedup(vllm.time_per_iteration_s, hf.time_per_iteration_s)
                lines.append(f"{algo}: vllm rollouts {speedup:.2f}x "
                             f"the speed of hf rollouts per iteration; generation "
                             f"{hf.generate_ms_per_token / vllm.generate_ms_per_token:.2f}x per token; weight sync "
                             f"{vllm.sync_share:.1%} of an iteration; engine start-up {vllm.engine_start_s:.1f} s (once)")
    if compared_with_ppo:
        lines.append(comparison.PAPER_LINE)
    return "\n".join(lines)


def profiled_stages(base: Suite, model: str, iterations: int, results_dir: str | Path, chosen, device: str | None,
                    gradient_checkpointing: bool | None, against: str | None) -> list[tuple[str, Path]]:
    """(label, result directory) of each stage a ``bench --profile`` run profiled: ours with transformers rollouts,
    and the peer library's trainer beside each algorithm that has one."""
    suite = bench_suite(base, model, iterations, device, gradient_checkpointing, "hf")
    root, seed = Path(results_dir) / suite.name, suite.seeds[0]
    stages = []
    for algo in chosen:
        stages.append((f"{algo} (ours)", root / algo / f"seed{seed}"))
        trainer = algorithms.get(algo).trl_trainer
        if against and trainer:
            stages.append((f"{algo} ({against}.{trainer})", root.with_name(f"{root.name}-{against}") / algo / f"seed{seed}"))
    return stages


def format_profiles(stages: list[tuple[str, Path]], top: int = 6) -> str:
    """Each profiled stage's operator self time per phase (ms over the whole stage) and its heaviest operators."""
    lines = ["where the time goes (torch profiler, operator self time per phase over every iteration and the GFLOP of its "
             "matrix products; compare shares and GFLOP, a profiled run is slower than an unprofiled one):"]
    for label, final in stages:
        path = final / "profile.json"
        if not path.is_file():
            lines.append(f"{label}: no profile (the stage did not finish)")
            continue
        profile = results.read_json(path)
        breakdown, gflop = profile["cpu"], profile.get("gflop", {})
        totals = {phase: sum(ops.values()) for phase, ops in breakdown.items()}
        lines.append(f"{label}: " + ", ".join(f"{phase} {ms:.0f} ms ({gflop.get(phase, 0.0):.1f} GFLOP)"
                                             for phase, ms in totals.items()))
        for phase, ops in breakdown.items():
            heaviest = ", ".join(f"{name} {ms:.0f}" for name, ms in list(ops.items())[:top])
            lines.append(f"    {phase}: {heaviest}")
    return "\n".join(lines)
