"""Uncertainty over seeds, as rliable computes it (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"): stratified bootstrap 95% intervals, the interquartile mean, and the probability of improvement.

Scores are laid out as rliable lays them out, a matrix of runs x tasks; here the runs are seeds and the "tasks"
are the figures of one algorithm (held-out gold reward, KL, memory, ...). rliable's stratified bootstrap draws the
runs of each task independently, so every column gets its own interval, the one a bootstrap of that figure alone
would give, and one pass over the resamples serves them all.

    mean        (1/n) sum_i x_i
    IQM         the mean of the middle 50% of the runs: scipy.stats.trim_mean(x, 0.25), rliable's aggregate_iqm
    P(X > Y)    (1 / (n m)) sum_i sum_j [x_i > y_j] + 1/2 [x_i = y_j]: the Mann-Whitney U statistic over n m,
                rliable's probability_of_improvement (X's runs and Y's runs resampled independently)

Each interval is the percentile interval of rliable's bootstrap (``StratifiedBootstrap``,
``StratifiedIndependentBootstrap``) with ``REPS`` resamples. The statistics inside the resampling loop are the
numpy forms of rliable's for all columns at once (scipy's per-call overhead times 2000 resamples times every
figure would take minutes); tests/test_uncertainty.py holds them equal to rliable's own functions.

With n seeds a percentile bootstrap interval cannot be wider than the seeds' range, and with two seeds it is that
range: too narrow to order anything. No order is claimed below ``MIN_SEEDS_TO_ORDER`` seeds per algorithm: with 3
against 3, complete separation happens by chance with probability 1/20 when the algorithms are the same.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

CONFIDENCE = 0.95
REPS = 2000  # rliable's papers use 2000 resamples and more for their figures; distinct resamples of 5 seeds: 126
BOOTSTRAP_SEED = 0  # intervals are part of a report: the same results give the same report
MIN_SEEDS_TO_ORDER = 3


@dataclass(frozen=True)
class Interval:
    """A point estimate over n runs and its 95% interval (lo, hi are NaN when one run gives no interval)."""

    point: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n > 1 and not math.isnan(self.lo)

    def excludes(self, value: float) -> bool:
        return self.has_interval and (self.lo > value or self.hi < value)


NO_RUNS = Interval(math.nan, math.nan, math.nan, 0)


# -- rliable's bootstraps -------------------------------------------------------------------------------------
@contextmanager
def _seeded_global_rng(seed: int):
    """rliable draws its resampling indices from numpy's global generator (np.random.choice): seed it for the
    call and give the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def percentile_interval(func: Callable[..., np.ndarray], *scores: np.ndarray, independent: bool = False,
                        reps: int = REPS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[2, k]: the lower and upper 95% bounds of func(*scores) under rliable's stratified bootstrap of the runs
    (axis 0); ``independent``: each score matrix's runs resampled on their own (two algorithms' seeds)."""
    from rliable.library import StratifiedBootstrap, StratifiedIndependentBootstrap

    with _seeded_global_rng(seed):
        bootstrap = StratifiedIndependentBootstrap(*scores) if independent else StratifiedBootstrap(*scores)
        bounds = bootstrap.conf_int(func, reps=reps, size=CONFIDENCE, method="percentile")
    return np.asarray(bounds, dtype=float).reshape(2, -1)


# -- the statistics -------------------------------------------------------------------------------------------
def trimmed_means(scores: np.ndarray) -> np.ndarray:
    """The interquartile mean of each column: scipy.stats.trim_mean(column, 0.25), i.e. rliable's aggregate_iqm,
    which cuts int(0.25 n) runs from each end."""
    n = scores.shape[0]
    cut = int(0.25 * n)
    return np.sort(scores, axis=0)[cut : n - cut].mean(axis=0)


def improvement_probabilities(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of each column, ties counted half: rliable's probability_of_improvement on that column alone."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    equal = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return greater + 0.5 * equal


def _complete_column_groups(*frames: np.ndarray) -> dict[tuple, list[int]]:
    """Columns grouped by which runs hold a number (in every frame given), so each group bootstraps whole runs."""
    groups: dict[tuple, list[int]] = {}
    for j in range(frames[0].shape[1]):
        key = tuple(tuple(np.flatnonzero(~np.isnan(f[:, j]))) for f in frames)
        groups.setdefault(key, []).append(j)
    return groups


def summarise(scores: np.ndarray, reps: int = REPS) -> tuple[list[Interval], list[Interval]]:
    """(mean, IQM) of each column of a runs x figures matrix (NaN: that run has no such figure), with intervals."""
    scores = np.asarray(scores, dtype=float).reshape(len(scores), -1)
    k = scores.shape[1]
    means, iqms = [NO_RUNS] * k, [NO_RUNS] * k
    for (rows,), cols in _complete_column_groups(scores).items():
        if not rows:
            continue
        block = scores[np.ix_(rows, cols)]
        point_mean, point_iqm = block.mean(axis=0), trimmed_means(block)
        if len(rows) > 1:
            bounds = percentile_interval(lambda s: np.concatenate([s.mean(axis=0), trimmed_means(s)]), block, reps=reps)
        else:
            bounds = np.full((2, 2 * len(cols)), math.nan)
        for i, j in enumerate(cols):
            means[j] = Interval(float(point_mean[i]), float(bounds[0, i]), float(bounds[1, i]), len(rows))
            iqms[j] = Interval(float(point_iqm[i]), float(bounds[0, len(cols) + i]), float(bounds[1, len(cols) + i]),
                               len(rows))
    return means, iqms


def mean_interval(values, reps: int = REPS) -> Interval:
    """The mean of a list of runs and its 95% interval (NaN runs left out)."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if values.size == 0:
        return NO_RUNS
    return summarise(values[:, None], reps)[0][0]


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = REPS) -> list[Interval]:
    """P(X > Y) of each column of two runs x figures matrices (the same figures), with its interval; n is the
    smaller number of runs."""
    x = np.asarray(x, dtype=float).reshape(len(x), -1)
    y = np.asarray(y, dtype=float).reshape(len(y), -1)
    out = [NO_RUNS] * x.shape[1]
    for (rows_x, rows_y), cols in _complete_column_groups(x, y).items():
        if not rows_x or not rows_y:
            continue
        bx, by = x[np.ix_(rows_x, cols)], y[np.ix_(rows_y, cols)]
        point = improvement_probabilities(bx, by)
        n = min(len(rows_x), len(rows_y))
        bounds = (percentile_interval(improvement_probabilities, bx, by, independent=True, reps=reps) if n > 1
                  else np.full((2, len(cols)), math.nan))
        for i, j in enumerate(cols):
            out[j] = Interval(float(point[i]), float(bounds[0, i]), float(bounds[1, i]), n)
    return out


