"""Reading a results folder into tidy frames: stages, steps, eval rows, manifests; the report's constants."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from remax_bench.core import algorithms, results

MIB = 2**20
ALGORITHMS = algorithms.NAMES
POLICY_STAGES = ("sft", *ALGORITHMS)  # stages that produce a policy (rows of summary.csv)
LABELS = {stage: algorithms.label(stage) for stage in (*algorithms.PREPARATION_STAGES, *ALGORITHMS)}
# One colour per algorithm, the same in every plot.
COLORS = {"sft": "#7f7f7f", **{a.name: a.color for a in algorithms.REGISTRY.values()}}
COMPONENT_COLORS = {"policy": "#9467bd", "reference": "#8c564b", "reward": "#bcbd22", "critic": "#17becf"}
STATE_KINDS = ("params", "grads", "optimizer")
KIND_STYLE = {"params": (1.0, ""), "grads": (0.7, "//"), "optimizer": (0.45, "xx")}  # (alpha, hatch)
PHASES = ("generate", "sync", "score", "train")  # sync: weights into a vLLM rollout engine
PHASE_COLORS = {"generate": "#ff7f0e", "sync": "#17becf", "score": "#bcbd22", "train": "#9467bd", "other": "#c7c7c7"}
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
    """One suite's results, or one value of its sweep (its own stages and the preparation stages it shares)."""

    name: str
    path: Path
    stages: pd.DataFrame  # one row per complete stage and seed
    metrics: pd.DataFrame  # one row per logged step: stage, seed, step, wall_time_s, ...
    evals: pd.DataFrame  # one row per evaluated checkpoint and eval seed; win rates in percent
    manifests: dict[tuple[str, int], dict] = field(default_factory=dict)
    summaries: dict[tuple[str, int], dict] = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)  # failed, partial, incomplete or missing stages
    variant: str = ""  # the sweep value ("kl_coef=0.1"); "" outside a sweep

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
            # Why there is no length-controlled win rate: a degenerate fit, or one that could not be made.
            "lc_not_estimable": r.get("lc_not_estimable") or (f"not estimable: {r['lc_error']}"
                                                              if r.get("lc_error") and r.get("lc_win_rate") is None
                                                              else None),
            "n": _num_or_nan(r.get("n")),
            "n_unjudged": _num_or_nan(r.get("n_unjudged")),
            "mt_bench_n_judgments": _num_or_nan(r.get("mt_bench_n_judgments")),
            "mt_bench_n_unjudged": _num_or_nan(r.get("mt_bench_n_unjudged")),
            "leaderboard_comparable": r.get("leaderboard_comparable"),
            "mt_bench_score": _num_or_nan(r.get("mt_bench_score")),
            "mt_bench_ci_lo": mt_lo,
            "mt_bench_ci_hi": mt_hi,
            "mt_bench_turn1": _num_or_nan(r.get("mt_bench_turn1")),
            "mt_bench_turn2": _num_or_nan(r.get("mt_bench_turn2")),
        })
    return out


def latest_manifest(manifests: dict[tuple[str, int], dict]) -> dict | None:
    """The manifest of the most recently started stage that records its suite: what the suite asks for now.
    (A stage kept from an earlier run, because no field it reads changed, records the suite of that run.)"""
    recorded = [m for m in manifests.values()
                if isinstance(m.get("config"), dict) and isinstance(m["config"].get("suite"), dict)]
    return max(recorded, key=lambda m: m.get("start") or "") if recorded else None


def latest_suite(manifests: dict[tuple[str, int], dict]) -> dict | None:
    latest = latest_manifest(manifests)
    return latest["config"]["suite"] if latest else None


def requested_algorithms(manifests: dict[tuple[str, int], dict]) -> list[str]:
    """The algorithms the suite enables; [] when no manifest records the suite."""
    suite = latest_suite(manifests) or {}
    return [a for a in ALGORITHMS if isinstance(suite.get(a), dict) and suite[a].get("enabled")]


def _planned_keys(manifests: dict[tuple[str, int], dict]) -> list[str]:
    """The stage keys the suite in the manifests plans (given checkpoints excluded); [] if unknown."""
    suite = latest_suite(manifests)
    if suite is None:
        return []
    try:
        from remax_bench.core.config import Suite
        from remax_bench.runner import plan

        return [p.key for p in plan(Suite.model_validate(suite)) if not p.given]
    except Exception:  # noqa: BLE001 - an older or foreign suite schema: the plan is unknown, not an error
        return []


