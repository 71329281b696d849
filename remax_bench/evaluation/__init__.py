"""Evaluation: generation (vLLM or transformers), AlpacaEval win rates, MT-bench scores, configurable judges.

    from remax_bench.evaluation import evaluate_checkpoint, run_eval_stage

``python -m remax_bench.evaluation --config STAGE.json --out DIR`` runs the eval stage into plain files;
``python -m remax_bench.evaluation.stage`` is the same inside the results layout (manifest, summary).
"""

from remax_bench.evaluation.common import EvalConfigError, EvalDataError, EvalError
from remax_bench.evaluation.judges import build_judge
from remax_bench.evaluation.pipeline import (
    EvalData,
    evaluate_checkpoint,
    generate_checkpoint,
    judge_checkpoint,
    load_eval_data,
    run_eval_stage,
)
from remax_bench.evaluation.unjudged import JudgingFailed

__all__ = [
    "build_judge",
    "EvalConfigError",
    "EvalData",
    "EvalDataError",
    "EvalError",
    "evaluate_checkpoint",
    "generate_checkpoint",
    "judge_checkpoint",
    "JudgingFailed",
    "load_eval_data",
    "run_eval_stage",
]