# -- in words -------------------------------------------------------------------------------------------------
def told_apart(poi: Interval, n_x: int, n_y: int) -> int:
    """+1: X is better, -1: Y is better, 0: they cannot be told apart at these numbers of seeds."""
    if min(n_x, n_y) < MIN_SEEDS_TO_ORDER or not poi.has_interval:
        return 0
    if poi.lo > 0.5:
        return 1
    if poi.hi < 0.5:
        return -1
    return 0


def order_in_words(x: str, y: str, what: str, poi: Interval, n_x: int, n_y: int) -> str:
    """One sentence: which of two algorithms is better on a figure, or that this many seeds cannot tell."""
    figure = f"P({x} > {y}) = {poi.point:.2f}" + (f" [{poi.lo:.2f}, {poi.hi:.2f}]" if poi.has_interval else "")
    seeds = f"{n_x} and {n_y} seeds" if n_x != n_y else f"{n_x} seeds each"
    verdict = told_apart(poi, n_x, n_y)
    if verdict > 0:
        return f"{what}: {x} is better than {y} ({figure}, {seeds})."
    if verdict < 0:
        return f"{what}: {y} is better than {x} ({figure}, {seeds})."
    if min(n_x, n_y) < MIN_SEEDS_TO_ORDER:
        return (f"{what}: {x} and {y} cannot be told apart at {seeds} ({figure}; below {MIN_SEEDS_TO_ORDER} seeds "
                "per algorithm no order is claimed).")
    return f"{what}: {x} and {y} cannot be told apart at {seeds} ({figure}: the interval holds 0.5)."
