"""Bootstrap confidence intervals (seeded) for win rates and MT-bench means."""

from __future__ import annotations

import numpy as np

CI_LEVEL = 0.95


def bootstrap_mean_ci(values, samples: int, seed: int) -> list[float] | None:
    """Percentile interval of the mean of ``values`` over ``samples`` resamples with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - CI_LEVEL) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def bootstrap_cluster_mean_ci(groups: list[list[float]], samples: int, seed: int) -> list[float] | None:
    """Interval of the pooled mean when whole groups are resampled (MT-bench: a question's turns together,
    since the two turns of one question are not independent)."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return None
    sums = np.array([sum(g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups), size=(samples, len(groups)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1 - CI_LEVEL) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
