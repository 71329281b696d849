"""`remax-bench bench --against trl`: TRL's own trainers beside ours, on the same work.

Each algorithm TRL also has (the registry's ``trl_trainer``) runs once more as TRL's trainer, in its own process,
from the very suite, checkpoints and reward model our bench run used (remax_bench/peers/trl_stage.py), and the two
are printed side by side: time per iteration, tokens per second, peak memory, and the speed-up of ours over TRL's.
ReMax has no TRL trainer; it is set against TRL's GRPOTrainer at an equal number of generated answers per
iteration (its sampled and greedy answers against GRPO's k sampled ones), the comparison the paper's speed claim
rests on.
"""

from __future__ import annotations

import importlib.util
import math
from importlib import metadata
from pathlib import Path

import pandas as pd

from remax_bench.core import algorithms, results
from remax_bench.core.config import Suite

LIBRARIES = {"trl": "remax_bench.peers.trl_stage"}
TRL_MIN_VERSION = (1, 16)
# What "faster than the peers" asks: every algorithm TRL has at least 1.2x TRL's speed at equal work, ReMax at least
# 1.5x TRL's GRPO at an equal number of generated answers.
TARGET_SPEEDUP = 1.2
TARGET_REMAX_VS_GRPO = 1.5


def missing(library: str) -> str | None:
    """Why ``--against library`` cannot run here, or None. Reads the installed metadata, imports nothing."""
    if library not in LIBRARIES:
        return f"--against: unknown library {library!r}; choose from {', '.join(LIBRARIES)}"
    if importlib.util.find_spec(library) is None:
        return (f"--against {library} needs the {library} package, which is not installed: "
                f"pip install 'remax-bench[{library}]' (TRL {'.'.join(map(str, TRL_MIN_VERSION))} or newer)")
    version = metadata.version(library)
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < TRL_MIN_VERSION:
        return (f"--against {library}: {library} {version} is installed; its trainers are matched as of "
                f"{'.'.join(map(str, TRL_MIN_VERSION))}: pip install 'remax-bench[{library}]'")
    return None


def peer_suite(ours: Suite, library: str) -> Suite:
    """Our bench suite under its own name, so the peer's results sit beside ours and never mix with them."""
    data = ours.resolved()
    data["name"] = f"{ours.name}-{library}"
    return Suite.model_validate(data)


def run_against(library: str, base: Suite, model: str, iterations: int, results_dir: str | Path, chosen,
                device: str | None = None, echo=print, gradient_checkpointing: bool | None = None,
                overrides=()) -> pd.DataFrame:
    """The peer library's trainer of each chosen algorithm that has one, on the suite and initial checkpoints of
    our bench run with transformers rollouts (the engine TRL generates with here). ``overrides``: the --set
    KEY=VALUE that made ``base`` from its file, recorded in every manifest."""
    from remax_bench.bench import bench_row, bench_suite, finished_summaries, prepare_initial_models
    from remax_bench.runner import Runner, StagePlan, algorithm_stage, outcome_table

    ours = bench_suite(base, model, iterations, device, gradient_checkpointing, "hf")
    initial = prepare_initial_models(ours, Path(results_dir) / ours.name / "initial")

    names = algorithms.with_trl_trainer(chosen)
    if not names:
        echo(f"--against {library}: none of {', '.join(chosen)} has a {library} trainer "
             f"({', '.join(algorithms.with_trl_trainer())} have)")
        return pd.DataFrame()
    suite = peer_suite(ours, library)
    runner = Runner(suite, results_dir, echo=echo, overrides=overrides)
    seed = suite.seeds[0]
    policy_dir, reward_dir = initial
    stages = [StagePlan("sft", seed, given=policy_dir), StagePlan("reward_model", seed, given=reward_dir)]
    for name in names:
        plan = algorithm_stage(name, seed, seed)
        plan.runs_as = LIBRARIES[library]
        stages.append(plan)
        results.discard(runner.final_dir(f"{name}/seed{seed}"))  # a benchmark always measures afresh
    echo(f"against {library}: {', '.join(algorithms.get(n).trl_trainer for n in names)} on the same work; "
         f"results in {runner.root}")
    echo(outcome_table(runner.run(stages)))
    rows = []
    for name, summary in finished_summaries(runner, names, seed):
        peer = summary["peer"]
        rows.append({**bench_row(name, summary), "trainer": f"{library}.{peer['trainer']}",
                     "version": peer["version"], "answers_per_iteration": peer["rows_per_iteration"],
                     "matched": peer["matched"], "differs": peer["differs"]})
    return pd.DataFrame(rows)


