"""The reward-KL frontier: held-out gold reward (or the judge's score) against the measured KL to the reference.

At one beta the algorithms end at different KL from the reference (each spends the KL budget its own way), so
their rewards at one beta compare different trade-offs. As Gao et al. (2022) and Rafailov et al. (2023, Fig. 2)
do, the report compares them on the frontier instead:

    points      every held-out evaluation along training, (KL around it, gold reward), of every seed and every value
                of a sweep; the policy before training is the reference: (0, the SFT model's gold reward)
    KL          the mean of the logged `kl` (the sampled training answers' summed log-ratio log pi/pi_ref, the
                sample estimate of KL(pi || pi_ref) per answer) over the iterations within half an evaluation
                interval of the evaluation, on either side
    frontier    per algorithm and seed, over its points pooled across the sweep: the upper envelope, the highest
                score reached at a KL no larger than x, linearly interpolated between its corners
    equal KL    kappa = the largest KL every algorithm's every seed reaches; each seed's frontier read at kappa

Without a gold scorer, each run is one point: its end-of-training KL and the judge's score (MT-bench, else the
win rate), the reference at KL 0 with its own score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from remax_bench.core import algorithms as registry
from remax_bench.core.results import variant_sort_key
from remax_bench.report.load import COLORS, LABELS, SuiteResults, _num_or_nan

FRONTIER_FILE = "frontier.png"
GOLD = "held-out gold reward"
SOURCES = ("before training", "held-out evaluation", "end of training")
VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass
class Frontier:
    points: pd.DataFrame  # algorithm, variant, seed, step, kl, score, source
    score: str  # what the y axis is: held-out gold reward, or the judge's score
    kl_text: str  # which KL each point carries, in words
    kl_axis: str = "KL to the reference (nats per answer)"  # the same, short, for the plot's axis
    equal_kl: float = math.nan  # kappa
    at_equal_kl: pd.DataFrame = field(default_factory=pd.DataFrame)  # algorithm, seed, score
    left_out: list[str] = field(default_factory=list)

    @property
    def algorithms(self) -> list[str]:
        present = set(self.points["algorithm"]) if not self.points.empty else set()
        return [a for a in registry.NAMES if a in present]


# -- the points ------------------------------------------------------------------------------------------
def _half_interval(eval_steps: np.ndarray, last_step: int) -> int:
    """Half the spacing of the held-out evaluations (at least one iteration)."""
    spacing = np.diff(eval_steps)
    every = int(spacing.min()) if spacing.size else int(eval_steps[0]) + 1 if eval_steps.size else last_step + 1
    return max(1, every // 2)


def gold_points(res: SuiteResults, stage: str, seed: int) -> tuple[list[dict], int | None]:
    """The (KL, gold) points of one run and the half-window of its KL means (None without evaluations)."""
    summary = res.summaries.get((stage, seed), {})
    m = res.metrics
    steps = m[(m["stage"] == stage) & (m["seed"] == seed)].sort_values("step") if not m.empty else m
    points, window = [], None
    before = _num_or_nan(summary.get("heldout_gold_reward_before"))
    if not math.isnan(before):
        points.append({"step": -1, "kl": 0.0, "score": before, "source": SOURCES[0]})
    if "kl" not in steps or steps["kl"].isna().all():
        return [], None  # no KL measured (DPO trains on pairs and samples nothing)
    kl = steps.dropna(subset=["kl"])
    evals = steps.dropna(subset=["heldout_gold_reward"]) if "heldout_gold_reward" in steps else steps.iloc[0:0]
    last_step = int(kl["step"].max())
    if not evals.empty:
        window = _half_interval(evals["step"].to_numpy(int), last_step)
        for row in evals.itertuples():
            near = kl[(kl["step"] - row.step).abs() <= window]["kl"]
            points.append({"step": int(row.step), "kl": float(near.mean()), "score": float(row.heldout_gold_reward),
                           "source": SOURCES[1]})
    final = _num_or_nan(summary.get("heldout_gold_reward"))
    if not math.isnan(final) and (evals.empty or int(evals["step"].max()) < last_step):
        window = window or max(1, math.ceil(len(kl) / 10))
        end_kl = _num_or_nan(summary.get("final_kl"))
        if math.isnan(end_kl):
            end_kl = float(kl["kl"].iloc[-window:].mean())
        points.append({"step": last_step, "kl": end_kl, "score": final, "source": SOURCES[2]})
    return points, window


def judge_points(res: SuiteResults, table: pd.DataFrame, column: str) -> list[dict]:
    """One point per run: its end-of-training KL and the judge's score; the reference at KL 0."""
    points = []
    if table.empty or column not in table or "final_kl" not in table:
        return points
    reference = table[(table["algorithm"] == "sft")].set_index("seed")[column].dropna()
    for row in table.itertuples():
        if row.algorithm not in registry.online() or math.isnan(getattr(row, column)) or math.isnan(row.final_kl):
            continue
        if row.seed in reference.index:
            points.append({"algorithm": row.algorithm, "seed": row.seed, "step": -1, "kl": 0.0,
                           "score": float(reference.loc[row.seed]), "source": SOURCES[0]})
        points.append({"algorithm": row.algorithm, "seed": row.seed, "step": -1, "kl": float(row.final_kl),
                       "score": float(getattr(row, column)), "source": SOURCES[2]})
    return points


