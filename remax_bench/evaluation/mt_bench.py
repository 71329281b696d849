"""MT-bench: single-answer grading (1-10) of both turns, scored per turn and per category.

Judgments are written in FastChat's single-judgment format ({question_id, model, judge: [judge, prompt],
user_prompt, judgment, score, turn, tstamp}); an unjudged turn has score -1, which FastChat's show_result
leaves out of every mean -- and which we count (``n_unjudged``). The table is show_result's: mean score
of the first turn, of the second, and of both ("Average"), plus one mean per category.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from remax_bench.evaluation.cache import judge_items
from remax_bench.evaluation.common import clean_float
from remax_bench.evaluation.llm_judges import needs_reference
from remax_bench.evaluation.stats import bootstrap_cluster_mean_ci
from remax_bench.evaluation.verdicts import SingleItem, judge_label

UNJUDGED_SCORE = -1  # FastChat's marker for a failed judgment


def score_table(judgments: list[dict]):
    """show_result's view: a pandas table of mean scores by turn and by category (unjudged rows excluded)."""
    import pandas as pd

    df = pd.DataFrame(judgments, columns=["question_id", "model", "category", "turn", "score"])
    df = df[df["score"] != UNJUDGED_SCORE]
    rows = []
    for turn, part in sorted(df.groupby("turn")):
        rows.append({"group": f"turn {turn}", "score": part["score"].mean(), "n": len(part)})
    rows.append({"group": "average", "score": df["score"].mean() if len(df) else float("nan"), "n": len(df)})
    for category, part in sorted(df.groupby("category")):
        rows.append({"group": f"category {category}", "score": part["score"].mean(), "n": len(part)})
    return pd.DataFrame(rows, columns=["group", "score", "n"])


def judge_mt_bench(questions: list[dict], answers: list[list[str]], model_id: str, judge, cache=None, *,
                   reference_answers: dict | Callable[[], dict] | None = None, bootstrap_samples: int = 1000,
                   seed: int = 0) -> tuple[dict, list[dict]]:
    """(result, judgment rows) for one model's answers."""
    refs: dict = {}
    # Only the LLM judges read reference answers (FastChat's reference-guided prompts).
    if judge.reads_references and any(needs_reference(q.get("category", "")) for q in questions):
        refs = reference_answers() if callable(reference_answers) else (reference_answers or {})
    items, where = [], []
    for q, turns in zip(questions, answers):
        for turn in range(1, len(turns) + 1):
            items.append(SingleItem(q, turns, turn, refs.get(q["question_id"])))
            where.append((q, turn))
    judged = judge_items(judge, "single", items, cache)
    label = judge_label(judge)
    rows = []
    now = time.time()
    for (q, turn), item, (verdict, key, cached) in zip(where, items, judged):
        prompt_name = verdict.extra.get("prompt", judge.type)
        rows.append({
            "question_id": q["question_id"],
            "model": model_id,
            "judge": [label, prompt_name],
            "user_prompt": None,
            "judgment": verdict.raw,
            "score": verdict.value if verdict.judged else UNJUDGED_SCORE,
            "turn": turn,
            "tstamp": now,
            "category": q.get("category", "general"),
            "error": verdict.error,
            "attempts": verdict.attempts,
            "cached": cached,
            "key": key,
            "missing_reference": bool(verdict.extra.get("missing_reference")),
        })
        if key is not None and judge.type in ("openai", "vllm_local"):
            rows[-1]["user_prompt"] = judge.payload("single", item)["messages"][-1]["content"]
    table = score_table(rows)
    by_group = {r["group"]: clean_float(r["score"]) for r in table.to_dict(orient="records")}
    groups = [[r["score"] for r in rows if r["question_id"] == q["question_id"] and r["score"] != UNJUDGED_SCORE]
              for q in questions]
    unjudged = [r for r in rows if r["score"] == UNJUDGED_SCORE]
    result: dict[str, Any] = {
        "model_id": model_id,
        "judge": judge.identity(),
        "score": by_group.get("average"),
        "turn1": by_group.get("turn 1"),
        "turn2": by_group.get("turn 2"),
        "ci": bootstrap_cluster_mean_ci(groups, bootstrap_samples, seed),
        "ci_level": 0.95,
        "bootstrap_samples": bootstrap_samples,
        "bootstrap_seed": seed,
        "by_category": {g.removeprefix("category "): v for g, v in by_group.items() if g.startswith("category ")},
        "table": [{"group": r["group"], "score": clean_float(r["score"]), "n": int(r["n"])}
                  for r in table.to_dict(orient="records")],
        "n_questions": len(questions),
        "n_judgments": len(rows),
        "n_judged": len(rows) - len(unjudged),
        "n_unjudged": len(unjudged),
        "n_cached": sum(1 for r in rows if r["cached"]),
        "n_missing_reference": sum(1 for r in rows if r["missing_reference"]),
        "unjudged": [{"question_id": r["question_id"], "turn": r["turn"], "error": r["error"]} for r in unjudged[:50]],
    }
    return result, rows
