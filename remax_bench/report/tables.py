"""The report's tables: key figures per algorithm and seed, means over seeds, this run beside the paper, what
differed between the algorithms' configurations, the environment."""

from __future__ import annotations

import json
import math

import pandas as pd

from remax_bench import comparison, uncertainty
from remax_bench.comparison import PAPER
from remax_bench.core import algorithms as registry
from remax_bench.core.identity import project, stage_reads
from remax_bench.core.reads import covers
from remax_bench.evaluation.unjudged import unjudged_note
from remax_bench.report.load import (
    ALGORITHMS,
    COMPARED_BLOCKS,
    LABELS,
    MEMORY_KIND_TEXT,
    MIB,
    PHASES,
    POLICY_STAGES,
    STATE_KINDS,
    SuiteResults,
    _num_or_nan,
    latest_manifest,
)


# -- key figures ---------------------------------------------------------------------------------
def _tail_mean(series: pd.Series, fraction: float = 0.1) -> float:
    values = series.dropna()
    if values.empty:
        return math.nan
    n = max(1, math.ceil(len(values) * fraction))
    return float(values.iloc[-n:].mean())


def _metric_rows(res: SuiteResults, stage: str, seed: int) -> pd.DataFrame:
    m = res.metrics
    if m.empty:
        return m
    rows = m[(m["stage"] == stage) & (m["seed"] == seed)]
    return rows.sort_values("step") if "step" in rows else rows


def phase_times(summary: dict, steps: pd.DataFrame) -> dict[str, float]:
    """Seconds per iteration in each phase.

    The summary's ``time_split_s`` is used when present: per iteration when its sum is about the time per
    iteration, else treated as totals and divided by the iterations. Otherwise the mean of the per-step
    ``time_<phase>_s`` columns of metrics.jsonl.
    """
    split = summary.get("time_split_s")
    if isinstance(split, dict) and any(isinstance(split.get(p), (int, float)) for p in PHASES):
        values = {p: _num_or_nan(split.get(p)) for p in PHASES}
        total = sum(v for v in values.values() if not math.isnan(v))
        per_iter = _num_or_nan(summary.get("time_per_iteration_s"))
        iterations = _num_or_nan(summary.get("iterations"))
        if not math.isnan(per_iter) and iterations and iterations > 1 and total > 1.5 * per_iter:
            values = {p: v / iterations for p, v in values.items()}
        return values
    return {p: float(steps[f"time_{p}_s"].mean()) if f"time_{p}_s" in steps else math.nan for p in PHASES}


def _component_bytes(summary: dict) -> dict[str, dict[str, float]]:
    states = summary.get("model_state_bytes")
    if not isinstance(states, dict):
        return {}
    return {c: {k: _num_or_nan(v.get(k)) if isinstance(v, dict) else math.nan for k in STATE_KINDS}
            for c, v in states.items()}


def _state_total(summary: dict) -> float:
    total = _num_or_nan(summary.get("model_state_total_bytes"))
    if math.isnan(total):
        parts = [v for comp in _component_bytes(summary).values() for v in comp.values() if not math.isnan(v)]
        total = float(sum(parts)) if parts else math.nan
    return total