# -- the frontier ----------------------------------------------------------------------------------------
def upper_envelope(kl: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The corners of the frontier: each point that scores higher than every point at a smaller (or equal) KL."""
    order = np.lexsort((-score, kl))  # by KL, the best score first among equal KLs
    corners_kl, corners_score, best = [], [], -math.inf
    for i in order:
        if score[i] > best:
            corners_kl.append(kl[i])
            corners_score.append(score[i])
            best = score[i]
    return np.array(corners_kl), np.array(corners_score)


def frontier_at(kl: np.ndarray, score: np.ndarray, target: float) -> float:
    """The frontier of one run's points read at a KL (NaN outside the KLs its points span)."""
    corners_kl, corners_score = upper_envelope(kl, score)
    if corners_kl.size == 0 or target < corners_kl[0] or target > kl.max():
        return math.nan
    if target >= corners_kl[-1]:
        return float(corners_score[-1])  # the best score stays reachable at any larger KL the run reached
    return float(np.interp(target, corners_kl, corners_score))


def build_frontier(views: list[SuiteResults], tables: list[pd.DataFrame]) -> Frontier:
    """The frontier of every online algorithm over a suite's runs (every value of its sweep)."""
    rows, windows = [], set()
    for res in views:
        for stage, seed in sorted(res.summaries):
            if stage not in registry.online():
                continue
            points, window = gold_points(res, stage, seed)
            if window:
                windows.add(window)
            rows += [{"algorithm": stage, "variant": res.variant, "seed": seed, **p} for p in points]
    points = pd.DataFrame(rows)
    if not points.empty and (points["source"] != SOURCES[0]).any():
        within = " or ".join(f"±{w}" for w in sorted(windows)) or "±1"
        kl_text = (f"each held-out evaluation carries the mean logged `kl` of the training rollouts within {within} "
                   f"iteration{'s' if windows != {1} else ''} of it (half the evaluation interval), the end of "
                   "training the mean over the last 10% of iterations; before training the policy is the reference "
                   "(KL 0)")
        frontier = Frontier(points, GOLD, kl_text, f"KL to the reference (nats per answer): the training rollouts' "
                            f"mean within {within} iterations\nof each held-out evaluation")
    else:
        frontier = _judge_frontier(views, tables)
    ran = {stage for res in views for stage, _ in res.summaries if stage in registry.REGISTRY}
    no_kl = [a for a in registry.NAMES if a in ran and a not in frontier.algorithms]
    if no_kl:
        frontier.left_out.append(f"{', '.join(LABELS[a] for a in no_kl)}: no KL to the reference measured "
                                 "(no sampled answers, or no `kl` in metrics.jsonl)")
    _equal_kl(frontier)
    return frontier


def _judge_frontier(views: list[SuiteResults], tables: list[pd.DataFrame]) -> Frontier:
    for column, name in (("mt_bench_score", "MT-bench score (1–10)"), ("win_rate_pct", "win rate (%)")):
        rows = [{"variant": res.variant, **p} for res, table in zip(views, tables)
                for p in judge_points(res, table, column)]
        if rows:
            return Frontier(pd.DataFrame(rows), name, "each run's KL at the end of training (the mean logged `kl` "
                            "over its last 10% of iterations); the reference at KL 0 with its own score",
                            "KL to the reference (nats per answer): the training rollouts' mean over the last 10% "
                            "of iterations")
    return Frontier(pd.DataFrame(columns=["algorithm", "variant", "seed", "step", "kl", "score", "source"]), GOLD, "")


def _equal_kl(frontier: Frontier) -> None:
    """kappa, the largest KL every run of every algorithm reaches, and each run's frontier there."""
    points = frontier.points
    if points.empty:
        return
    runs = points.groupby(["algorithm", "seed"])
    reach = runs["kl"].max()
    if not (reach > 0).all():
        frontier.left_out.append("gold at equal KL: some run never moved away from the reference (KL <= 0)")
        return
    frontier.equal_kl = float(reach.min())
    frontier.at_equal_kl = pd.DataFrame([
        {"algorithm": algo, "seed": seed,
         "score": frontier_at(g["kl"].to_numpy(float), g["score"].to_numpy(float), frontier.equal_kl)}
        for (algo, seed), g in runs])


def mean_frontier(frontier: Frontier, algorithm: str, grid_points: int = 60):
    """(grid, mean, lo, hi) of an algorithm's per-seed frontiers, up to the KL all its seeds reach."""
    runs = [g for _, g in frontier.points[frontier.points["algorithm"] == algorithm].groupby("seed")]
    reach = min(g["kl"].max() for g in runs)
    start = max(min(g["kl"].min() for g in runs), 0.0)
    grid = np.linspace(start, reach, grid_points)
    curves = np.array([[frontier_at(g["kl"].to_numpy(float), g["score"].to_numpy(float), x) for x in grid]
                       for g in runs])
    return grid, np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)


