"""AlpacaEval: pairwise verdicts against a reference generator, scored with alpaca_eval's own functions.

- Outputs are in AlpacaEval's format: a JSON list of {instruction, output, generator, dataset}.
- Each instruction is a pair (output_1 = reference, output_2 = model); identical outputs are a tie (1.5)
  without asking the judge, the way alpaca_eval treats them.
- ``win_rate`` and ``standard_error`` come from ``alpaca_eval.metrics.pairwise_to_winrate`` (percent, draws
  count half). The interval is a seeded bootstrap over instructions.
- The length-controlled win rate: on AlpacaEval's own 805 instructions, alpaca_eval's
  ``get_length_controlled_winrate`` (GLM ``length_controlled_v1``, which needs its instruction-difficulty
  table from the hub). On other prompts (synthetic, a local file) there is no difficulty table, so the GLM
  is alpaca_eval's ``length_controlled_minimal`` formula (tanh of the standardised length difference plus
  a model term), fitted with alpaca_eval's own ``make_dmatrix_for_model`` / ``fit_LogisticRegressionCV``.
  When no GLM can be fitted (too few pairs, no length variation), ``lc_win_rate`` is None and
  ``lc_error`` says why. When the fit is degenerate, ``lc_win_rate`` is None and ``lc_not_estimable`` says
  why: the length term alone explains every verdict (the longer output won each decided pair, as on the
  synthetic task, where a complete answer is longer than a lazy one) or the cross-validated L1 penalty set
  the model's term to zero. Either way the GLM's answer at equal length is the model term's sigmoid(0) =
  50%, a construction of the fit, not a measurement (its value and weights are kept as ``lc_fit``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from remax_bench.evaluation.cache import judge_items
from remax_bench.evaluation.common import EvalDataError, clean_float, offline_reason, read_jsonl
from remax_bench.evaluation.stats import bootstrap_mean_ci
from remax_bench.evaluation.verdicts import TIE, PairwiseItem, judge_label

MIN_PAIRS_FOR_LC = 5  # alpaca_eval's GLMs are cross-validated with 5 folds


def read_outputs(source: list[dict] | str | Path) -> list[dict]:
    """AlpacaEval model outputs from a list or a .json / .jsonl file."""
    if isinstance(source, list):
        return source
    path = Path(source)
    if not path.is_file():
        raise EvalDataError(f"reference outputs {path} not found (an AlpacaEval outputs JSON: a list of "
                            "{instruction, output, generator})")
    rows = read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "instruction" in r and "output" in r for r in rows):
        raise EvalDataError(f"reference outputs {path}: expected a list of {{instruction, output, generator}} rows")
    return rows


def pair_outputs(model_outputs: list[dict], reference_outputs: list[dict],
                 indices: dict[str, int] | None = None) -> tuple[list[dict], list[str]]:
    """Pairs (reference as output_1, model as output_2) by instruction; instructions the reference lacks."""
    reference = {r["instruction"]: r for r in reference_outputs}
    pairs, missing = [], []
    for i, row in enumerate(model_outputs):
        ref = reference.get(row["instruction"])
        if ref is None:
            missing.append(row["instruction"])
            continue
        pairs.append({
            "instruction": row["instruction"],
            "output_1": ref["output"], "generator_1": ref.get("generator", "reference"),
            "output_2": row["output"], "generator_2": row.get("generator", "model"),
            "dataset": row.get("dataset", ""),
            "index": (indices or {}).get(row["instruction"], i),
        })
    return pairs, missing


def win_rate_metrics(preferences: list[float]) -> dict:
    """alpaca_eval's head-to-head metrics (win_rate and standard_error in percent)."""
    from alpaca_eval.metrics import pairwise_to_winrate

    if not preferences:
        return {"win_rate": None, "standard_error": None, "n_wins": 0, "n_wins_base": 0, "n_draws": 0, "n_total": 0,
                "discrete_win_rate": None}
    out = pairwise_to_winrate(preferences)
    return {k: (int(v) if k.startswith("n_") else clean_float(v)) for k, v in out.items()}