def summary_table(res: SuiteResults) -> pd.DataFrame:
    """One row per algorithm (sft, ppo, remax, dpo) and seed: the key figures and the ratios against PPO.

    ``final_reward_mean`` and ``final_kl`` are the stage's own summary figures when it reports them, else the
    mean over the last 10% of logged steps. Ratios against PPO use PPO's run with the same seed (else the
    mean over PPO's seeds): saving % = 100 (1 - x / PPO), speed-up = PPO time per iteration / x.
    """
    rows = []
    for (stage, seed), summary in sorted(res.summaries.items()):
        if stage not in POLICY_STAGES:
            continue
        steps = _metric_rows(res, stage, seed)
        final_reward = _num_or_nan(summary.get("final_reward_mean"))
        if math.isnan(final_reward) and "reward_mean" in steps:
            final_reward = _tail_mean(steps["reward_mean"])
        final_kl = _num_or_nan(summary.get("final_kl", summary.get("final_kl_mean")))
        if math.isnan(final_kl) and "kl" in steps:
            final_kl = _tail_mean(steps["kl"])
        per_iter = _num_or_nan(summary.get("time_per_iteration_s"))
        if math.isnan(per_iter) and "time_step_s" in steps:
            per_iter = float(steps["time_step_s"].mean())
        tokens = _num_or_nan(summary.get("tokens_per_second"))
        if math.isnan(tokens) and "tokens_per_second" in steps:
            tokens = float(steps["tokens_per_second"].mean())
        row = {
            "algorithm": stage,
            "seed": seed,
            "trained": True,  # a stage result (eval-only rows of a checkpoint trained under another seed: False)
            "iterations": _num_or_nan(summary.get("iterations")),
            "wall_time_s": _num_or_nan(summary.get("wall_time_s")),
            "heldout_gold_reward": _num_or_nan(summary.get("heldout_gold_reward")),
            "final_reward_mean": final_reward,
            "final_kl": final_kl,
            "peak_memory_mib": _num_or_nan(summary.get("peak_memory_bytes")) / MIB,
            "memory_kind": summary.get("memory_kind", ""),
            "model_state_mib": _state_total(summary) / MIB,
            "time_per_iteration_s": per_iter,
            **{f"time_{p}_s": v for p, v in phase_times(summary, steps).items()},
            "tokens_per_second": tokens,
            # Generation time per generated token: what the rollout backend (hf or vllm) costs.
            "generate_ms_per_token": _num_or_nan(summary.get("generate_ms_per_token")),
            "rollout_backend": (summary.get("rollout_engine") or {}).get("backend", "hf")
            if stage in registry.online() else "",
            **_per_token(summary, steps, tokens),
        }
        for comp, kinds in _component_bytes(summary).items():
            row[f"model_state_{comp}_mib"] = sum(v for v in kinds.values() if not math.isnan(v)) / MIB
        rows.append(row)
    table = pd.DataFrame(rows)
    if not res.evals.empty:
        ev = res.evals.drop(columns=["reference"]).rename(columns={"name": "algorithm"})
        ev = ev[ev["algorithm"].isin(POLICY_STAGES)]
        table = ev if table.empty else table.merge(ev, on=["algorithm", "seed"], how="outer")
    if table.empty:
        return table
    table["trained"] = table["trained"].astype("boolean").fillna(False).astype(bool) if "trained" in table else False
    table = _add_ratios(table)
    order = {a: i for i, a in enumerate(POLICY_STAGES)}
    table = table.sort_values(["algorithm", "seed"], key=lambda s: s.map(order) if s.name == "algorithm" else s)
    return table.reset_index(drop=True)


def _per_token(summary: dict, steps: pd.DataFrame, tokens_per_second: float) -> dict[str, float]:
    """Cost and quality per generated token (every generated answer, greedy baselines included), so that
    algorithms that draw different numbers of answers per prompt compare at equal generation cost."""
    generated = _num_or_nan(summary.get("generated_tokens"))
    if math.isnan(generated) and "tokens" in steps and steps["tokens"].notna().any():
        generated = float(steps["tokens"].sum())
    gain = _num_or_nan(summary.get("heldout_gold_reward")) - _num_or_nan(summary.get("heldout_gold_reward_before"))
    generates = not math.isnan(generated) and tokens_per_second > 0  # SFT and DPO generate nothing
    return {
        "generated_tokens": generated,
        "time_per_1k_generated_tokens_s": 1000.0 / tokens_per_second if generates else math.nan,
        "gold_gain_per_10k_tokens": 1e4 * gain / generated if generated > 0 else math.nan,
    }


