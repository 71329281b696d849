"""Bootstrap confidence intervals (seeded) for win rates and MT-bench means, over the evaluated items.

Both are rliable's stratified bootstrap (remax_bench.uncertainty), the one the report uses over seeds, here with
the items as runs of one task:

- a win rate is the mean of per-instruction preferences: its interval resamples instructions;
- an MT-bench score pools the turns of every question, and the two turns of one question are not independent:
  its interval resamples whole questions, the question's score sum and its number of turns together (one index
  draws both, as the bootstrap draws every argument of a run with the same index), and takes the ratio of sums.
"""

from __future__ import annotations

import numpy as np

from remax_bench.uncertainty import CONFIDENCE, percentile_interval

__all__ = ["CONFIDENCE", "bootstrap_cluster_mean_ci", "bootstrap_mean_ci"]


def bootstrap_mean_ci(values, samples: int, seed: int) -> list[float] | None:
    """Percentile interval of the mean of ``values`` over ``samples`` resamples of the items."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    lo, hi = percentile_interval(lambda v: np.array([v.mean()]), values[:, None], reps=samples, seed=seed)[:, 0]
    return [float(lo), float(hi)]


def bootstrap_cluster_mean_ci(groups: list[list[float]], samples: int, seed: int) -> list[float] | None:
    """Interval of the pooled mean when whole groups are resampled (MT-bench: a question's turns together,
    since the two turns of one question are not independent)."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return None
    sums = np.array([[sum(g)] for g in groups], dtype=float)
    counts = np.array([[len(g)] for g in groups], dtype=float)
    lo, hi = percentile_interval(lambda s, c: np.array([s.sum() / c.sum()]), sums, counts, reps=samples,
                                 seed=seed)[:, 0]
    return [float(lo), float(hi)]