def load_sweep(results_dir: str | Path, suite_name: str) -> list[SuiteResults]:
    """One SuiteResults per value of the suite's sweep, in the order of the values ([the suite] without a sweep);
    a value without any complete stage of its own is left out."""
    suite_dir = Path(results_dir) / suite_name
    labels = results.variants_in(suite_dir)
    if labels == [""]:
        return [load_results(results_dir, suite_name)]
    views = []
    for label in labels:
        try:
            views.append(load_results(results_dir, suite_name, label))
        except ReportError:
            continue
    if not views:
        raise ReportError(f"no complete stage under {suite_dir}/ for any value of its sweep ({', '.join(labels)})")
    return views


def load_results(results_dir: str | Path, suite_name: str, variant: str = "") -> SuiteResults:
    """Every complete stage of one suite (of one value of its sweep), as tidy frames; raises ReportError when there
    is none."""
    suite_dir = Path(results_dir) / suite_name
    if not suite_dir.is_dir():
        found = sorted(p.name for p in Path(results_dir).iterdir() if p.is_dir()) if Path(results_dir).is_dir() else []
        raise ReportError(
            f"no results for suite {suite_name!r}: {suite_dir}/ does not exist"
            + (f" (suites found: {', '.join(found)})" if found else "")
        )
    stage_rows, metric_frames, eval_records = [], [], []
    manifests, summaries, problems = {}, {}, []
    for stage, stage_root in sorted(results.stage_dirs_of(suite_dir, variant).items()):
        shown = stage_root.name  # the folder's name in problem lines: ppo@kl_coef=0.1 in a sweep
        for seed_dir in sorted(stage_root.iterdir()):
            match = SEED_DIR.match(seed_dir.name)
            if not seed_dir.is_dir() or not match:
                continue
            seed = int(match["seed"])
            manifest = _read_manifest(seed_dir)
            if match["suffix"] == ".partial" or match["hidden"]:
                problems.append({"stage": shown, "seed": seed, "status": "partial",
                                 "detail": f"{seed_dir.name}: in progress or killed", "path": str(seed_dir)})
                continue
            if match["suffix"] == ".failed":
                status = manifest.get("status", "failed")
                problems.append({"stage": shown, "seed": seed, "status": status,
                                 "detail": _first_line(manifest.get("error")) or "no error recorded",
                                 "path": str(seed_dir)})
                continue
            if not results.is_complete(seed_dir) or not (seed_dir / "summary.json").is_file():
                problems.append({"stage": shown, "seed": seed, "status": manifest.get("status", "incomplete"),
                                 "detail": "no completed manifest and summary", "path": str(seed_dir)})
                continue
            try:
                summary = results.read_json(seed_dir / "summary.json")
            except json.JSONDecodeError as err:
                problems.append({"stage": shown, "seed": seed, "status": "unreadable",
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
    if not summaries or (variant and all(stage in algorithms.PREPARATION_STAGES for stage, _ in summaries)):
        found = ", ".join(f"{p['stage']}/seed{p['seed']} ({p['status']})" for p in problems) or "nothing"
        raise ReportError(
            f"no complete stage under {suite_dir}/{' for ' + variant if variant else ''} (found: {found}); run "
            f"`remax-bench run {suite_name}` and let at least one stage finish"
        )
    seen = {f"{s}/seed{k}" for s, k in summaries} | \
        {f"{results.split_stage_dirname(p['stage'])[0]}/seed{p['seed']}" for p in problems}
    for key in _planned_keys(manifests):
        if key not in seen:
            stage, seed = key.split("/seed")
            shown = results.stage_dirname(stage, variant if stage not in algorithms.PREPARATION_STAGES else "")
            problems.append({"stage": shown, "seed": int(seed), "status": "missing",
                             "detail": "planned by the suite, no result directory", "path": ""})
    stages = pd.DataFrame(stage_rows)
    metrics = (pd.concat(metric_frames, ignore_index=True) if metric_frames
               else pd.DataFrame(columns=["stage", "seed", "step"]))
    evals = pd.DataFrame(eval_records)
    return SuiteResults(suite_name, suite_dir, stages, metrics, evals, manifests, summaries, problems, variant)