def _add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for col in ("peak_memory_saving_vs_ppo_pct", "model_state_saving_vs_ppo_pct", "speedup_vs_ppo_x"):
        table[col] = math.nan
    if "peak_memory_mib" not in table:
        return table
    ppo = table[table["algorithm"] == comparison.BASELINE].set_index("seed")
    if ppo.empty:
        return table
    for i, row in table.iterrows():
        if row["algorithm"] not in ALGORITHMS:
            continue
        base = ppo.loc[row["seed"]] if row["seed"] in ppo.index else ppo.mean(numeric_only=True)
        table.loc[i, "peak_memory_saving_vs_ppo_pct"] = 100.0 * comparison.saving(row["peak_memory_mib"],
                                                                                  base["peak_memory_mib"])
        table.loc[i, "model_state_saving_vs_ppo_pct"] = 100.0 * comparison.saving(row["model_state_mib"],
                                                                                  base["model_state_mib"])
        table.loc[i, "speedup_vs_ppo_x"] = comparison.speedup(row["time_per_iteration_s"],
                                                              base["time_per_iteration_s"])
    return table


def ratios_vs_ppo(table: pd.DataFrame, algorithm: str = registry.FOCUS) -> dict[str, float]:
    """Ratio of the seed means against PPO: memory saving (%) and speed-up (x); {} without both."""
    if table.empty or not {comparison.BASELINE, algorithm} <= set(table["algorithm"]):
        return {}
    means = table.groupby("algorithm")[["peak_memory_mib", "model_state_mib", "time_per_iteration_s"]].mean()
    ppo, other = means.loc[comparison.BASELINE], means.loc[algorithm]
    return {
        "peak_memory_saving_pct": 100.0 * comparison.saving(other.peak_memory_mib, ppo.peak_memory_mib),
        "model_state_saving_pct": 100.0 * comparison.saving(other.model_state_mib, ppo.model_state_mib),
        "speedup_x": comparison.speedup(other.time_per_iteration_s, ppo.time_per_iteration_s),
    }


# -- formatting ----------------------------------------------------------------------------------
def _decimals(x: float) -> int:
    """About three significant digits, one decimal from 100 up."""
    a = abs(x)
    if a >= 100:
        return 1
    if a >= 1:
        return 2
    return 3 if a == 0 else min(6, 2 - math.floor(math.log10(a)))


def _num(x: float, decimals: int | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{_decimals(x) if decimals is None else decimals}f}"


def interval_text(estimate: uncertainty.Interval) -> str:
    """'point [lo, hi]' (the bounds with the point's decimals); the value alone for one seed; '–' for none."""
    if estimate.n == 0 or math.isnan(estimate.point):
        return "–"
    if not estimate.has_interval:
        return _num(estimate.point)
    decimals = _decimals(estimate.point)
    return f"{_num(estimate.point, decimals)} [{_num(estimate.lo, decimals)}, {_num(estimate.hi, decimals)}]"


def _mean_ci(values: pd.Series) -> str:
    """'mean [95% CI]' over seeds (rliable's stratified bootstrap); the value alone for one seed."""
    return interval_text(uncertainty.mean_interval(values.dropna().to_numpy(float)))


AGG_COLUMNS = [
    ("held-out gold reward", "heldout_gold_reward"),
    ("KL to the reference at the end", "final_kl"),
    ("final reward", "final_reward_mean"),
    ("peak memory (MiB)", "peak_memory_mib"),
    ("model states (MiB)", "model_state_mib"),
    ("time / iteration (s)", "time_per_iteration_s"),
    ("tokens / s", "tokens_per_second"),
    ("generated tokens", "generated_tokens"),
    ("time / 1k generated tokens (s)", "time_per_1k_generated_tokens_s"),
    ("generation ms / token", "generate_ms_per_token"),
    ("held-out gold gain / 10k generated tokens", "gold_gain_per_10k_tokens"),
    ("win rate vs {ref} (%)", "win_rate_pct"),
    ("length-controlled win rate vs {ref} (%)", "lc_win_rate_pct"),
    ("MT-bench (1–10)", "mt_bench_score"),
    ("unjudged AlpacaEval pairs", "n_unjudged"),
    ("unjudged MT-bench turns", "mt_bench_n_unjudged"),
]


