"""`remax-bench report`: results/<suite>/ -> reports/<suite>/ (tables, plots and one HTML page).

Every complete stage directory (``results/<suite>/<stage>/seed<k>/``) is read into tidy pandas frames:
one row per stage and seed (summary.json flattened, plus the manifest's device and hashes), one row per
logged step (metrics.jsonl), one row per evaluated checkpoint and eval seed (the eval stage's ``rows``).
From those the report writes

```
reports/<suite>/
  summary.csv    one row per algorithm and seed: the key figures, and the ratios against PPO
  summary.md     mean ± std over seeds per algorithm, ReMax (and DPO) against PPO beside the paper's figures,
                 what differed between the algorithms' configurations, failed or missing stages, the plots
  *.png          reward and KL against step and wall time, peak memory by component, time per iteration by
                 phase, win rate and MT-bench score (when eval ran), held-out gold reward
  index.html     all of the above on one self-contained page (PNGs linked relatively)
```

Ratios against PPO are formed within one results directory only: the same machine, the same shared block.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from remax_bench import algorithms, comparison, results
from remax_bench.comparison import PAPER

MIB = 2**20
ALGORITHMS = algorithms.NAMES
POLICY_STAGES = ("sft", *ALGORITHMS)  # stages that produce a policy (rows of summary.csv)
LABELS = {stage: algorithms.label(stage) for stage in (*algorithms.PREPARATION_STAGES, *ALGORITHMS)}
# One colour per algorithm, the same in every plot.
COLORS = {"sft": "#7f7f7f", **{a.name: a.color for a in algorithms.REGISTRY.values()}}
COMPONENT_COLORS = {"policy": "#9467bd", "reference": "#8c564b", "reward": "#bcbd22", "critic": "#17becf"}
STATE_KINDS = ("params", "grads", "optimizer")
KIND_STYLE = {"params": (1.0, ""), "grads": (0.7, "//"), "optimizer": (0.45, "xx")}  # (alpha, hatch)
PHASES = ("generate", "score", "train")
PHASE_COLORS = {"generate": "#ff7f0e", "score": "#bcbd22", "train": "#9467bd", "other": "#c7c7c7"}
OTHER_MEMORY = "other (activations, cache, allocator)"
MEMORY_KIND_TEXT = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated (GPU, allocator level)",
    "rss_above_baseline": "peak RSS above the post-import baseline (CPU process memory: model states, "
    "activations, caches and allocator slack alike; not GPU memory)",
}
KIND_SHORT = {"cuda_max_allocated": "GPU, torch.cuda.max_memory_allocated",
              "rss_above_baseline": "CPU, process RSS above its post-import baseline"}
COMPARED_BLOCKS = ("models", "data", "shared", "runtime")  # must be identical across algorithms
SEED_DIR = re.compile(r"^(?P<hidden>\.)?seed(?P<seed>\d+)(?P<suffix>\.partial|\.failed)?$")
WIN_RATE_KEYS = ("win_rate", "win_rate_se", "win_rate_ci")
LC_KEYS = ("lc_win_rate", "lc_win_rate_se", "lc_win_rate_ci")


class ReportError(RuntimeError):
    """No report can be made; the message says why and what to do."""


# -- reading -------------------------------------------------------------------------------------
@dataclass
class SuiteResults:
    name: str
    path: Path
    stages: pd.DataFrame  # one row per complete stage and seed
    metrics: pd.DataFrame  # one row per logged step: stage, seed, step, wall_time_s, ...
    evals: pd.DataFrame  # one row per evaluated checkpoint and eval seed; win rates in percent
    manifests: dict[tuple[str, int], dict] = field(default_factory=dict)
    summaries: dict[tuple[str, int], dict] = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)  # failed, partial, incomplete or missing stages

    def has(self, stage: str) -> bool:
        return any(key[0] == stage for key in self.summaries)


def _read_jsonl_tolerant(path: Path) -> list[dict]:
    """metrics.jsonl rows; a line that does not parse (a crash mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_manifest(path: Path) -> dict:
    try:
        data = results.read_json(path / "manifest.json")
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _first_line(text) -> str:
    return str(text).strip().splitlines()[0] if text and str(text).strip() else ""


def _scale_family(rows: list[dict], keys: tuple[str, ...]) -> None:
    """Win rates as percent: a family given as fractions (every value <= 1) is multiplied by 100."""
    main = keys[0]
    values = [r[main] for r in rows if isinstance(r.get(main), (int, float)) and not math.isnan(r[main])]
    if not values or max(abs(v) for v in values) > 1.0:
        return
    for r in rows:
        for key in keys:
            value = r.get(key)
            if isinstance(value, (int, float)):
                r[key] = value * 100.0
            elif isinstance(value, (list, tuple)):
                r[key] = [v * 100.0 if isinstance(v, (int, float)) else v for v in value]


def _ci(row: dict, ci_key: str, centre_key: str, se_key: str) -> tuple[float, float]:
    """[lo, hi] as given, else centre ± 1.96 standard errors, else NaN."""
    ci = row.get(ci_key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return float(ci[0]), float(ci[1])
    centre, se = row.get(centre_key), row.get(se_key)
    if isinstance(centre, (int, float)) and isinstance(se, (int, float)):
        return centre - 1.96 * se, centre + 1.96 * se
    return math.nan, math.nan


def _num_or_nan(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def eval_rows(summary: dict, seed: int, reference: str) -> list[dict]:
    """The eval stage's rows, tidy: win rates in percent, CIs split into lo / hi columns."""
    raw = [dict(r) for r in summary.get("rows") or [] if isinstance(r, dict) and r.get("name")]
    _scale_family(raw, WIN_RATE_KEYS)
    _scale_family(raw, LC_KEYS)
    out = []
    for r in raw:
        wr_lo, wr_hi = _ci(r, "win_rate_ci", "win_rate", "win_rate_se")
        mt_lo, mt_hi = _ci(r, "mt_bench_ci", "mt_bench_score", "mt_bench_se")
        out.append({
            "name": str(r["name"]),
            "seed": seed,
            "reference": r.get("reference") or summary.get("reference") or reference,
            "win_rate_pct": _num_or_nan(r.get("win_rate")),
            "win_rate_se_pct": _num_or_nan(r.get("win_rate_se")),
            "win_rate_ci_lo_pct": wr_lo,
            "win_rate_ci_hi_pct": wr_hi,
            "lc_win_rate_pct": _num_or_nan(r.get("lc_win_rate")),
            "n": _num_or_nan(r.get("n")),
            "n_unjudged": _num_or_nan(r.get("n_unjudged")),
            "mt_bench_n_unjudged": _num_or_nan(r.get("mt_bench_n_unjudged")),
            "leaderboard_comparable": r.get("leaderboard_comparable"),
            "mt_bench_score": _num_or_nan(r.get("mt_bench_score")),
            "mt_bench_ci_lo": mt_lo,
            "mt_bench_ci_hi": mt_hi,
            "mt_bench_turn1": _num_or_nan(r.get("mt_bench_turn1")),
            "mt_bench_turn2": _num_or_nan(r.get("mt_bench_turn2")),
        })
    return out


def _planned_keys(manifests: dict[tuple[str, int], dict]) -> list[str]:
    """The stage keys the suite in the manifests plans (given checkpoints excluded); [] if unknown."""
    suites = [m.get("config", {}).get("suite") for m in manifests.values()]
    suites = [s for s in suites if isinstance(s, dict)]
    if not suites:
        return []
    try:
        from remax_bench.config import Suite
        from remax_bench.runner import plan

        return [p.key for p in plan(Suite.model_validate(suites[0])) if not p.given]
    except Exception:  # noqa: BLE001 - an older or foreign suite schema: the plan is unknown, not an error
        return []


def load_results(results_dir: str | Path, suite_name: str) -> SuiteResults:
    """Every complete stage of one suite, as tidy frames; raises ReportError when there is none."""
    suite_dir = Path(results_dir) / suite_name
    if not suite_dir.is_dir():
        found = sorted(p.name for p in Path(results_dir).iterdir() if p.is_dir()) if Path(results_dir).is_dir() else []
        raise ReportError(
            f"no results for suite {suite_name!r}: {suite_dir}/ does not exist"
            + (f" (suites found: {', '.join(found)})" if found else "")
        )
    stage_rows, metric_frames, eval_records = [], [], []
    manifests, summaries, problems = {}, {}, []
    for stage_root in sorted(p for p in suite_dir.iterdir() if p.is_dir()):
        stage = stage_root.name
        for seed_dir in sorted(stage_root.iterdir()):
            match = SEED_DIR.match(seed_dir.name)
            if not seed_dir.is_dir() or not match:
                continue
            seed = int(match["seed"])
            manifest = _read_manifest(seed_dir)
            if match["suffix"] == ".partial" or match["hidden"]:
                problems.append({"stage": stage, "seed": seed, "status": "partial",
                                 "detail": f"{seed_dir.name}: in progress or killed", "path": str(seed_dir)})
                continue
            if match["suffix"] == ".failed":
                status = manifest.get("status", "failed")
                problems.append({"stage": stage, "seed": seed, "status": status,
                                 "detail": _first_line(manifest.get("error")) or "no error recorded",
                                 "path": str(seed_dir)})
                continue
            if not results.is_complete(seed_dir) or not (seed_dir / "summary.json").is_file():
                problems.append({"stage": stage, "seed": seed, "status": manifest.get("status", "incomplete"),
                                 "detail": "no completed manifest and summary", "path": str(seed_dir)})
                continue
            try:
                summary = results.read_json(seed_dir / "summary.json")
            except json.JSONDecodeError as err:
                problems.append({"stage": stage, "seed": seed, "status": "unreadable",
                                 "detail": f"summary.json: {err}", "path": str(seed_dir)})
                continue
            manifests[(stage, seed)] = manifest
            summaries[(stage, seed)] = summary
            flat = pd.json_normalize({k: v for k, v in summary.items() if k != "rows"}, sep=".")
            flat = flat.iloc[0].to_dict() if len(flat) else {}
            flat.update({
                "stage": stage, "seed": seed,
                "device": manifest.get("device"), "device_name": manifest.get("device_name"),
                "torch_threads": manifest.get("torch_threads"), "suite_hash": manifest.get("suite_hash"),
                "config_hash": manifest.get("config_hash"), "start": manifest.get("start"), "end": manifest.get("end"),
            })
            stage_rows.append(flat)
            steps = _read_jsonl_tolerant(seed_dir / "metrics.jsonl")
            if steps:
                frame = pd.DataFrame(steps)
                frame.insert(0, "seed", seed)
                frame.insert(0, "stage", stage)
                metric_frames.append(frame)
            if stage == "eval":
                reference = (manifest.get("config", {}).get("suite", {}) or {}).get("eval", {}).get("reference", "sft")
                eval_records.extend(eval_rows(summary, seed, reference))
    if not summaries:
        found = ", ".join(f"{p['stage']}/seed{p['seed']} ({p['status']})" for p in problems) or "nothing"
        raise ReportError(
            f"no complete stage under {suite_dir}/ (found: {found}); run `remax-bench run {suite_name}` "
            "and let at least one stage finish"
        )
    seen = {f"{s}/seed{k}" for s, k in summaries} | {f"{p['stage']}/seed{p['seed']}" for p in problems}
    for key in _planned_keys(manifests):
        if key not in seen:
            stage, seed = key.split("/seed")
            problems.append({"stage": stage, "seed": int(seed), "status": "missing",
                             "detail": "planned by the suite, no result directory", "path": ""})
    stages = pd.DataFrame(stage_rows)
    metrics = (pd.concat(metric_frames, ignore_index=True) if metric_frames
               else pd.DataFrame(columns=["stage", "seed", "step"]))
    evals = pd.DataFrame(eval_records)
    return SuiteResults(suite_name, suite_dir, stages, metrics, evals, manifests, summaries, problems)


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


def ratios_vs_ppo(table: pd.DataFrame, algorithm: str = "remax") -> dict[str, float]:
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


def _mean_std(values: pd.Series) -> str:
    """'mean ± std' over seeds (the std with the mean's decimals); the value alone for one seed."""
    values = values.dropna()
    if values.empty:
        return "–"
    mean = float(values.mean())
    if len(values) == 1:
        return _num(mean)
    decimals = _decimals(mean)
    return f"{_num(mean, decimals)} ± {_num(float(values.std(ddof=1)), decimals)}"


AGG_COLUMNS = [
    ("held-out gold reward", "heldout_gold_reward"),
    ("final reward", "final_reward_mean"),
    ("final KL", "final_kl"),
    ("peak memory (MiB)", "peak_memory_mib"),
    ("model states (MiB)", "model_state_mib"),
    ("time / iteration (s)", "time_per_iteration_s"),
    ("tokens / s", "tokens_per_second"),
    ("generated tokens", "generated_tokens"),
    ("time / 1k generated tokens (s)", "time_per_1k_generated_tokens_s"),
    ("held-out gold gain / 10k generated tokens", "gold_gain_per_10k_tokens"),
    ("win rate vs {ref} (%)", "win_rate_pct"),
    ("MT-bench (1–10)", "mt_bench_score"),
    ("unjudged AlpacaEval pairs", "n_unjudged"),
    ("unjudged MT-bench turns", "mt_bench_n_unjudged"),
]


def aggregate_table(table: pd.DataFrame, reference: str = "sft") -> pd.DataFrame:
    """Mean ± std over seeds per algorithm, as display strings (the table of summary.md and index.html)."""
    out = []
    for algo in [a for a in POLICY_STAGES if not table.empty and a in set(table["algorithm"])]:
        rows = table[table["algorithm"] == algo]
        line = {"algorithm": LABELS.get(algo, algo), "seeds": int(rows["trained"].sum())}
        for title, col in AGG_COLUMNS:
            line[title.format(ref=LABELS.get(reference, reference))] = _mean_std(rows[col]) if col in rows else "–"
        out.append(line)
    return pd.DataFrame(out)


def paper_table(table: pd.DataFrame, judge: str | None, reference: str = "sft") -> pd.DataFrame:
    """This run's algorithms against PPO, beside the paper's figures (labelled as the paper's)."""
    compared = [a for a in ALGORITHMS if a != comparison.BASELINE]
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
        if algo != "remax" or table.empty or col not in table:
            return ""  # the paper's algorithm gets its per-seed figures
        vals = table[(table["algorithm"] == algo)][col].dropna()
        return " (per seed: " + ", ".join(fmt.format(v) for v in vals) + ")" if len(vals) > 1 else ""

    judged = f" (judge: {judge})" if judge else ""
    ref = LABELS.get(reference, reference)

    def quality(algo, col, text):
        rows_ = table[table["algorithm"] == algo] if not table.empty and col in table else None
        value = _mean_std(rows_[col]) if rows_ is not None else "–"
        return f"{LABELS[algo]} {value}{text}{judged}" if value != "–" else f"– (no eval result for {LABELS[algo]})"

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

    Each line names the field and which algorithm and seed had which value.
    """
    flat, lines = {}, []
    for (stage, seed), manifest in sorted(manifests.items()):
        if stage not in algorithms:
            continue
        suite = manifest.get("config", {}).get("suite") if isinstance(manifest.get("config"), dict) else None
        if not isinstance(suite, dict):
            lines.append(f"{stage}/seed{seed}: its manifest records no resolved suite, so it could not be compared")
            continue
        flat[f"{stage}/seed{seed}"] = {
            k: v for block in COMPARED_BLOCKS for k, v in _flatten(suite.get(block), block + ".").items()
        }
    keys = sorted({k for f in flat.values() for k in f})
    for key in keys:
        groups: dict[str, list[str]] = {}
        for run, values in flat.items():
            groups.setdefault(values.get(key, "<absent>"), []).append(run)
        if len(groups) > 1:
            lines.append(f"{key}: " + "; ".join(f"{value} ({', '.join(runs)})" for value, runs in groups.items()))
    return lines


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


def _suite_hashes(res: SuiteResults) -> str:
    hashes: dict[str, list[str]] = {}
    for (stage, seed), m in sorted(res.manifests.items()):
        if m.get("suite_hash"):
            hashes.setdefault(m["suite_hash"], []).append(f"{stage}/seed{seed}")
    if not hashes:
        return "unknown"
    if len(hashes) == 1:
        return next(iter(hashes))
    return "several: " + "; ".join(f"{h} ({', '.join(runs)})" for h, runs in hashes.items())


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
        label = {"score": "score (reward + reference forward)", "train": "train (forward + backward + step)",
                 "other": "other (logging, checkpoints)"}.get(phase, phase)
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
)


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
        _bar_plot(gold, "heldout_gold_reward", None, None, out / "heldout_gold_reward.png", dpi,
                  "held-out gold reward (0–1)", "Held-out gold reward (greedy answers)", ylim=ylim)
        plots.append(Plot("heldout_gold_reward.png", "Held-out gold reward",
                          "Mean gold-scorer reward of greedy answers to held-out prompts (the synthetic task's "
                          "true answer to 'did RL help?'); bars are the mean over seeds, the error bar ± std, dots "
                          f"single seeds ({', '.join(f'{LABELS[a]}: {n_seeds.get(a, 0)}' for a, _ in gold)} seeds)."))
    else:
        omitted.append("Held-out gold reward: no stage reported `heldout_gold_reward` (data not synthetic).")
    return plots, omitted


# -- writing -------------------------------------------------------------------------------------
def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no rows_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _problem_lines(res: SuiteResults) -> list[str]:
    return [f"{p['stage']}/seed{p['seed']}: {p['status']} — {p['detail']}" for p in
            sorted(res.problems, key=lambda p: (p["stage"], p["seed"]))]


def resolve_suite_name(results_dir: Path, suite_name: str | None) -> tuple[Path, str]:
    """(results root, suite name): a given name; else the only suite in results_dir; else results_dir itself
    when it is a suite directory (holds <stage>/seed<k>/)."""
    if suite_name:
        return results_dir, suite_name
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}/ does not exist (run `remax-bench run SUITE` first)")
    if any(SEED_DIR.match(d.name) for s in results_dir.iterdir() if s.is_dir() for d in s.iterdir()):
        return results_dir.parent, results_dir.name
    suites = sorted(p.name for p in results_dir.iterdir() if p.is_dir())
    if len(suites) == 1:
        return results_dir, suites[0]
    if not suites:
        raise ReportError(f"no suite results in {results_dir}/ (run `remax-bench run SUITE` first)")
    raise ReportError(f"{results_dir}/ holds several suites ({', '.join(suites)}); name one")


def write_report(results_dir: str | Path, reports_dir: str | Path, suite_name: str | None = None,
                 dpi: int = 110) -> Path:
    """Write reports/<suite>/ (summary.csv, summary.md, PNGs, index.html) and return the index.html path."""
    root, name = resolve_suite_name(Path(results_dir), suite_name)
    res = load_results(root, name)
    out = Path(reports_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    for stale in PLOT_FILES:  # a plot the current results no longer allow must not linger from an older report
        (out / stale).unlink(missing_ok=True)

    table = summary_table(res)
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    reference = _reference(res)
    agg = aggregate_table(table, reference)
    judge = _eval_judge(res)
    paper = paper_table(table, judge, reference)
    differed = what_differed(res.manifests)
    env = environment_lines(res)
    problems = _problem_lines(res)
    prep = preparation_lines(res)
    plots, omitted = make_plots(res, table, out, dpi)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    suite_hash = _suite_hashes(res)
    missing_algos = [LABELS[a] for a in ALGORITHMS if not res.has(a)]

    md = [
        f"# remax-bench report: {name}",
        "",
        f"Suite `{name}`, config hash `{suite_hash}`, generated {generated} from `{res.path}`.",
        "",
        "## Summary (mean ± std over seeds)",
        "",
        _md_table(agg),
        "",
        "Final reward and KL: the stage's summary figure, else the mean of the last 10% of logged steps. "
        "Peak memory and model states in MiB (2^20 bytes). Per-seed figures: `summary.csv`.",
        "",
        *(["Starting points: " + "; ".join(prep) + ".", ""] if prep else []),
        "## ReMax vs PPO: this run and the paper",
        "",
        _md_table(paper),
        "",
        f"The paper's figures are the paper's ({PAPER['citation']}): {PAPER['setting']} for memory and speed; "
        f"{PAPER['quality_setting']}. This run's model, data and hardware differ, so compare directions and "
        "rough sizes, not digits.",
        "",
        "## What differed",
        "",
        "- configuration (models, data, shared, runtime blocks of ppo / remax / dpo): "
        + ("none" if not differed else ""),
        *[f"  - {line}" for line in differed],
        *[f"- {line}" for line in env],
        "",
        "## Failed or missing stages",
        "",
        *([f"- {line}" for line in problems] or ["none"]),
        *([f"- algorithms without a result: {', '.join(missing_algos)}"] if missing_algos else []),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        md += [f"### {p.title}", "", f"![{p.title}]({p.file})", "", p.caption, ""]
    if omitted:
        md += ["Left out:", "", *[f"- {o}" for o in omitted], ""]
    variance = _variance_section(root / name, out)
    md += variance
    (out / "summary.md").write_text("\n".join(md))

    index = out / "index.html"
    page = _html(name, suite_hash, generated, res, agg, table, paper, differed, env, problems, missing_algos, plots,
                 omitted, prep)
    if variance:
        e = html.escape
        table_rows = [line.strip("|").split("|") for line in variance if line.startswith("| ") and "---" not in line]
        cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{e(c.strip())}</{'th' if i == 0 else 'td'}>"
                                          for c in row) + "</tr>" for i, row in enumerate(table_rows))
        page = page.replace("</body></html>", f"<h2>Policy-gradient variance</h2><p>{e(variance[2])}</p>"
                            f"<table>{cells}</table><figure><img src='variance.png' alt='variance'></figure>"
                            "</body></html>")
    index.write_text(page)
    return index


def _variance_section(suite_dir: Path, out: Path) -> list[str]:
    """The gradient-variance measurement (`remax-bench variance`), when one was made for this suite."""
    path = suite_dir / "variance" / "variance.json"
    (out / "variance.png").unlink(missing_ok=True)
    if not path.is_file():
        return []
    from remax_bench.variance import variance_markdown

    record = json.loads(path.read_text())
    if (suite_dir / "variance" / "variance.png").is_file():
        shutil.copyfile(suite_dir / "variance" / "variance.png", out / "variance.png")
    return ["## Policy-gradient variance", "",
            f"`remax-bench variance` on `{record['checkpoint']}` (reward: {record['reward']}): {record['repeats']} "
            f"batches of {record['answers']} generated answers per estimator (greedy answers count), k = "
            f"{record['k']}; trace of the covariance of the gradient over the batches, and the same divided by "
            "the squared norm of the mean gradient (scale-free: GRPO's division by the std rescales g).", "",
            *variance_markdown(record), "", "![Policy-gradient variance](variance.png)", ""]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.92em;color:#444}
.meta{color:#555}.paper{background:#fff8e1;padding:.6em 1em;border-left:4px solid #f0b400}
.warn{color:#a00}code{background:#f5f5f5;padding:0 .2em}
"""


def _html(name, suite_hash, generated, res, agg, table, paper, differed, env, problems, missing_algos, plots,
          omitted, prep) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>remax-bench report: {e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>remax-bench report: {e(name)}</h1>",
        f"<p class='meta'>Suite <code>{e(name)}</code> · config hash <code>{e(suite_hash)}</code> · "
        f"generated {e(generated)} from <code>{e(str(res.path))}</code></p>",
        "<h2>Summary (mean ± std over seeds)</h2>",
        agg.to_html(index=False, border=0, escape=True) if not agg.empty else "<p>No policy stage finished.</p>",
        "<p>Final reward and KL: the stage's summary figure, else the mean of the last 10% of logged steps. "
        "Memory in MiB. Per-seed figures: <a href='summary.csv'>summary.csv</a> (also "
        "<a href='summary.md'>summary.md</a>).</p>",
        "<details><summary>Per seed</summary>",
        table.to_html(index=False, border=0, na_rep="–", float_format=lambda v: _num(v)) if not table.empty else "",
        "</details>",
        f"<p>Starting points: {e('; '.join(prep))}.</p>" if prep else "",
        "<h2>ReMax vs PPO: this run and the paper</h2>",
        paper.to_html(index=False, border=0, escape=True),
        f"<p class='paper'>The right-hand column holds the <b>paper's</b> figures ({e(PAPER['citation'])}): "
        f"{e(PAPER['setting'])} for memory and speed; {e(PAPER['quality_setting'])}. This run's model, data and "
        "hardware differ: compare directions and rough sizes, not digits.</p>",
        "<h2>What differed</h2><ul>",
        "<li>configuration (models, data, shared, runtime blocks of ppo / remax / dpo): "
        + ("none</li>" if not differed
           else "<ul>" + "".join(f"<li class='warn'>{e(d)}</li>" for d in differed) + "</ul></li>"),
        *[f"<li{' class=warn' if 'DIFFERS' in line else ''}>{e(line)}</li>" for line in env],
        "</ul>",
        "<h2>Failed or missing stages</h2>",
        "<ul>" + "".join(f"<li class='warn'>{e(p)}</li>" for p in problems)
        + (f"<li class='warn'>algorithms without a result: {e(', '.join(missing_algos))}</li>" if missing_algos else "")
        + "</ul>" if problems or missing_algos else "<p>none</p>",
        "<h2>Plots</h2>",
    ]
    for p in plots:
        parts.append(f"<figure><img src='{e(p.file)}' alt='{e(p.title)}'><figcaption><b>{e(p.title)}.</b> "
                     f"{e(p.caption)}</figcaption></figure>")
    if omitted:
        parts.append("<p>Left out:</p><ul>" + "".join(f"<li>{e(o)}</li>" for o in omitted) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
