"""Each algorithm against the baseline algorithm (PPO, as in the paper), and the paper's own figures.

report, check, bench and estimate all compare through these three functions, so "saving" and "speed-up" mean
one thing everywhere: saving = 1 - algorithm / PPO (memory), speed-up = PPO time / algorithm time.
"""

from __future__ import annotations

import math

from remax_bench.core.algorithms import BASELINE

# The paper's own figures, always shown as the paper's (Li et al. 2023, "ReMax: A Simple, Effective, and
# Efficient Reinforcement Learning Method for Aligning Large Language Models").
PAPER = {
    "citation": "Li et al. 2023",
    "memory_saving_pct": 46.0,
    "speedup_x": 1.6,
    "setting": "Llama-2-7B, ReMax vs PPO, GPUs",
    "alpaca_eval_win_rate_pct": 94.78,
    "mt_bench": 7.739,
    "quality_setting": "Mistral-7B trained with ReMax; AlpacaEval win rate against the leaderboard's reference "
    "model (not against an SFT model) and MT-bench with a GPT-4 judge",
}
PAPER_LINE = (f"paper ({PAPER['citation']}, {PAPER['setting']}): ~{PAPER['memory_saving_pct']:.0f}% GPU memory "
              f"saved, ~{PAPER['speedup_x']}x faster")


def ratio(value: float | None, baseline: float | None) -> float:
    """value / baseline; NaN when either is missing or the baseline is 0 (a CPU stage can measure 0 bytes)."""
    if value is None or baseline is None:
        return math.nan
    value, baseline = float(value), float(baseline)
    if math.isnan(value) or math.isnan(baseline) or baseline == 0:
        return math.nan
    return value / baseline


def saving(value: float | None, baseline: float | None) -> float:
    """The fraction of the baseline's memory an algorithm does not use: 1 - value / baseline."""
    return 1.0 - ratio(value, baseline)


def speedup(seconds: float | None, baseline_seconds: float | None) -> float:
    """How many times faster than the baseline: baseline time / time."""
    return ratio(baseline_seconds, seconds)


__all__ = ["BASELINE", "PAPER", "PAPER_LINE", "ratio", "saving", "speedup"]
