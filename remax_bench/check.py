"""`remax-bench check`: a finished suite against a committed baseline, and the paper's claims as rules.

Numbers are ratios or task scores, never absolute times: CI machines are noisy, ratios within one run are not.
Each baseline metric has a direction: ``higher`` (may not fall more than the tolerance below the baseline),
``lower`` (may not rise more than the tolerance above it) or ``both``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from remax_bench import comparison, uncertainty
from remax_bench.core import algorithms, results


@dataclass
class CheckRow:
    name: str
    baseline: float | None
    now: float | None
    tolerance: float | None
    passed: bool
    note: str = ""


def _complete_summaries(stage_root: Path | None) -> list[dict]:
    if stage_root is None or not stage_root.is_dir():
        return []
    found = []
    for seed_dir in sorted(stage_root.glob("seed*")):
        if seed_dir.is_dir() and results.is_complete(seed_dir):
            found.append(results.read_json(seed_dir / "summary.json"))
    return found


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return mean(values) if values else None


def _runs(suite_dir: Path) -> list[tuple[str, dict[str, Path]]]:
    """(sweep value, stage -> its folder) for every value of the suite's sweep; [("", the folders)] without one.
    Metrics are named by the folder (``ppo@kl_coef=0.1.heldout_gold_reward`` in a sweep)."""
    return [(label, results.stage_dirs_of(suite_dir, label)) for label in results.variants_in(suite_dir)]


def collect_metrics(suite_dir: str | Path) -> dict[str, float]:
    """The figures a baseline can pin, averaged over seeds: ``<algorithm>.<metric>`` (in a sweep
    ``<algorithm>@<field>=<value>.<metric>``)."""
    suite_dir = Path(suite_dir)
    metrics: dict[str, float] = {}
    for _, dirs in _runs(suite_dir):
        name = {stage: path.name for stage, path in dirs.items()}
        summaries = {stage: _complete_summaries(dirs.get(stage)) for stage in ("sft", *algorithms.NAMES)}
        for stage, rows in summaries.items():
            value = _mean(r.get("heldout_gold_reward") for r in rows)
            if value is not None:
                metrics[f"{name[stage]}.heldout_gold_reward"] = value
        base = summaries[comparison.BASELINE]
        for algo in algorithms.NAMES:
            rows = summaries[algo]
            if algo == comparison.BASELINE or not (rows and base):
                continue
            suffix = f"_ratio_vs_{comparison.BASELINE}"
            for metric, key in (("peak_memory", "peak_memory_bytes"), ("model_states", "model_state_total_bytes"),
                                ("iteration_time", "time_per_iteration_s")):
                value = comparison.ratio(_mean(r.get(key) for r in rows), _mean(r.get(key) for r in base))
                if not math.isnan(value):
                    metrics[f"{name[algo]}.{metric}{suffix}"] = value
        variant = results.split_stage_dirname(name["eval"])[1] if "eval" in name else ""
        for summary in _complete_summaries(dirs.get("eval")):
            for row in summary.get("rows", []):
                for key in ("win_rate", "mt_bench_score"):
                    if row.get(key) is not None:
                        stage = results.stage_dirname(row["name"], variant if row["name"] in algorithms.REGISTRY else "")
                        metrics.setdefault(f"{stage}.{key}", []).append(float(row[key]))  # type: ignore[union-attr]
    return {k: (mean(v) if isinstance(v, list) else v) for k, v in metrics.items()}


def compare(metrics: dict[str, float], baseline: dict) -> list[CheckRow]:
    rows = []
    for name, spec in sorted(baseline.get("metrics", {}).items()):
        value, tolerance, direction = spec["value"], spec["tolerance"], spec.get("direction", "both")
        now = metrics.get(name)
        if now is None:
            rows.append(CheckRow(name, value, None, tolerance, False, "missing in results"))
            continue
        if direction == "higher":
            passed = now >= value - tolerance
        elif direction == "lower":
            passed = now <= value + tolerance
        else:
            passed = abs(now - value) <= tolerance
        rows.append(CheckRow(name, value, now, tolerance, passed, direction))
    return rows


def rules(suite_dir: str | Path, metrics: dict[str, float]) -> list[CheckRow]:
    """The paper's qualitative claims, checked on this run (on every value of its sweep). The quality rules read
    the 95% interval over seeds (remax_bench.uncertainty), not the mean alone."""
    suite_dir = Path(suite_dir)
    out = []
    for _, dirs in _runs(suite_dir):
        name = {stage: path.name for stage, path in dirs.items()}
        for algo in algorithms.NAMES:
            spec = algorithms.get(algo)
            summaries = _complete_summaries(dirs.get(algo))
            if spec.critic or not summaries:
                continue
            critic = [r for r in summaries if "critic" in r.get("model_state_bytes", {})]
            label = spec.label + name[algo].removeprefix(algo)
            out.append(CheckRow(f"rule: {label} builds no value model", None, None, None, not critic,
                                "no critic states recorded" if not critic else "a critic was recorded"))
        focus = name.get(algorithms.FOCUS, algorithms.FOCUS)
        ratio = metrics.get(f"{focus}.peak_memory_ratio_vs_{comparison.BASELINE}")
        if ratio is not None:
            out.append(CheckRow(f"rule: {algorithms.label(algorithms.FOCUS)}{focus.removeprefix(algorithms.FOCUS)} "
                                "peak memory below PPO's", 1.0, ratio, None, ratio < 1.0, "ratio < 1"))
        sft = metrics.get(f"{name.get('sft', 'sft')}.heldout_gold_reward")
        for algo in algorithms.needing_reward_model():
            gold = [r.get("heldout_gold_reward") for r in _complete_summaries(dirs.get(algo))]
            if sft is not None and any(g is not None for g in gold):
                out.append(_beats_sft(name[algo], uncertainty.mean_interval(gold), sft))
        out += _not_worse_than_baseline(dirs, name)
    return out


def _beats_sft(run: str, gold: uncertainty.Interval, sft: float) -> CheckRow:
    """An RL algorithm beats the SFT model it started from when the lower end of its gold reward's 95% interval over
    seeds is above SFT's (one seed: its value)."""
    if gold.has_interval:
        return CheckRow(f"rule: {run} beats SFT on gold reward", sft, gold.lo, None, gold.lo > sft,
                        f"95% interval [{gold.lo:.4g}, {gold.hi:.4g}] over {gold.n} seeds above SFT")
    return CheckRow(f"rule: {run} beats SFT on gold reward", sft, gold.point, None, gold.point > sft,
                    "one seed: its value above SFT")