# A figure that rests on a judge's verdicts -> (its unjudged count, its item count, what an item is)
JUDGED = {"win_rate_pct": ("n_unjudged", "n", "pairs"), "lc_win_rate_pct": ("n_unjudged", "n", "pairs"),
          "mt_bench_score": ("mt_bench_n_unjudged", "mt_bench_n_judgments", "turns")}
NOT_ESTIMABLE = "not estimable (see the notes)"


def judged_figure(rows: pd.DataFrame, col: str, text: str | None = None) -> str:
    """A judged figure (``text``: its mean [95% CI] over seeds), with the unjudged items it leaves out beside it,
    and 'not estimable' for a length-controlled win rate whose fit measures nothing."""
    if text is None:
        text = _mean_ci(rows[col]) if col in rows else "–"
    if col == "lc_win_rate_pct" and text == "–" and "lc_not_estimable" in rows and rows["lc_not_estimable"].notna().any():
        return NOT_ESTIMABLE
    unjudged, total, noun = JUDGED[col]
    if text == "–" or unjudged not in rows or total not in rows:
        return text
    note = unjudged_note(rows[unjudged].sum(), rows[total].sum(), noun)
    return f"{text} {note}" if note else text


def judging_notes(table: pd.DataFrame) -> list[str]:
    """The reasons behind every 'not estimable' of the summary table, one line per algorithm."""
    if table.empty or "lc_not_estimable" not in table:
        return []
    lines = []
    for algo in [a for a in POLICY_STAGES if a in set(table["algorithm"])]:
        rows = table[(table["algorithm"] == algo) & table["lc_not_estimable"].notna()]
        if not rows.empty and rows["lc_win_rate_pct"].isna().all():
            seeds = ", ".join(str(int(s)) for s in rows["seed"])
            why = rows["lc_not_estimable"].iloc[0]
            lines.append(f"{LABELS.get(algo, algo)} length-controlled win rate (seed {seeds}): {why}")
    return lines


def aggregate_table(table: pd.DataFrame, reference: str = "sft") -> pd.DataFrame:
    """The mean over seeds per algorithm with its 95% interval (rliable's stratified bootstrap over the seeds), as
    display strings (the table of summary.md and index.html). A judged figure carries its unjudged count beside
    it."""
    out = []
    for algo in [a for a in POLICY_STAGES if not table.empty and a in set(table["algorithm"])]:
        rows = table[table["algorithm"] == algo]
        line = {"algorithm": LABELS.get(algo, algo), "seeds": int(rows["trained"].sum())}
        columns = [col for _, col in AGG_COLUMNS if col in rows]
        means, _ = uncertainty.summarise(rows[columns].to_numpy(float)) if columns else ([], [])
        estimates = dict(zip(columns, means))
        for title, col in AGG_COLUMNS:
            cell = interval_text(estimates[col]) if col in estimates else "–"
            if col in JUDGED:
                cell = judged_figure(rows, col, cell)
            line[title.format(ref=LABELS.get(reference, reference))] = cell
        out.append(line)
    return pd.DataFrame(out)


