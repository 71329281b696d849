"""python -m remax_bench.evaluation.stage --config STAGE.json --out DIR: the eval stage in the results layout.

The runner starts this module for each eval stage. Outputs and judgments go to DIR/eval/; the stage's
summary.json carries the eval summary (one row per checkpoint under "rows"), next to the manifest,
wall time and peak memory that every stage records.
"""

from __future__ import annotations

import json
import sys

from remax_bench.evaluation.pipeline import run_eval_stage


def evaluate(run) -> dict:
    done = {"n": 0}

    def log(message: str) -> None:
        print(f"[eval] {message}", file=sys.stderr, flush=True)
        if message.endswith("up to date, reused") or ": generating with" in message or ": judging with" in message:
            done["n"] += 1
            print(f"[progress] stage=eval step={done['n']} {json.dumps({})}", file=sys.stderr, flush=True)

    summary = run_eval_stage({**run.config, "inputs": run.inputs}, run.dir / "eval", log=log, suite=run.suite)
    for warning in summary["warnings"]:
        run.warn(warning)
    return summary


if __name__ == "__main__":
    from remax_bench.core.stage import stage_main

    sys.exit(stage_main("eval", evaluate))
