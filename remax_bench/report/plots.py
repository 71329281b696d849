"""The report's plots (PNG): curves against step, time and generated tokens, memory by component, time by phase,
quality bars."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from remax_bench import uncertainty
from remax_bench.report.load import (
    ALGORITHMS,
    COLORS,
    COMPONENT_COLORS,
    KIND_SHORT,
    KIND_STYLE,
    LABELS,
    MIB,
    OTHER_MEMORY,
    PHASE_COLORS,
    PHASES,
    POLICY_STAGES,
    STATE_KINDS,
    SuiteResults,
    _num_or_nan,
)
from remax_bench.report.tables import (
    _component_bytes,
    _eval_judge,
    _reference,
)


# -- plots ---------------------------------------------------------------------------------------
@dataclass
class Plot:
    file: str
    title: str
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _time_unit(seconds: float) -> tuple[str, float]:
    if math.isnan(seconds) or seconds < 600:
        return "s", 1.0
    if seconds < 5 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _algorithms_with(res: SuiteResults, column: str, stages=POLICY_STAGES) -> list[str]:
    m = res.metrics
    if m.empty or column not in m:
        return []
    return [a for a in stages if m.loc[m["stage"] == a, column].notna().any()]


def _curve_plot(res: SuiteResults, column: str, x: str, path: Path, dpi: int, ylabel: str, title: str) -> list[str]:
    """Mean over seeds per algorithm, min-max band; x is 'step' or 'wall_time_s' (seeds interpolated)."""
    plt = _plt()
    algos = _algorithms_with(res, column)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    m = res.metrics
    unit, div = "s", 1.0
    if x == "wall_time_s":
        unit, div = _time_unit(float(m.loc[m["stage"].isin(algos), "wall_time_s"].max()))
    elif x == "generated_tokens":
        unit, div = "thousands", 1000.0
    drawn = []
    for algo in algos:
        rows = m[(m["stage"] == algo)].dropna(subset=[column, x])
        if rows.empty:
            continue
        drawn.append(algo)
        seeds = sorted(rows["seed"].unique())
        if x == "step":
            g = rows.groupby("step")[column]
            grid, mean, lo, hi = g.mean().index.to_numpy(), g.mean().to_numpy(), g.min().to_numpy(), g.max().to_numpy()
        else:
            grid = np.linspace(0, rows[x].max(), 200)
            curves = []
            for seed in seeds:
                s = rows[rows["seed"] == seed].sort_values(x)
                t, v = s[x].to_numpy(float), s[column].to_numpy(float)
                curve = np.interp(grid, t, v)
                curve[(grid < t[0]) | (grid > t[-1])] = np.nan  # no extrapolation beyond a seed's own run
                curves.append(curve)
            stack = np.vstack(curves)
            keep = ~np.all(np.isnan(stack), axis=0)
            grid, stack = grid[keep], stack[:, keep]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
            grid = grid / div
        label = f"{LABELS.get(algo, algo)} (mean of {len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
        ax.plot(grid, mean, color=COLORS.get(algo), label=label, linewidth=1.6)
        if len(seeds) > 1:
            ax.fill_between(grid, lo, hi, color=COLORS.get(algo), alpha=0.18, linewidth=0)
    if x == "step":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration (step)" if x == "step" else f"generated tokens ({unit}, greedy answers included)"
                  if x == "generated_tokens" else f"wall time since stage start ({unit})")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="band: min–max over seeds", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return drawn


def memory_breakdown(res: SuiteResults) -> pd.DataFrame:
    """MiB per algorithm (mean over seeds): one column per '<component> <kind>' model state, the rest of the
    measured peak as 'other (activations, cache, allocator)' (when positive), and the measured peak."""
    rows = {}
    for algo in ALGORITHMS:
        runs = [s for (stage, _), s in sorted(res.summaries.items()) if stage == algo]
        if not runs:
            continue
        parts: dict[str, list[float]] = {}
        for s in runs:
            for comp, kinds in _component_bytes(s).items():
                for kind, value in kinds.items():
                    parts.setdefault(f"{comp} {kind}", []).append(0.0 if math.isnan(value) else value / MIB)
        row = {k: float(np.mean(v)) for k, v in parts.items() if np.mean(v) > 0}
        peaks = [_num_or_nan(s.get("peak_memory_bytes")) / MIB for s in runs]
        peak = float(np.nanmean(peaks)) if not all(math.isnan(p) for p in peaks) else math.nan
        states = sum(row.values())
        row[OTHER_MEMORY] = max(0.0, peak - states) if not math.isnan(peak) else 0.0
        row["measured peak"] = peak
        rows[algo] = row
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    if frame.empty:
        return frame
    others = {c.split(" ")[0] for c in frame.columns} - set(COMPONENT_COLORS) - {"other", "measured"}
    comps = list(COMPONENT_COLORS) + sorted(others)
    ordered = [f"{c} {k}" for c in comps for k in STATE_KINDS if f"{c} {k}" in frame.columns]
    return frame[ordered + [OTHER_MEMORY, "measured peak"]]


def _color_ticks(ax, algos):
    for tick, algo in zip(ax.get_xticklabels(), algos):
        tick.set_color(COLORS.get(algo, "black"))
        tick.set_fontweight("bold")


def _memory_plot(res: SuiteResults, path: Path, dpi: int, kind_text: str) -> None:
    plt = _plt()
    frame = memory_breakdown(res)
    algos = list(frame.index)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    bottom = np.zeros(len(algos))
    xs = np.arange(len(algos))
    for col in frame.columns[:-1]:
        values = frame[col].to_numpy(float)
        if col == OTHER_MEMORY:
            color, alpha, hatch = PHASE_COLORS["other"], 1.0, ""
        else:
            comp, kind = col.split(" ", 1)
            color = COMPONENT_COLORS.get(comp, "#aaaaaa")
            alpha, hatch = KIND_STYLE.get(kind, (1.0, ""))
        ax.bar(xs, values, 0.6, bottom=bottom, color=color, alpha=alpha, hatch=hatch, edgecolor="white",
               linewidth=0.5, label=col)
        bottom += values
    ax.hlines(frame["measured peak"], xs - 0.36, xs + 0.36, color="black", linewidth=2.2, zorder=3,
              label="measured peak")
    ax.set_xticks(xs, [LABELS.get(a, a) for a in algos])
    _color_ticks(ax, algos)
    ax.set_ylabel("memory (MiB)")
    ax.set_title(f"Peak memory by component (mean over seeds)\nmeasured peak: {kind_text}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # listed top to bottom, as the bars are stacked
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def time_breakdown(table: pd.DataFrame) -> pd.DataFrame:
    """Seconds per iteration by phase per algorithm (mean over seeds); 'other' = total - phases when positive."""
    rows = {}
    for algo in ALGORITHMS:
        t = table[table["algorithm"] == algo] if not table.empty and "time_per_iteration_s" in table else None
        if t is None or t["time_per_iteration_s"].dropna().empty:
            continue
        row = {p: float(t[f"time_{p}_s"].mean()) if t[f"time_{p}_s"].notna().any() else 0.0 for p in PHASES}
        total = float(t["time_per_iteration_s"].mean())
        row["other"] = max(0.0, total - sum(row.values()))
        row["total"] = total
        row["total_std"] = float(t["time_per_iteration_s"].std(ddof=1)) if t["time_per_iteration_s"].count() > 1 else 0.0
        rows[algo] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _time_plot(table: pd.DataFrame, path: Path, dpi: int) -> None:
    plt = _plt()
    frame = time_breakdown(table)
    algos = list(frame.index)
    xs = np.arange(len(algos))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = np.zeros(len(algos))
    for phase in (*PHASES, "other"):
        values = frame[phase].to_numpy(float)
        if phase == "sync" and not values.any():
            continue  # hf rollouts: no engine to sync
        label = {"score": "score (reward + reference forward)", "train": "train (forward + backward + step)",
                 "other": "other (logging, checkpoints)",
                 "sync": "sync (weights into the vLLM engine)"}.get(phase, phase)
        ax.bar(xs, values, 0.6, bottom=bottom, color=PHASE_COLORS[phase], label=label, edgecolor="white")
        bottom += values
    if (frame["total_std"] > 0).any():
        ax.errorbar(xs, frame["total"], yerr=frame["total_std"], fmt="none", ecolor="black", capsize=4,
                    label="± std of total over seeds")
    ax.set_xticks(xs, [LABELS.get(a, a) for a in algos])
    _color_ticks(ax, algos)
    ax.set_ylabel("time per iteration (s)")
    ax.set_title("Time per iteration by phase (mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _bar_plot(groups: list[tuple[str, pd.DataFrame]], value: str, lo: str | None, hi: str | None, path: Path,
              dpi: int, ylabel: str, title: str, ylim=None, hline=None, spread_label="95% CI (mean of the seeds' bounds)",
              second: tuple[str, str] | None = None) -> None:
    """One bar per algorithm: the mean over seeds, an interval, and a dot per seed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38 if second else 0.6
    seed_label, std_label = "per seed", "± std over seeds"
    for i, (algo, rows) in enumerate(groups):
        vals = rows[value].dropna()
        mean = float(vals.mean())
        x = i - width / 2 if second else i
        ax.bar(x, mean, width, color=COLORS.get(algo, "#aaaaaa"), label=LABELS.get(algo, algo), alpha=0.9)
        if lo and hi and rows[lo].notna().any():
            l_, h_ = float(rows[lo].mean()), float(rows[hi].mean())
            ax.errorbar(x, mean, yerr=[[max(0.0, mean - l_)], [max(0.0, h_ - mean)]], fmt="none", ecolor="black",
                        capsize=5, label=spread_label)
            spread_label = None
        elif len(vals) > 1:  # no interval reported: the spread over seeds, drawn grey to tell it apart
            ax.errorbar(x, mean, yerr=float(vals.std(ddof=1)), fmt="none", ecolor="#555555", capsize=5,
                        linestyle="--", label=std_label)
            std_label = None
        if len(vals) > 1:
            ax.scatter([x] * len(vals), vals, color="black", s=12, zorder=3, label=seed_label)
            seed_label = None
        if second and rows[second[0]].notna().any():
            ax.bar(i + width / 2, float(rows[second[0]].mean()), width, color=COLORS.get(algo, "#aaaaaa"),
                   alpha=0.45, hatch="//", edgecolor="white", label=second[1] if i == 0 else None)
    ax.set_xticks(range(len(groups)), [LABELS.get(a, a) for a, _ in groups])
    _color_ticks(ax, [a for a, _ in groups])
    if hline is not None:
        ax.axhline(hline[0], color="black", linestyle="--", linewidth=1, label=hline[1])
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    algo_labels = {LABELS.get(a, a) for a, _ in groups}
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in algo_labels)  # algorithms first
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# Curves against iterations, wall time and generated tokens (quality per iteration and per generated token).
CURVE_XS = (("step", "step", "iteration"), ("wall_time_s", "time", "wall time"),
            ("generated_tokens", "tokens", "generated tokens"))