def paper_table(table: pd.DataFrame, judge: str | None, reference: str = "sft") -> pd.DataFrame:
    """This run's algorithms against PPO, beside the paper's figures (labelled as the paper's)."""
    ran = set(table["algorithm"]) if not table.empty else set()
    # The algorithms this run has beside PPO (the paper's algorithm always gets a column).
    compared = [a for a in ALGORITHMS if a != comparison.BASELINE and (a in ran or a == registry.FOCUS)]
    ratios = {a: ratios_vs_ppo(table, a) for a in compared}

    def pct(r, key):
        if not r:
            return "– (needs PPO and this algorithm)"
        return f"{r[key]:.1f}%" if not math.isnan(r[key]) else "–"

    def times(r):
        if not r:
            return "– (needs PPO and this algorithm)"
        return f"{r['speedup_x']:.2f}x" if not math.isnan(r["speedup_x"]) else "–"

    def per_seed(algo, col, fmt):
        """The per-seed ratios' 95% interval over seeds (the paper's algorithm: also each seed's ratio)."""
        if table.empty or col not in table:
            return ""
        vals = table[(table["algorithm"] == algo)][col].dropna()
        if len(vals) < 2:
            return ""
        interval = uncertainty.mean_interval(vals.to_numpy(float))
        bounds = f"95% interval over seeds [{fmt.format(interval.lo)}, {fmt.format(interval.hi)}]"
        if algo != registry.FOCUS:
            return f" ({bounds})"
        return " (per seed: " + ", ".join(fmt.format(v) for v in vals) + f"; {bounds})"

    judged = f" (judge: {judge})" if judge else ""
    ref = LABELS.get(reference, reference)

    def quality(algo, col, text):
        rows_ = table[table["algorithm"] == algo] if not table.empty and col in table else None
        value = _mean_ci(rows_[col]) if rows_ is not None else "–"
        if value == "–":
            return f"– (no eval result for {LABELS[algo]})"
        unjudged, total, noun = JUDGED[col]
        note = unjudged_note(rows_[unjudged].sum(), rows_[total].sum(), noun) if unjudged in rows_ else ""
        return f"{LABELS[algo]} {value}{text}{judged}" + (f" {note}" if note else "")

    paper_col = f"paper ({PAPER['citation']}): ReMax"
    figures = [
        ("peak memory saving vs PPO", lambda a: pct(ratios[a], "peak_memory_saving_pct")
         + per_seed(a, "peak_memory_saving_vs_ppo_pct", "{:.1f}%"),
         f"~{PAPER['memory_saving_pct']:.0f}% less GPU memory ({PAPER['setting']})"),
        ("model-state bytes saving vs PPO", lambda a: pct(ratios[a], "model_state_saving_pct")
         + per_seed(a, "model_state_saving_vs_ppo_pct", "{:.1f}%"),
         "– (the paper reports total GPU memory)"),
        ("speed-up vs PPO (PPO time per iteration / its time per iteration)",
         lambda a: times(ratios[a]) + per_seed(a, "speedup_vs_ppo_x", "{:.2f}x"),
         f"~{PAPER['speedup_x']}x faster training ({PAPER['setting']})"),
        ("AlpacaEval-style win rate (%)", lambda a: quality(a, "win_rate_pct", f" against {ref}"),
         f"{PAPER['alpaca_eval_win_rate_pct']}% (Mistral-7B, against the AlpacaEval leaderboard reference)"),
        ("MT-bench score (1–10)", lambda a: quality(a, "mt_bench_score", ""),
         f"{PAPER['mt_bench']} (Mistral-7B, GPT-4 judge)"),
    ]
    rows = [{"figure": figure, **{f"this run: {LABELS[a]}": cell(a) for a in compared}, paper_col: paper}
            for figure, cell, paper in figures]
    return pd.DataFrame(rows)


def _flatten(d, prefix="") -> dict[str, str]:
    out = {}
    for key, value in (d or {}).items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = json.dumps(value, sort_keys=True)
    return out