# -- the plot --------------------------------------------------------------------------------------------
def frontier_plot(frontier: Frontier, path: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier.points
    variants = sorted(set(points["variant"]), key=variant_sort_key)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for algo in frontier.algorithms:
        color = COLORS.get(algo)
        mine = points[points["algorithm"] == algo]
        for i, variant in enumerate(variants):
            sel = mine[mine["variant"] == variant]
            ax.scatter(sel["kl"], sel["score"], s=12, alpha=0.35, color=color,
                       marker=VARIANT_MARKERS[i % len(VARIANT_MARKERS)], linewidths=0)
        grid, mean, lo, hi = mean_frontier(frontier, algo)
        seeds = mine["seed"].nunique()
        ax.plot(grid, mean, color=color, linewidth=1.8, label=f"{LABELS.get(algo, algo)} ({seeds} seed"
                f"{'s' if seeds != 1 else ''})")
        if seeds > 1:
            ax.fill_between(grid, lo, hi, color=color, alpha=0.12, linewidth=0)
    if not math.isnan(frontier.equal_kl):
        ax.axvline(frontier.equal_kl, color="black", linestyle="--", linewidth=1,
                   label=f"equal KL: {frontier.equal_kl:.3g} nats")
    if len(variants) > 1 or variants[0]:
        for i, variant in enumerate(variants):
            ax.scatter([], [], color="#555555", marker=VARIANT_MARKERS[i % len(VARIANT_MARKERS)], s=14,
                       label=f"points: {variant}")
    ax.set_xlabel(frontier.kl_axis, fontsize=8)
    ax.set_ylabel(frontier.score)
    ax.set_title(f"Reward-KL frontier: {frontier.score} against KL to the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="line: mean frontier over seeds",
              title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