def length_controlled(annotations, full_glm: bool) -> dict:
    """Length-controlled win rate (percent) from a dataframe of judged annotations with columns
    preference, output_1, output_2, generator_1, generator_2, index."""
    out: dict[str, Any] = {"lc_win_rate": None, "lc_standard_error": None, "lc_method": None, "lc_error": None}
    n = len(annotations)
    if n and (annotations["generator_1"] == annotations["generator_2"]).all():
        out.update(lc_win_rate=50.0, lc_standard_error=0.0, lc_method="baseline against itself: 50 by construction")
        return out
    if n < MIN_PAIRS_FOR_LC:
        out["lc_error"] = f"needs at least {MIN_PAIRS_FOR_LC} judged pairs (5-fold cross-validated GLM), got {n}"
        return out
    notes = []
    if full_glm:
        why = offline_reason()
        if why:
            notes.append(f"length_controlled_v1 needs alpaca_eval's instruction difficulties from the hub ({why})")
        else:
            try:
                from alpaca_eval.metrics import get_length_controlled_winrate

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    metrics = get_length_controlled_winrate(annotations.copy(), glm_name="length_controlled_v1",
                                                            save_weights_dir=None, is_warn_extreme_changes=False)
                out.update(lc_win_rate=clean_float(metrics["length_controlled_winrate"]),
                           lc_standard_error=clean_float(metrics["lc_standard_error"]), lc_method="length_controlled_v1")
                return out
            except Exception as err:  # noqa: BLE001 - fall back to the minimal GLM, and say why
                notes.append(f"length_controlled_v1 failed: {type(err).__name__}: {str(err)[:200]}")
    try:
        out.update(_minimal_glm(annotations))
        out["lc_method"] = "length_controlled_minimal"
        out["lc_error"] = "; ".join(notes) or None
    except Exception as err:  # noqa: BLE001 - recorded, never fatal
        out["lc_error"] = "; ".join(notes + [f"length_controlled_minimal could not be fit: {type(err).__name__}: {err}"])
        return out
    why = degenerate_fit(annotations, out["lc_weights"])
    if why:
        out["lc_fit"] = {"lc_win_rate": out["lc_win_rate"], "weights": out.pop("lc_weights")}
        out.update(lc_win_rate=None, lc_standard_error=None, lc_not_estimable=why)
    return out


MODEL_TERM = "not_gamed_baseline.astype(float)"  # the model's own term in length_controlled_minimal


def degenerate_fit(annotations, weights: dict) -> str | None:
    """Why the minimal GLM's length-controlled win rate measures nothing, or None when it is an estimate."""
    delta = annotations["output_1"].str.len() - annotations["output_2"].str.len()  # > 0: the reference is longer
    preference = annotations["preference"].astype(float)
    decided = preference != TIE
    longer_won = ((preference > TIE) & (delta < 0)) | ((preference < TIE) & (delta > 0))
    if decided.any() and longer_won[decided].all():
        return (f"not estimable: the longer output won each of the {int(decided.sum())} decided pairs, so length "
                "alone explains the verdicts and the fit cannot tell quality from length (at equal length it "
                "returns the ties' 50%)")
    if abs(weights.get(MODEL_TERM) or 0.0) < 1e-9:
        return ("not estimable: the cross-validated L1 penalty set the model's term to 0 (the length difference "
                "explains the verdicts as well), so the fit gives 50% by construction")
    return None