PLOT_FILES = (
    "reward_vs_step.png", "reward_vs_time.png", "reward_vs_tokens.png", "kl_vs_step.png", "kl_vs_time.png",
    "gold_vs_step.png", "gold_vs_tokens.png", "memory_by_component.png",
    "time_by_phase.png", "win_rate.png", "mt_bench.png", "heldout_gold_reward.png",
)  # and frontier.png (report/frontier.py), drawn over every value of a sweep


def make_plots(res: SuiteResults, table: pd.DataFrame, out: Path, dpi: int = 110) -> tuple[list[Plot], list[str]]:
    """Every plot the results allow; returns the plots drawn and a line per plot left out (and why)."""
    plots, omitted = [], []
    n_seeds = {a: int(table.loc[table["algorithm"] == a, "trained"].sum()) for a in POLICY_STAGES} if not table.empty else {}

    def not_logged(column, drawn):
        missing = [LABELS[a] for a in ALGORITHMS if res.has(a) and a not in drawn]
        return f" Not logged by: {', '.join(missing)}." if missing else ""

    for column, name, ylabel, what, xs in (
        ("reward_mean", "reward", "training reward (reward-model score, batch mean)", "Training reward", CURVE_XS),
        ("kl", "kl", "KL to the reference policy (nats)", "KL to the reference", CURVE_XS[:2]),
        ("heldout_gold_reward", "gold", "held-out gold reward (greedy answers)", "Held-out gold reward",
         (CURVE_XS[0], CURVE_XS[2])),
    ):
        if not _algorithms_with(res, column, ALGORITHMS):
            omitted.append(f"{what} curves: no algorithm logged `{column}`.")
            continue
        for x, suffix, xtext in xs:
            if x not in res.metrics:
                omitted.append(f"{what} vs {xtext}: metrics have no `{x}`.")
                continue
            drawn = _curve_plot(res, column, x, out / f"{name}_vs_{suffix}.png", dpi, ylabel, f"{what} vs {xtext}")
            plots.append(Plot(f"{name}_vs_{suffix}.png", f"{what} vs {xtext}",
                              f"{what} (`{column}` in metrics.jsonl) against {xtext}: the mean over seeds, "
                              f"shaded between the lowest and highest seed."
                              + (" Seeds are interpolated onto a common time grid." if x != "step" else "")
                              + not_logged(column, drawn)))
    kinds = sorted({str(s["memory_kind"]) for (st, _), s in res.summaries.items()
                    if st in ALGORITHMS and s.get("memory_kind")})
    if any(res.has(a) for a in ALGORITHMS):
        kind_text = " / ".join(KIND_SHORT.get(k, k) for k in kinds) if kinds else "unknown kind"
        _memory_plot(res, out / "memory_by_component.png", dpi, kind_text)
        plots.append(Plot("memory_by_component.png", "Peak memory by component",
                          "Model states measured exactly per component (policy, reference, reward, critic: "
                          "parameters solid, gradients //, optimizer states xx), the rest of the measured peak "
                          f"as '{OTHER_MEMORY}'; the black line is the measured peak ({kind_text}). In MiB, "
                          "mean over seeds."))
        if not time_breakdown(table).empty:
            _time_plot(table, out / "time_by_phase.png", dpi)
            plots.append(Plot("time_by_phase.png", "Time per iteration by phase",
                              "Seconds per iteration spent generating rollouts, scoring them (reward model and "
                              "reference forward passes) and training; 'other' is the rest of the measured time "
                              "per iteration. DPO generates nothing, so it has only a train phase."))
        else:
            omitted.append("Time per iteration: no algorithm reported `time_per_iteration_s`.")
    else:
        omitted.append("Peak memory and time per iteration: no PPO, ReMax or DPO run finished.")

    ev = res.evals
    reference = _reference(res)
    ref_label = LABELS.get(reference, reference)
    if ev.empty:
        omitted.append("Win rate and MT-bench: the eval stage did not run (or did not finish).")
    else:
        wr = [(a, ev[ev["name"] == a]) for a in POLICY_STAGES
              if a != reference and ev.loc[ev["name"] == a, "win_rate_pct"].notna().any()]
        if wr:
            lc = ev["lc_win_rate_pct"].notna().any()
            _bar_plot(wr, "win_rate_pct", "win_rate_ci_lo_pct", "win_rate_ci_hi_pct", out / "win_rate.png", dpi,
                      f"win rate against {ref_label} (%)", f"AlpacaEval-style win rate against {ref_label}",
                      ylim=(0, 100), hline=(50, "tie"), second=("lc_win_rate_pct", "length-controlled") if lc else None)
            plots.append(Plot("win_rate.png", f"Win rate against {ref_label}",
                              f"Share of prompts where the algorithm's answer beats {ref_label}'s (ties count half), "
                              "mean over eval seeds; the error bar spans the mean of the seeds' 95% confidence "
                              "bounds (dashed grey: ± std over seeds where no interval was reported), dots are "
                              "single seeds" + ("; hatched bars: length-controlled win rate." if lc else ".")
                              + (f" Judge: {_eval_judge(res)}." if _eval_judge(res) else "")))
        else:
            omitted.append("Win rate: the eval stage reported no win rates.")
        mt = [(a, ev[ev["name"] == a]) for a in POLICY_STAGES if ev.loc[ev["name"] == a, "mt_bench_score"].notna().any()]
        if mt:
            _bar_plot(mt, "mt_bench_score", "mt_bench_ci_lo", "mt_bench_ci_hi", out / "mt_bench.png", dpi,
                      "MT-bench score (1–10)", "MT-bench score (single-answer grading, both turns)", ylim=(0, 10))
            plots.append(Plot("mt_bench.png", "MT-bench score",
                              "Mean score on a 1–10 scale over both turns, mean over eval seeds; the error bar "
                              "spans the mean of the seeds' 95% confidence bounds (dashed grey: ± std over seeds "
                              "where no interval was reported), dots are single seeds."
                              + (f" Judge: {_eval_judge(res)}." if _eval_judge(res) else "")))
        else:
            omitted.append("MT-bench: the eval stage reported no MT-bench scores.")

    gold = [(a, table[table["algorithm"] == a]) for a in POLICY_STAGES
            if not table.empty and "heldout_gold_reward" in table
            and table.loc[table["algorithm"] == a, "heldout_gold_reward"].notna().any()]
    if gold:
        values = pd.concat([g["heldout_gold_reward"] for _, g in gold]).dropna()
        ylim = (0, 1.05) if values.between(0, 1).all() else None
        with_ci = []
        for algo, rows in gold:  # the 95% interval over seeds of the mean (rliable's bootstrap), as in the tables
            interval = uncertainty.mean_interval(rows["heldout_gold_reward"].dropna().to_numpy(float))
            with_ci.append((algo, rows.assign(gold_ci_lo=interval.lo, gold_ci_hi=interval.hi)))
        _bar_plot(with_ci, "heldout_gold_reward", "gold_ci_lo", "gold_ci_hi", out / "heldout_gold_reward.png", dpi,
                  "held-out gold reward (0–1)", "Held-out gold reward (greedy answers)", ylim=ylim,
                  spread_label="95% interval over seeds")
        plots.append(Plot("heldout_gold_reward.png", "Held-out gold reward",
                          "Mean gold-scorer reward of greedy answers to held-out prompts (the synthetic task's "
                          "true answer to 'did RL help?'); bars are the mean over seeds, the error bar its 95% "
                          "interval over seeds (rliable's stratified bootstrap; two seeds: their range), dots "
                          f"single seeds ({', '.join(f'{LABELS[a]}: {n_seeds.get(a, 0)}' for a, _ in gold)} seeds)."))
    else:
        omitted.append("Held-out gold reward: no stage reported `heldout_gold_reward` (data not synthetic).")
    return plots, omitted