def _not_worse_than_baseline(dirs: dict[str, Path], name: dict[str, str]) -> list[CheckRow]:
    """The paper's claim on quality: ReMax matches PPO. It fails only when the seeds resolve PPO as better (the
    probability of improvement's 95% interval below 0.5, from 3 seeds each)."""
    focus, base = algorithms.FOCUS, comparison.BASELINE
    x = [r.get("heldout_gold_reward") for r in _complete_summaries(dirs.get(focus))]
    y = [r.get("heldout_gold_reward") for r in _complete_summaries(dirs.get(base))]
    x, y = [v for v in x if v is not None], [v for v in y if v is not None]
    if not x or not y:
        return []
    poi = uncertainty.probability_of_improvement([[v] for v in x], [[v] for v in y])[0]
    verdict = uncertainty.told_apart(poi, len(x), len(y))
    words = uncertainty.order_in_words(algorithms.label(focus), algorithms.label(base), "gold reward", poi, len(x), len(y))
    return [CheckRow(f"rule: {name[focus]} not worse than {name[base]} on gold reward", 0.5, poi.point, None,
                     verdict >= 0, words.split(": ", 1)[1])]


def load_baseline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline {path} not found (create it with --update-baseline)")
    return json.loads(path.read_text())


def update_baseline_file(path: str | Path, metrics: dict[str, float], old: dict | None, suite: str) -> dict:
    """Rewrite the baseline's values from this run, keeping each metric's tolerance and direction."""
    old_metrics = (old or {}).get("metrics", {})
    new = {"suite": suite, "metrics": {}}
    for name, value in sorted(metrics.items()):
        spec = old_metrics.get(name, {"tolerance": default_tolerance(name, value), "direction": default_direction(name)})
        new["metrics"][name] = {**spec, "value": round(value, 4)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
    return new


def default_direction(name: str) -> str:
    if name.endswith("_ratio_vs_ppo"):
        return "lower"  # smaller memory / time than PPO is never a regression
    return "higher"


def default_tolerance(name: str, value: float) -> float:
    if name.endswith("iteration_time_ratio_vs_ppo"):
        return round(0.5 * value, 3)  # timing ratios on a shared 2-core machine are noisy
    if name.endswith("_ratio_vs_ppo"):
        return round(0.15 * value, 3)
    if name.endswith("win_rate") and value > 1.5:
        return 15.0  # percent
    if name.endswith("mt_bench_score"):
        return 1.0
    return 0.1


def format_rows(rows: list[CheckRow]) -> str:
    def show(x):
        return "-" if x is None else f"{x:.4g}"

    width = max([len(r.name) for r in rows] + [6])
    lines = [f"{'metric':<{width}}  {'baseline':>9}  {'now':>9}  {'tol':>7}  result  note"]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {show(r.baseline):>9}  {show(r.now):>9}  {show(r.tolerance):>7}  "
            f"{'pass' if r.passed else 'FAIL':<6}  {r.note}"
        )
    return "\n".join(lines)