def what_differed(manifests: dict[tuple[str, int], dict], algorithms=ALGORITHMS) -> list[str]:
    """Differences between the algorithms' resolved models / data / shared / runtime blocks ([] = none).

    Each line names the field and which algorithm and seed had which value. A field is compared among the
    runs that read it (remax_bench.core.identity): DPO kept from an earlier run reads no ``data.prompts``, so
    a changed prompt set, which reran the online algorithms, is no difference between them and DPO.
    """
    flat, reads, lines = {}, {}, []
    for (stage, seed), manifest in sorted(manifests.items()):
        if stage not in algorithms:
            continue
        suite = manifest.get("config", {}).get("suite") if isinstance(manifest.get("config"), dict) else None
        if not isinstance(suite, dict):
            lines.append(f"{stage}/seed{seed}: its manifest records no resolved suite, so it could not be compared")
            continue
        # Compared among the runs that read a field, so trackers (which watch a run) are never a difference.
        run = f"{stage}/seed{seed}"
        flat[run] = {k: v for block in COMPARED_BLOCKS for k, v in _flatten(suite.get(block), block + ".").items()}
        reads[run] = stage_reads(stage)
    keys = sorted({k for f in flat.values() for k in f})
    for key in keys:
        groups: dict[str, list[str]] = {}
        for run, values in flat.items():
            if covers(reads[run], key):
                groups.setdefault(values.get(key, "<absent>"), []).append(run)
        if len(groups) > 1:
            lines.append(f"{key}: " + "; ".join(f"{value} ({', '.join(runs)})" for value, runs in groups.items()))
    return lines


def override_lines(manifests: dict[tuple[str, int], dict]) -> list[str]:
    """The --set overrides the stages ran with (recorded in their configs): one line, or none without any."""
    groups: dict[str, list[str]] = {}
    for (stage, seed), manifest in sorted(manifests.items()):
        overrides = (manifest.get("config") or {}).get("overrides") or []
        groups.setdefault(" ".join(f"--set {o}" for o in overrides) or "none", []).append(f"{stage}/seed{seed}")
    if set(groups) <= {"none"}:
        return []
    title = "command-line overrides of the suite file"
    if len(groups) == 1:
        return [f"{title}: {next(iter(groups))} (every stage)"]
    return [f"{title} DIFFERS: " + "; ".join(f"{text} ({', '.join(runs)})" for text, runs in groups.items())]