def speedup(ours_s: float, theirs_s: float) -> float:
    """How many times faster ours is: their time per iteration over ours (> 1: ours is faster)."""
    return theirs_s / ours_s if ours_s > 0 else math.nan


def _phases(row) -> str:
    return "/".join(f"{getattr(row, p):.2f}" for p in ("generate_s", "score_s", "train_s"))


def side_by_side(ours: pd.DataFrame, peers: pd.DataFrame) -> pd.DataFrame:
    """One row per algorithm both ran: ours (hf rollouts) and the peer's, and the ratios."""
    mine = ours[ours.rollouts == "hf"].set_index("algorithm") if len(ours) else ours
    rows = []
    for peer in peers.itertuples():
        if peer.algorithm not in mine.index:
            continue
        own = mine.loc[peer.algorithm]
        rows.append({
            "algorithm": peer.algorithm, "peer": peer.trainer,
            "ours_s": own.time_per_iteration_s, "peer_s": peer.time_per_iteration_s,
            "speedup": speedup(own.time_per_iteration_s, peer.time_per_iteration_s),
            "ours_tok_s": own.tokens_per_second, "peer_tok_s": peer.tokens_per_second,
            "ours_mib": own.peak_memory_mib, "peer_mib": peer.peak_memory_mib,
            # generate / score / train seconds of an iteration
            "ours_phases": _phases(own), "peer_phases": _phases(peer),
        })
    return pd.DataFrame(rows)


def remax_against_grpo(ours: pd.DataFrame, peers: pd.DataFrame) -> dict | None:
    """ReMax (ours) against the peer's GRPO trainer: answers generated per iteration by each, and the speed-ups."""
    mine = ours[(ours.rollouts == "hf") & (ours.algorithm == algorithms.FOCUS)] if len(ours) else ours
    grpo = peers[peers.trainer.str.endswith("GRPOTrainer")] if len(peers) else peers
    if mine.empty or grpo.empty:
        return None
    own, peer = mine.iloc[0], grpo.iloc[0]
    return {"peer": peer.trainer, "ours_answers": own.answers_per_iteration, "peer_answers": peer.answers_per_iteration,
            "equal": own.answers_per_iteration == peer.answers_per_iteration,
            "speedup": speedup(own.time_per_iteration_s, peer.time_per_iteration_s),
            "tokens_per_s_ratio": own.tokens_per_second / peer.tokens_per_second if peer.tokens_per_second else math.nan}


def format_against(ours: pd.DataFrame, peers: pd.DataFrame, library: str = "trl") -> str:
    if peers.empty:
        return f"against {library}: no {library} trainer finished; see the logs above"
    table = side_by_side(ours, peers)
    version = peers.version.iloc[0]
    lines = [f"against {library} {version}: its own trainers on our run's work (the same suite, checkpoints, "
             "prompts, lengths, batch sizes, KL coefficient and reward model, each in its own process); times are "
             "per iteration (s), phases are generate/score/train (s), tok_s counts generated tokens per second "
             f"(DPO: tokens trained on), mib is peak memory; speed-up = {library}'s time / ours (> 1: ours is faster)"]
    if table.empty:
        lines.append("no algorithm ran on both sides (ours with hf rollouts)")
    else:
        lines.append(table.round(3).to_string(index=False))
        for row in table.itertuples():
            verdict = "meets" if row.speedup >= TARGET_SPEEDUP else "below"
            lines.append(f"{row.algorithm}: {row.speedup:.2f}x {row.peer}'s speed ({verdict} the {TARGET_SPEEDUP}x target)")
    versus = remax_against_grpo(ours, peers)
    if versus is not None:
        answers = (f"{versus['ours_answers']:.0f} answers per iteration each" if versus["equal"] else
                   f"NOT equal: {versus['ours_answers']:.0f} answers per iteration against {versus['peer_answers']:.0f}")
        verdict = "meets" if versus["speedup"] >= TARGET_REMAX_VS_GRPO else "below"
        lines.append(f"ReMax vs {versus['peer']} ({answers}): {versus['speedup']:.2f}x the speed per iteration, "
                     f"{versus['tokens_per_s_ratio']:.2f}x the generated tokens per second ({verdict} the "
                     f"{TARGET_REMAX_VS_GRPO}x target)")
    for peer in peers.itertuples():
        lines.append(f"{peer.algorithm} / {peer.trainer}: matched: {'; '.join(peer.matched)}")
        if peer.differs:
            lines.append(f"    differs (TRL has no switch for it): {'; '.join(peer.differs)}")
    return "\n".join(lines)