REPRODUCED_KEYS = ("reward_mean", "kl", "policy_loss", "loss")


def reproduce(suite_dir: str | Path, stage: str = algorithms.FOCUS, seed: int | None = None, steps: int = 3,
              workdir: str | Path | None = None) -> CheckRow:
    """Re-run the first ``steps`` iterations of a finished stage from its own config and compare them.

    On one machine a fixed seed must give the same numbers: the rerun's per-step figures have to match
    the recorded ones (to float tolerance).
    """
    import subprocess
    import sys
    import tempfile

    suite_dir = Path(suite_dir)
    stage_root = _runs(suite_dir)[0][1].get(stage)  # in a sweep: its first value's run
    seeds = sorted(p for p in stage_root.glob("seed*") if p.is_dir() and results.is_complete(p)) if stage_root else []
    if seed is not None:
        seeds = [p for p in seeds if p.name == f"seed{seed}"]
    name = f"rule: {stage} reproducible with a fixed seed"
    if not seeds:
        return CheckRow(name, None, None, None, False, f"no complete {stage} result to reproduce")
    original = seeds[0]
    config = results.read_json(original / "manifest.json")["config"]
    recorded = results.read_jsonl(original / "metrics.jsonl")[:steps]
    config = json.loads(json.dumps(config))
    # Inputs are recorded relative to the results folder: resolve them where this folder sits now.
    config["inputs"] = results.resolve_inputs(config.get("inputs", {}), results.suite_root_of(original))
    config["suite"]["shared"].update(iterations=steps, token_budget=None)
    config["suite"]["runtime"]["trackers"] = []  # a reproduction is compared here, not watched
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        out = Path(tmp) / "rerun"
        proc = subprocess.run(
            [sys.executable, "-m", f"trainers.{stage}", "--config", str(config_path), "--out", str(out)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            return CheckRow(name, None, None, None, False, f"rerun failed: {proc.stderr.strip()[-300:]}")
        rerun = results.read_jsonl(out / "metrics.jsonl")[:steps]
    worst = 0.0
    for old, new in zip(recorded, rerun):
        for key in REPRODUCED_KEYS:
            if key in old and key in new:
                worst = max(worst, abs(float(old[key]) - float(new[key])))
    same_length = len(recorded) == len(rerun) == steps
    passed = same_length and worst <= 1e-5
    return CheckRow(name, 0.0, worst, 1e-5, passed, f"max |difference| over the first {steps} steps")


class CheckError(ValueError):
    """A check that cannot run (no results, no baseline); ``code`` is the command's exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def run_check(results_dir: str | Path, baseline_path: str | Path | None = None, *, update_baseline: bool = False,
              reproduce_rule: bool = True) -> tuple[list[CheckRow], list[str]]:
    """Every check of ``remax-bench check``: (rows, notes). The baseline defaults to suites/baselines/<suite>.json
    in the repository, wherever the command runs; ``update_baseline`` rewrites it from these results first."""
    suite_dir = Path(results_dir)
    if not suite_dir.is_dir():
        raise CheckError(f"{suite_dir} is not a results directory (expected results/<suite>)")
    metrics = collect_metrics(suite_dir)
    if not metrics:
        inner = sorted(p.name for p in suite_dir.iterdir() if p.is_dir() and collect_metrics(p))
        hint = f"; it holds the suite results {inner}: give {suite_dir / inner[0]}" if inner else ""
        raise CheckError(f"no complete stages with figures under {suite_dir}{hint}", code=1)
    suite = suite_dir.resolve().name
    if baseline_path is None:
        from remax_bench.core.config import SUITES_DIR

        baseline_path = SUITES_DIR / "baselines" / f"{suite}.json"
    notes = []
    if update_baseline:
        old = load_baseline(baseline_path) if Path(baseline_path).is_file() else None
        update_baseline_file(baseline_path, metrics, old, suite_dir.name)
        notes.append(f"baseline {baseline_path} updated from {suite_dir}")
    try:
        baseline = load_baseline(baseline_path)
    except FileNotFoundError as err:
        raise CheckError(str(err)) from err
    if baseline.get("suite") not in (None, suite):
        notes.append(f"warning: baseline {baseline_path} is for suite {baseline['suite']!r}, these results are of "
                     f"{suite!r}")
    rows = compare(metrics, baseline) + rules(suite_dir, metrics)
    if reproduce_rule:
        rows.append(reproduce(suite_dir))
    return rows, notes