def _plain(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def environment_lines(res: SuiteResults) -> list[str]:
    """Device and memory kind of the algorithms' runs, and whether they differ (then ratios mislead)."""
    lines = []
    frame = res.stages[res.stages["stage"].isin(ALGORITHMS)] if not res.stages.empty else res.stages
    if frame.empty:
        return ["no algorithm finished, so nothing to compare"]
    for col, title in (("device", "device"), ("device_name", "device name"), ("memory_kind", "peak memory"),
                       ("torch_threads", "torch threads")):
        if col not in frame:
            continue
        values = frame[[col, "stage", "seed"]].dropna(subset=[col])
        if values.empty:
            continue
        values = values.assign(**{col: values[col].map(_plain)})
        distinct = sorted(values[col].unique())
        if len(distinct) == 1:
            text = distinct[0]
            if col == "memory_kind":
                text = f"{text}: {MEMORY_KIND_TEXT.get(text, text)}"
            lines.append(f"{title}: {text} (all algorithms)")
        else:
            runs = {v: ", ".join(f"{r.stage}/seed{r.seed}" for r in values[values[col] == v].itertuples())
                    for v in distinct}
            by = "; ".join(f"{v} ({r})" for v, r in runs.items())
            lines.append(f"{title} DIFFERS: {by} — ratios across these runs are not like for like")
    return lines


def preparation_lines(res: SuiteResults) -> list[str]:
    """What the shared starting points (SFT model, reward model) reached on their held-out data."""
    lines = []
    for (stage, seed), summary in sorted(res.summaries.items()):
        key = {"sft": "heldout_loss", "reward_model": "heldout_accuracy"}.get(stage)
        if key is None or not isinstance(summary.get(key), (int, float)):
            continue
        what = "held-out loss" if stage == "sft" else "held-out pairwise accuracy"
        before = summary.get(f"{key}_before")
        lines.append(f"{LABELS.get(stage, stage)} (seed {seed}): {what} {_num(float(summary[key]))}"
                     + (f" ({_num(float(before))} before training)" if isinstance(before, (int, float)) else ""))
    return lines


def _suite_hashes(res: SuiteResults, skip=()) -> str:
    """The suite's config hash. Stages recorded under another suite config are named with theirs, unless every
    field they read equals the latest config's: those were kept by a re-run that changed none of them. The
    stages in ``skip`` are left out (a sweep's preparation stages, shared by its values)."""
    newest = latest_manifest(res.manifests)
    latest, current = (newest["config"]["suite"], newest.get("suite_hash")) if newest else (None, None)
    hashes: dict[str, list[str]] = {}
    kept = []
    for (stage, seed), m in sorted(res.manifests.items()):
        if not m.get("suite_hash") or stage in skip:
            continue
        config = m.get("config") if isinstance(m.get("config"), dict) else {}
        if m["suite_hash"] != current and latest is not None and isinstance(config.get("suite"), dict) \
                and project(config["suite"], stage_reads(stage)) == project(latest, stage_reads(stage)):
            kept.append(f"{stage}/seed{seed}")
            continue
        hashes.setdefault(m["suite_hash"], []).append(f"{stage}/seed{seed}")
    if not hashes:
        return "unknown"
    if len(hashes) > 1:
        return "several: " + "; ".join(f"{h} ({', '.join(runs)})" for h, runs in hashes.items())
    only = next(iter(hashes))
    return only + (f" ({', '.join(kept)} kept from an earlier config: the fields they read are unchanged)" if kept else "")


def _eval_judge(res: SuiteResults) -> str | None:
    for (stage, _), m in res.manifests.items():
        if stage == "eval":
            judge = (m.get("config", {}).get("suite", {}) or {}).get("eval", {}).get("judge", {})
            if isinstance(judge, dict) and judge.get("type"):
                return judge["type"] + (f" ({judge['model']})" if judge.get("model") else "")
    return None


def _reference(res: SuiteResults) -> str:
    if not res.evals.empty and res.evals["reference"].notna().any():
        return str(res.evals["reference"].dropna().iloc[0])
    return "sft"


# -- the KL treatment ----------------------------------------------------------------------------
def _kl_of(record) -> registry.KL | None:
    try:
        return registry.KL.model_validate(record) if isinstance(record, dict) else None
    except ValueError:
        return None


def kl_treatments(res: SuiteResults) -> tuple[str, dict[str, str]]:
    """(shared.kl in words, {algorithm label: how its KL treatment differs}) over the online algorithms' runs: each
    run's treatment as its summary records it (else as its manifest's suite resolves it), against shared.kl."""
    shared, departures = None, {}
    for (stage, seed), summary in sorted(res.summaries.items()):
        if stage not in registry.online():
            continue
        suite = (res.manifests.get((stage, seed), {}).get("config") or {}).get("suite") or {}
        shared_kl = _kl_of((suite.get("shared") or {}).get("kl", {}))
        shared = shared or shared_kl
        treatment = _kl_of(summary.get("kl_treatment"))
        if treatment is None and suite:
            try:
                from remax_bench.core.config import Suite

                treatment = Suite.model_validate(suite).kl_treatment(stage)
            except ValueError:  # an older suite schema: the treatment is unknown, not a departure
                treatment = None
        if treatment is not None and shared_kl is not None and treatment != shared_kl:
            departures[LABELS[stage]] = f"{treatment.describe()} (shared.kl: {shared_kl.describe()})"
    return (shared.describe() if shared else "unknown"), departures


def kl_lines(res: SuiteResults) -> list[str]:
    """The KL regularisation every online algorithm trained with, and each comparison that is not matched."""
    shared, departures = kl_treatments(res)
    if not any(stage in registry.online() for stage, _ in res.summaries):
        return []
    if not departures:
        return [f"KL regularisation: matched, every online algorithm trained with shared.kl ({shared})"]
    return [f"NOT MATCHED: {label} regularised with its own KL, {how}; its comparison with the others is not on "
            "equal terms" for label, how in departures.items()]
