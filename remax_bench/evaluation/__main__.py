"""python -m remax_bench.evaluation --config STAGE.json --out DIR: the eval stage into plain files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from remax_bench.evaluation.common import EvalError
from remax_bench.evaluation.pipeline import run_eval_stage


def format_rows(rows: list[dict]) -> str:
    def show(value, spec=".1f"):
        return "-" if value is None else format(value, spec)

    lines = [f"{'checkpoint':<12} {'win rate %':>10} {'95% CI':>13} {'LC %':>6} {'unjudged':>8} {'MT-bench':>8} "
             f"{'turn 1':>6} {'turn 2':>6}"]
    for r in rows:
        ci = r.get("win_rate_ci")
        ci_text = f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else "-"
        lines.append(f"{r['name']:<12} {show(r.get('win_rate')):>10} {ci_text:>13} {show(r.get('lc_win_rate')):>6} "
                     f"{show(r.get('n_unjudged'), 'd'):>8} {show(r.get('mt_bench_score'), '.2f'):>8} "
                     f"{show(r.get('mt_bench_turn1'), '.2f'):>6} {show(r.get('mt_bench_turn2'), '.2f'):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remax_bench.evaluation",
                                     description="Evaluate checkpoints: AlpacaEval win rates and MT-bench scores.")
    parser.add_argument("--config", required=True, help="stage config JSON (stage, seed, suite, inputs.checkpoints)")
    parser.add_argument("--out", required=True, help="directory for outputs, judgments and summary.json")
    args = parser.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text())
        summary = run_eval_stage(config, args.out)
    except (EvalError, OSError, json.JSONDecodeError) as err:
        print(f"[error] {err}", file=sys.stderr)
        return 1
    print(format_rows(summary["rows"]))
    for warning in summary["warnings"]:
        print(f"[warning] {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
