"""The headline comparison: the quality figure at equal iterations and at equal KL to the reference, each with its
95% interval over seeds, and every algorithm against ReMax: the probability of improvement, and in words whether
this number of seeds tells the two apart (remax_bench.uncertainty)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from remax_bench import uncertainty
from remax_bench.core import algorithms as registry
from remax_bench.report.frontier import GOLD, Frontier
from remax_bench.report.load import LABELS, POLICY_STAGES, SuiteResults
from remax_bench.report.tables import interval_text, kl_treatments

# The quality figure of a suite: the gold scorer's where the task has one, else the judge's.
QUALITY = (("heldout_gold_reward", GOLD), ("mt_bench_score", "MT-bench score"), ("win_rate_pct", "win rate (%)"))
JUDGED = (("win_rate_pct", "win rate (%)"), ("mt_bench_score", "MT-bench score"))
IQM_FROM = 4  # below 4 seeds the interquartile mean cuts nothing: it is the mean


@dataclass
class Headline:
    quality: str  # the figure compared
    table: pd.DataFrame  # display strings, one row per algorithm
    improvement: pd.DataFrame  # P(algorithm > ReMax) per figure, display strings
    words: list[str] = field(default_factory=list)  # each algorithm against ReMax, in words
    notes: list[str] = field(default_factory=list)


def quality_column(tables: list[pd.DataFrame]) -> tuple[str, str]:
    for column, name in QUALITY:
        if any(column in t and t[column].notna().any() for t in tables):
            return column, name
    return QUALITY[0]


def per_seed(table: pd.DataFrame, algorithm: str, column: str) -> pd.Series:
    """An algorithm's figure per seed (NaN-free), from its own runs (and, for the reference, its eval rows)."""
    if table.empty or column not in table:
        return pd.Series(dtype=float)
    rows = table[table["algorithm"] == algorithm]
    if algorithm in registry.REGISTRY and "trained" in rows:
        rows = rows[rows["trained"]]
    return rows.set_index("seed")[column].dropna().astype(float)


def _suffix(res: SuiteResults, sweep: bool) -> str:
    return f" ({res.variant})" if sweep else ""


def build_headline(views: list[SuiteResults], tables: list[pd.DataFrame], frontier: Frontier) -> Headline:
    column, quality = quality_column(tables)
    sweep = len(views) > 1 or bool(views[0].variant)
    present = [a for a in POLICY_STAGES if any(a in set(t["algorithm"]) for t in tables if not t.empty)]
    seeds = {a: max((len(per_seed(t, a, column)) for t in tables), default=0) for a in present}
    show_iqm = any(n >= IQM_FROM for a, n in seeds.items() if a in registry.REGISTRY)
    equal_kl = frontier.at_equal_kl
    kl_title = f"{frontier.score} at equal KL ({frontier.equal_kl:.3g} nats)" if not math.isnan(frontier.equal_kl) \
        else None
    departures = {label: how for res in views for label, how in kl_treatments(res)[1].items()}
    rows = []
    for algo in present:
        row = {"algorithm": LABELS.get(algo, algo), "seeds": seeds[algo]}
        for res, table in zip(views, tables):
            values = per_seed(table, algo, column).to_numpy()
            means, iqms = uncertainty.summarise(values[:, None]) if values.size else ([uncertainty.NO_RUNS],) * 2
            row[f"{quality} at equal iterations{_suffix(res, sweep)}"] = interval_text(means[0])
            if show_iqm:
                row[f"IQM{_suffix(res, sweep)}"] = interval_text(iqms[0])
            kl = per_seed(table, algo, "final_kl").to_numpy()
            row[f"KL at the end{_suffix(res, sweep)}"] = "0 (the reference)" if algo == "sft" else \
                interval_text(uncertainty.mean_interval(kl)) if kl.size else "–"
        if kl_title:
            scores = equal_kl[equal_kl["algorithm"] == algo]["score"].to_numpy(float) if not equal_kl.empty else []
            row[kl_title] = interval_text(uncertainty.mean_interval(scores)) if len(scores) else "–"
        if departures:
            row["KL treatment"] = f"NOT MATCHED: {departures[row['algorithm']]}" if row["algorithm"] in departures \
                else "shared" if algo in registry.online() else "–"
        rows.append(row)
    headline = Headline(quality, pd.DataFrame(rows), pd.DataFrame())
    if not show_iqm:
        headline.notes.append(f"The interquartile mean is left out: below {IQM_FROM} seeds it cuts no seed and is the "
                              "mean.")
    _improvements(headline, views, tables, column, frontier, sweep)
    return headline


def _improvements(headline: Headline, views, tables, column: str, frontier: Frontier, sweep: bool) -> None:
    """P(algorithm > ReMax) on every quality figure, with intervals and in words."""
    focus = registry.FOCUS
    figures = []  # (title, {algorithm: per-seed values})
    for res, table in zip(views, tables):
        columns = [(column, headline.quality)] + [(c, n) for c, n in JUDGED if c != column]
        for col, name in columns:
            values = {a: per_seed(table, a, col).to_numpy() for a in registry.NAMES}
            if values[focus].size:
                figures.append((f"{name} at equal iterations{_suffix(res, sweep)}", values))
    if not math.isnan(frontier.equal_kl) and not frontier.at_equal_kl.empty:
        at = frontier.at_equal_kl
        values = {a: at[at["algorithm"] == a]["score"].dropna().to_numpy(float) for a in registry.NAMES}
        if values[focus].size:
            figures.append((f"{frontier.score} at equal KL ({frontier.equal_kl:.3g} nats)", values))
    if not figures:
        headline.notes.append(f"No algorithm is compared with {LABELS[focus]}: {LABELS[focus]} has no result with a "
                              "quality figure.")
        return
    rows = []
    for algo in registry.NAMES:
        if algo == focus:
            continue
        row = {"algorithm": LABELS[algo]}
        for title, values in figures:
            x, y = values[algo], values[focus]
            if not x.size:
                row[title] = "–"
                continue
            poi = uncertainty.probability_of_improvement(x[:, None], y[:, None])[0]
            row[title] = f"{poi.point:.2f}" + (f" [{poi.lo:.2f}, {poi.hi:.2f}]" if poi.has_interval else "")
            headline.words.append(uncertainty.order_in_words(LABELS[algo], LABELS[focus], title, poi, x.size, y.size))
        if any(value != "–" for key, value in row.items() if key != "algorithm"):
            rows.append(row)
    headline.improvement = pd.DataFrame(rows)