def _minimal_glm(annotations) -> dict:
    """alpaca_eval's length_controlled_minimal GLM: featurised as its _get_featurized_data does, without the
    instruction-difficulty term (which exists only for AlpacaEval's own instructions)."""
    import numpy as np
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    info = GLM_INFO["length_controlled_minimal"]
    df = annotations.reset_index(drop=True)
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    std = delta.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("every pair has the same length difference, so the length term cannot be fit")
    train = df[["preference"]].copy()
    train["std_delta_len"] = delta / std
    train["preference"] = train["preference"].astype(float).replace({0.0: 1.5}) - 1  # in [0, 1]
    train["not_gamed_baseline"] = True
    test = train[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0  # the model's win rate had both outputs been equally long
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xy_train, x_test = make_dmatrix_for_model(train, test, formula=info["formula"])
        model = fit_LogisticRegressionCV(xy_train, "preference", is_ytrue_proba=True, **info["kwargs"])
        predicted = model.predict_proba(x_test)[:, 1]
    import pandas as pd

    return {"lc_win_rate": clean_float(predicted.mean() * 100),
            "lc_standard_error": clean_float(pd.Series(predicted).sem() * 100),
            "lc_weights": {k: clean_float(v) for k, v in zip(x_test.columns, model.coef_[0])}}


def judge_alpaca_eval(model_outputs: list[dict], reference_outputs: list[dict], judge, cache=None, *,
                      indices: dict[str, int] | None = None, full_glm: bool = False, bootstrap_samples: int = 1000,
                      seed: int = 0) -> tuple[dict, list[dict]]:
    """(result, judgment rows). Rows are alpaca_eval-style annotations plus error / cache fields."""
    import pandas as pd

    pairs, missing = pair_outputs(model_outputs, reference_outputs, indices)
    if not pairs:
        raise EvalDataError("no instruction of the model's outputs has a reference output; the reference outputs "
                            "must answer the same instructions (eval.reference)")
    identical = [i for i, p in enumerate(pairs) if p["output_1"] == p["output_2"]]
    to_judge = [i for i, p in enumerate(pairs) if p["output_1"] != p["output_2"]]
    items = [PairwiseItem(pairs[i]["instruction"], pairs[i]["output_1"], pairs[i]["output_2"]) for i in to_judge]
    judged = judge_items(judge, "pairwise", items, cache) if items else []
    rows: list[dict] = [dict(p) for p in pairs]
    for i in identical:
        rows[i].update(preference=TIE, raw_completion=None, error=None, attempts=0, cached=False, key=None,
                       note="identical outputs: a tie without asking the judge")
    for i, (verdict, key, cached) in zip(to_judge, judged):
        rows[i].update(preference=verdict.value, raw_completion=verdict.raw, error=verdict.error,
                       attempts=verdict.attempts, cached=cached, key=key,
                       **({"judge_extra": verdict.extra} if verdict.extra else {}))
    for row in rows:
        row["annotator"] = judge_label(judge)
    done = [r for r in rows if r["preference"] is not None]
    unjudged = [r for r in rows if r["preference"] is None]
    prefs = [float(r["preference"]) for r in done]
    metrics = win_rate_metrics(prefs)
    frame = pd.DataFrame(done, columns=["instruction", "output_1", "output_2", "generator_1", "generator_2", "index",
                                        "preference"]) if done else pd.DataFrame()
    lc = length_controlled(frame, full_glm) if done else {
        "lc_win_rate": None, "lc_standard_error": None, "lc_method": None, "lc_error": "no judged pairs"}
    ci = bootstrap_mean_ci([(p - 1.0) * 100 for p in prefs], bootstrap_samples, seed)
    result = {
        "generator": pairs[0]["generator_2"],
        "reference_generator": pairs[0]["generator_1"],
        "judge": judge.identity(),
        "unit": "percent",
        "n": len(rows),
        "n_judged": len(done),
        "n_unjudged": len(unjudged),
        "n_identical": len(identical),
        "n_cached": sum(1 for r in rows if r.get("cached")),
        "n_without_reference_output": len(missing),
        **{k: metrics[k] for k in ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_wins_base",
                                   "n_draws")},
        "win_rate_ci": ci,
        "ci_level": 0.95,
        "bootstrap_samples": bootstrap_samples,
        "bootstrap_seed": seed,
        **lc,
        "avg_length": sum(len(p["output_2"]) for p in pairs) / len(pairs),
        "reference_avg_length": sum(len(p["output_1"]) for p in pairs) / len(pairs),
        "unjudged": [{"index": r["index"], "instruction": r["instruction"][:200], "error": r["error"]} for r in unjudged[:50]],
    }
    return result, rows
