"""python -m remax_bench.evaluation.stage --config STAGE.json --out DIR: the eval stage in the results layout.

The runner starts this module for each eval stage. Outputs and judgments go to DIR/eval/; the stage's
summary.json carries the eval summary (one row per checkpoint under "rows"), next to the manifest,
wall time and peak memory that every stage records. An attempt that failed (a judge that could not judge
enough items) leaves its answers in DIR's failed folder: the next attempt starts from them, and regenerates
only what no longer matches its checkpoint and settings (generation.json's fingerprint).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from remax_bench.core import results
from remax_bench.evaluation.pipeline import ALPACA_OUTPUTS, GENERATION, MT_ANSWERS, run_eval_stage

ANSWER_FILES = (GENERATION, ALPACA_OUTPUTS, MT_ANSWERS)


def carry_answers(previous: Path, out: Path) -> list[str]:
    """Copy each checkpoint's answers (not its judgments or figures) from a failed attempt's eval folder."""
    carried = []
    for record in sorted(previous.glob("**/" + GENERATION)):
        folder = record.parent.relative_to(previous)
        for name in ANSWER_FILES:
            if (record.parent / name).is_file():
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(record.parent / name, out / folder / name)
        carried.append(str(folder))
    return carried


def evaluate(run) -> dict:
    done = {"n": 0}

    def log(message: str) -> None:
        print(f"[eval] {message}", file=sys.stderr, flush=True)
        if message.endswith("up to date, reused") or ": generating with" in message or ": judging with" in message:
            done["n"] += 1
            print(f"[progress] stage=eval step={done['n']} {json.dumps({})}", file=sys.stderr, flush=True)

    previous = results.failed_dir(run.final_dir) / "eval"
    if previous.is_dir():
        carried = carry_answers(previous, run.dir / "eval")
        if carried:
            log(f"answers of the last attempt ({', '.join(carried)}) carried over from {previous}")
    summary = run_eval_stage({**run.config, "inputs": run.inputs}, run.dir / "eval", log=log, suite=run.suite)
    for warning in summary["warnings"]:
        run.warn(warning)
    return summary


if __name__ == "__main__":
    from remax_bench.core.stage import stage_main

    sys.exit(stage_main("eval", evaluate))
