"""Entry points: evaluate one checkpoint, or run the eval stage over every checkpoint of a suite.

Per checkpoint, ``out_dir`` holds:
  generation.json               backend and its exact arguments (vLLM's LLM / SamplingParams kwargs), timing
  alpaca_eval_outputs.json      AlpacaEval model outputs [{instruction, output, generator, dataset}]
  alpaca_eval_judgments.jsonl   one pairwise annotation per instruction (preference 1 / 1.5 / 2, or null)
  alpaca_eval.json              win rate, standard error, bootstrap interval, length-controlled win rate
  mt_bench_answers.jsonl        FastChat model answers {question_id, answer_id, model_id, choices, tstamp}
  mt_bench_judgments.jsonl      FastChat single judgments, one per question and turn (score -1: unjudged)
  mt_bench.json                 mean score, per turn, per category, bootstrap interval
  summary.json                  the checkpoint's row of the eval summary

Generation happens for every checkpoint before any judging, so on a single GPU a local judge server never
shares the device with a generation engine.
"""

from __future__ import annotations

import functools
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from remax_bench.evaluation.alpaca import judge_alpaca_eval, read_outputs
from remax_bench.evaluation.cache import JudgmentCache
from remax_bench.evaluation.common import (
    EvalConfigError,
    cache_dir,
    dir_fingerprint,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
)
from remax_bench.evaluation.data import (
    alpaca_eval_instructions,
    judge_prompts,
    mt_bench_questions,
    mt_bench_reference_answers,
    reference_answers_note,
)
from remax_bench.evaluation.generation import (
    GenerationSettings,
    alpaca_eval_outputs,
    mt_bench_answer_records,
    mt_bench_turns,
    open_generator,
    release_engines,
)
from remax_bench.evaluation.judges import build_judge
from remax_bench.evaluation.llm_judges import OpenAIJudge, needs_reference
from remax_bench.evaluation.mt_bench import UNJUDGED_SCORE, judge_mt_bench
from remax_bench.evaluation.unjudged import JudgingFailed, failure_message, shortfalls
from remax_bench.evaluation.verdicts import Judge, judge_label

ALPACA_OUTPUTS = "alpaca_eval_outputs.json"
ALPACA_JUDGMENTS = "alpaca_eval_judgments.jsonl"
ALPACA_RESULT = "alpaca_eval.json"
MT_ANSWERS = "mt_bench_answers.jsonl"
MT_JUDGMENTS = "mt_bench_judgments.jsonl"
MT_RESULT = "mt_bench.json"
SUMMARY = "summary.json"
GENERATION = "generation.json"


def _log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def as_eval_config(cfg: Any):
    """The suite's eval block: a pydantic ``Eval``, or a plain dict validated into one."""
    if isinstance(cfg, dict):
        from remax_bench.core.config import Eval

        return Eval.model_validate(cfg)
    return cfg


def default_cache_path() -> Path:
    return cache_dir() / "judgments.jsonl"


@dataclass
class EvalData:
    instructions: list[dict] | None  # AlpacaEval rows {instruction, dataset, index}; None: disabled
    questions: list[dict] | None  # MT-bench questions; None: disabled
    alpaca_source: str
    mt_source: str

    @property
    def indices(self) -> dict[str, int]:
        return {r["instruction"]: r["index"] for r in self.instructions or []}


def load_eval_data(eval_cfg: Any, synthetic: Any = None) -> EvalData:
    """Instructions and questions of the enabled benchmarks (EvalDataError when they cannot be had)."""
    a, m = eval_cfg.alpaca_eval, eval_cfg.mt_bench
    return EvalData(
        instructions=alpaca_eval_instructions(a.prompts, a.max_instances, synthetic) if a.enabled else None,
        questions=mt_bench_questions(m.questions, m.max_questions, synthetic) if m.enabled else None,
        alpaca_source=a.prompts, mt_source=m.questions,
    )


# -- generation ------------------------------------------------------------------------------------
def generate_checkpoint(checkpoint_dir: str | Path, eval_cfg: Any, out_dir: str | Path, generator_name: str,
                        data: EvalData, *, seed: int = 0, precision: str | None = None, device: str | None = None,
                        tensor_parallel_size: int = 1, log: Callable[[str], None] = _log,
                        keep_engine: bool = False) -> dict:
    """Write the checkpoint's AlpacaEval outputs and MT-bench answers; returns the generation record.
    Outputs already in out_dir for the same checkpoint files, settings and data are reused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = GenerationSettings.from_config(eval_cfg.generation)
    fingerprint = stable_hash({
        "checkpoint": dir_fingerprint(checkpoint_dir), "settings": asdict(settings), "backend": eval_cfg.backend,
        "template": eval_cfg.conversation_template, "generator": generator_name, "seed": seed, "precision": precision,
        "mt_bench_temperature": eval_cfg.mt_bench.temperature,
        "instructions": [r["instruction"] for r in data.instructions or []], "questions": data.questions,
    })
    wanted = ([ALPACA_OUTPUTS] if data.instructions is not None else []) + ([MT_ANSWERS] if data.questions is not None else [])
    previous = out / GENERATION
    if previous.is_file() and all((out / f).is_file() for f in wanted):
        import json

        record = json.loads(previous.read_text())
        if record.get("fingerprint") == fingerprint:
            log(f"{generator_name}: outputs in {out} are up to date, reused")
            return {**record, "reused": True}
    with open_generator(str(checkpoint_dir), eval_cfg, seed=seed, precision=precision, device=device,
                        tensor_parallel_size=tensor_parallel_size, keep_engine=keep_engine) as gen:
        log(f"{generator_name}: generating with {gen.backend} ({gen.record['backend_reason']})")
        trimmed = {}  # prompts longer than the context, kept by their end: per benchmark (prompts, trimmed)
        if data.instructions is not None:
            before = gen.record["n_prompts_truncated"]
            write_json(out / ALPACA_OUTPUTS, alpaca_eval_outputs(gen, data.instructions, generator_name))
            trimmed["alpaca_eval"] = [len(data.instructions), gen.record["n_prompts_truncated"] - before]
        if data.questions is not None:
            before = gen.record["n_prompts_truncated"]
            turns = mt_bench_turns(gen, data.questions, eval_cfg.mt_bench.temperature)
            write_jsonl(out / MT_ANSWERS, mt_bench_answer_records(data.questions, turns, generator_name))
            trimmed["mt_bench"] = [sum(map(len, turns)), gen.record["n_prompts_truncated"] - before]
        record = {**gen.record, "prompts_trimmed": trimmed, "context_room": gen.context_room()}
    record.update(fingerprint=fingerprint, generator_name=generator_name, reused=False)
    write_json(out / GENERATION, record)
    return record


# -- judging ---------------------------------------------------------------------------------------
LEADERBOARD_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def leaderboard_comparison(prompts: str, judge: Judge, reference: str | None) -> dict:
    """Whether this win rate means what the AlpacaEval 2.0 leaderboard's means: its 805 instructions, its
    annotator (weighted_alpaca_eval_gpt4_turbo through alpaca_eval) and its reference outputs (gpt4_turbo).
    The length-controlled win rate's GLM assumes the same; elsewhere it is this project's measure only."""
    reasons = []
    if prompts != "default":
        reasons.append(f"prompts are {prompts!r}, not AlpacaEval's 805 instructions")
    annotator = judge.identity().get("alpaca_eval_annotator")
    if annotator != LEADERBOARD_ANNOTATOR:
        reasons.append(f"judged by {judge_label(judge)}, not alpaca_eval's {LEADERBOARD_ANNOTATOR} annotator")
    if not reference or "gpt4_turbo" not in str(reference):
        reasons.append(f"the reference is {reference!r}, not the leaderboard's gpt4_turbo outputs")
    return {"leaderboard_comparable": not reasons,
            "leaderboard_note": "; ".join(reasons) if reasons else "AlpacaEval 2.0's setting: comparable"}


def _gold_reward_mean(outputs: list[dict]) -> float | None:
    from remax_bench.core.task import gold_score

    try:
        scores = [gold_score(o["instruction"], o["output"]) for o in outputs]
    except ValueError:
        return None
    return sum(scores) / len(scores) if scores else None


# What a row keeps when its judging failed: the counts, no figure.
COUNT_KEYS = ("name", "judge", "n", "n_judged", "n_unjudged", "mt_bench_n_judgments", "mt_bench_n_unjudged",
              "generation_backend")


def judge_checkpoint(out_dir: str | Path, eval_cfg: Any, judge: Judge, data: EvalData, *, generator_name: str,
                     reference_outputs: list[dict] | str | Path | None = None, cache: JudgmentCache | None = None,
                     seed: int = 0, reference_answers: Callable[[], dict] | dict | None = None,
                     generation: dict | None = None) -> dict:
    """Judge the outputs in out_dir; writes the judgments, results and summary.json; returns the row.

    When more than eval.max_unjudged_fraction of a benchmark's items went unjudged, only the judgments are
    written (with each item's error): the row says so under ``judging_failed`` and holds no figure."""
    out = Path(out_dir)
    samples = eval_cfg.bootstrap_samples
    row: dict[str, Any] = {"name": generator_name, "judge": judge_label(judge)}
    files: dict[str, Any] = {}  # result files, written only when the figures count
    errors: dict[str, list] = {"alpaca": [], "mt": []}
    if data.instructions is not None:
        outputs = read_outputs(out / ALPACA_OUTPUTS)
        if reference_outputs is None:
            result: dict = {"skipped": "no reference outputs given, so no win rate", "n": len(outputs)}
            judgments: list[dict] = []
        else:
            result, judgments = judge_alpaca_eval(
                outputs, read_outputs(reference_outputs), judge, cache, indices=data.indices,
                full_glm=data.alpaca_source == "default", bootstrap_samples=samples, seed=seed)
            result.update(leaderboard_comparison(data.alpaca_source, judge, result.get("reference_generator")))
        if data.alpaca_source == "synthetic":
            result["gold_reward_mean"] = _gold_reward_mean(outputs)
        write_jsonl(out / ALPACA_JUDGMENTS, judgments)
        files[ALPACA_RESULT] = result
        errors["alpaca"] = [j.get("error") for j in judgments if j.get("preference") is None]
        row.update({
            "reference": result.get("reference_generator"),
            "win_rate": result.get("win_rate"), "win_rate_se": result.get("standard_error"),
            "win_rate_ci": result.get("win_rate_ci"), "discrete_win_rate": result.get("discrete_win_rate"),
            "lc_win_rate": result.get("lc_win_rate"), "lc_win_rate_se": result.get("lc_standard_error"),
            "lc_method": result.get("lc_method"), "lc_error": result.get("lc_error"),
            "lc_not_estimable": result.get("lc_not_estimable"),
            "n": result.get("n"), "n_judged": result.get("n_judged"), "n_unjudged": result.get("n_unjudged"),
            "n_wins": result.get("n_wins"), "n_losses": result.get("n_wins_base"), "n_draws": result.get("n_draws"),
            "avg_output_length": result.get("avg_length"), "gold_reward_mean": result.get("gold_reward_mean"),
            "leaderboard_comparable": result.get("leaderboard_comparable"),
            "leaderboard_note": result.get("leaderboard_note"),
        })
    if data.questions is not None:
        records = {r["question_id"]: r for r in read_jsonl(out / MT_ANSWERS)}
        answers = [records[q["question_id"]]["choices"][0]["turns"] for q in data.questions]
        result, judgments = judge_mt_bench(data.questions, answers, generator_name, judge, cache,
                                           reference_answers=reference_answers, bootstrap_samples=samples, seed=seed)
        write_jsonl(out / MT_JUDGMENTS, judgments)
        files[MT_RESULT] = result
        errors["mt"] = [j.get("error") for j in judgments if j["score"] == UNJUDGED_SCORE]
        row.update({
            "mt_bench_score": result["score"], "mt_bench_ci": result["ci"], "mt_bench_turn1": result["turn1"],
            "mt_bench_turn2": result["turn2"], "mt_bench_by_category": result["by_category"],
            "mt_bench_n_judgments": result["n_judgments"], "mt_bench_n_unjudged": result["n_unjudged"],
            "mt_bench_n_missing_reference": result["n_missing_reference"],
        })
    if generation:
        row["generation_backend"] = generation.get("backend")
        row["generate_time_s"] = generation.get("generate_time_s")
    failing = shortfalls(row, errors["alpaca"], errors["mt"], eval_cfg.max_unjudged_fraction)
    if failing:
        for name in (*files, SUMMARY):  # an earlier run's figures must not pass for this run's
            (out / name).unlink(missing_ok=True)
        counts = {k: row.get(k) for k in COUNT_KEYS if k in row}
        return {**counts, "judging_failed": failing, "unjudged_errors": errors["alpaca"] + errors["mt"]}
    for name, result in files.items():
        write_json(out / name, result)
    write_json(out / SUMMARY, row)
    return row


def raise_if_judging_failed(rows: list[dict], judge: Judge, max_fraction: float) -> None:
    """JudgingFailed, in one line, when any checkpoint's figures do not count (see unjudged.py)."""
    failed = {r["name"]: r["judging_failed"] for r in rows if r.get("judging_failed")}
    if failed:
        errors = [e for r in rows if r.get("judging_failed") for e in r["unjudged_errors"]]
        url = judge.identity().get("base_url")
        raise JudgingFailed(failure_message(failed, errors, judge_label(judge) + (f" at {url}" if url else ""),
                                            max_fraction))


def _judge_for(eval_cfg, judge, reward_model, log_dir, device):
    """(judge, context): a given judge is used as is; otherwise the suite's, opened and closed here."""
    if judge is not None:
        return judge, nullcontext(judge)
    built = build_judge(eval_cfg.judge, reward_model=reward_model, log_dir=log_dir, device=device,
                        judge_prompts=functools.cache(lambda: judge_prompts(eval_cfg.mt_bench.judge_prompts)),
                        alpaca_annotator=eval_cfg.alpaca_eval.annotator)
    return built, built


def preflight(judge: Judge, data: EvalData, references: Callable[[], dict]) -> None:
    """Fail before any generation when judging could not happen: a missing API key, judge prompts or
    reference answers that are neither cached nor given."""
    if not isinstance(judge, OpenAIJudge):
        return
    judge.api_key()
    if data.questions is not None:
        judge.judge_prompts()
        if any(needs_reference(q.get("category", "")) for q in data.questions):
            references()


def evaluate_checkpoint(checkpoint_dir: str | Path, eval_cfg: Any, out_dir: str | Path,
                        reference_outputs: list[dict] | str | Path | None = None, judge: Judge | None = None,
                        generator_name: str | None = None, *, synthetic: Any = None, seed: int = 0,
                        precision: str | None = None, device: str | None = None, reward_model: str | None = None,
                        cache_path: str | Path | None = None, log: Callable[[str], None] = _log) -> dict:
    """Generate, judge and score one checkpoint; returns its summary row (also in out_dir/summary.json).

    ``reference_outputs``: AlpacaEval outputs to compare against (a list, a .json path, or a checkpoint
    directory whose outputs are generated into out_dir/reference/); None: no win rate.
    ``judge``: a Judge to use (the caller opens and closes it); None: the suite's ``eval.judge``.
    ``synthetic``: the suite's ``data.synthetic`` block for 'synthetic' prompts (defaults when None).
    """
    ev = as_eval_config(eval_cfg)
    out = Path(out_dir)
    name = generator_name or Path(checkpoint_dir).name
    data = load_eval_data(ev, synthetic)
    references = functools.cache(lambda: mt_bench_reference_answers(data.mt_source, data.questions))
    judge, context = _judge_for(ev, judge, reward_model, out, device)
    preflight(judge, data, references)
    generation = generate_checkpoint(checkpoint_dir, ev, out, name, data, seed=seed, precision=precision, device=device,
                                     log=log)
    if reference_outputs is not None and not isinstance(reference_outputs, list) and Path(reference_outputs).is_dir():
        generate_checkpoint(reference_outputs, ev, out / "reference", "reference", data, seed=seed,
                            precision=precision, device=device, log=log)
        reference_outputs = out / "reference" / ALPACA_OUTPUTS
    cache = JudgmentCache(cache_path or default_cache_path())
    with context:
        row = judge_checkpoint(out, ev, judge, data, generator_name=name, reference_outputs=reference_outputs,
                               cache=cache, seed=seed, generation=generation, reference_answers=references)
    raise_if_judging_failed([row], judge, ev.max_unjudged_fraction)
    return row


# -- the eval stage --------------------------------------------------------------------------------
def resolve_reference(reference: str, checkpoints: dict[str, str]) -> tuple[str | None, str | None, dict[str, str]]:
    """(reference checkpoint name, reference outputs file, checkpoints incl. the reference) for eval.reference:
    a stage name among the inputs, a checkpoint directory, or an AlpacaEval outputs JSON."""
    if reference in checkpoints:
        return reference, None, checkpoints
    path = Path(reference).expanduser()
    if path.is_dir():
        return "reference", None, {"reference": str(path), **checkpoints}
    if path.is_file():
        return None, str(path), checkpoints
    raise EvalConfigError(f"eval.reference: {reference!r} is neither a stage among the checkpoints to evaluate "
                          f"({', '.join(checkpoints)}) nor a checkpoint directory nor an AlpacaEval outputs file")


def _warnings(row: dict) -> list[str]:
    name, notes = row["name"], []
    if row.get("n_unjudged"):
        notes.append(f"{name}: {row['n_unjudged']} of {row['n']} AlpacaEval pairs unjudged (excluded from the win "
                     f"rate; see alpaca_eval.json)")
    if row.get("mt_bench_n_unjudged"):
        notes.append(f"{name}: {row['mt_bench_n_unjudged']} of {row['mt_bench_n_judgments']} MT-bench turns unjudged")
    if row.get("mt_bench_n_missing_reference"):
        notes.append(f"{name}: {row['mt_bench_n_missing_reference']} MT-bench turns of reference-guided categories "
                     "were graded without a reference answer")
    if row.get("win_rate") is not None and row.get("lc_win_rate") is None and row.get("lc_error"):
        notes.append(f"{name}: no length-controlled win rate: {row['lc_error']}")
    return notes


def generation_warnings(generation: dict[str, dict], ev: Any) -> list[str]:
    """What a reader of the figures must know about the answers: prompts trimmed to fit the context, and the
    temperatures the answers were sampled at."""
    notes = []
    for name, record in generation.items():
        for bench, (n, trimmed) in (record.get("prompts_trimmed") or {}).items():
            if trimmed:
                what = "AlpacaEval prompts" if bench == "alpaca_eval" else "MT-bench prompts (turns)"
                notes.append(f"{name}: {trimmed} of {n} {what} were longer than the context leaves room for "
                             f"({record.get('context_room')} tokens besides eval.generation.max_new_tokens) and kept "
                             "only their end")
    used = next((r for r in generation.values() if r.get("mt_bench_temperatures")), None)
    if used:
        by_temperature: dict[float, list[str]] = {}
        for category, t in used["mt_bench_temperatures"].items():
            by_temperature.setdefault(t, []).append(category or "(no category)")
        groups = "; ".join(f"{t:g} ({', '.join(c)})" for t, c in sorted(by_temperature.items(), reverse=True))
        notes.append(f"MT-bench answers sampled at temperature {groups} (eval.mt_bench.temperature: "
                     f"{ev.mt_bench.temperature}); AlpacaEval answers at {ev.generation.temperature:g} "
                     "(eval.generation.temperature)")
    return notes


def run_eval_stage(stage_config: dict, out_dir: str | Path, log: Callable[[str], None] = _log,
                   cache_path: str | Path | None = None, suite=None) -> dict:
    """Evaluate every checkpoint of a stage config {"stage": "eval", "seed", "suite", "inputs": {"checkpoints":
    {name: dir}, "reward_model": dir}}; writes out_dir/<name>/... and out_dir/summary.json (one row each).
    ``suite``: the stage's view of the suite that records what it reads (default: the config's suite)."""
    from remax_bench.core.config import Suite

    suite = suite if suite is not None else Suite.model_validate(stage_config["suite"])
    ev, seed = suite.eval, int(stage_config.get("seed", 0))
    inputs = stage_config.get("inputs") or {}
    checkpoints = {k: str(v) for k, v in (inputs.get("checkpoints") or {}).items()}
    if not checkpoints:
        raise EvalConfigError("inputs.checkpoints: no checkpoint to evaluate")
    ref_name, ref_file, checkpoints = resolve_reference(ev.reference, checkpoints)
    order = ([ref_name] if ref_name else []) + [n for n in checkpoints if n != ref_name]
    out = Path(out_dir)
    data = load_eval_data(ev, suite.data.synthetic)
    device = None if suite.runtime.device == "auto" else suite.runtime.device
    tp = suite.runtime.num_gpus if suite.runtime.num_gpus > 1 else 1
    references = functools.cache(lambda: mt_bench_reference_answers(data.mt_source, data.questions))
    judge, context = _judge_for(ev, None, inputs.get("reward_model"), out, device)
    preflight(judge, data, references)
    generation = {}
    try:
        for name in order:  # one vLLM engine serves every checkpoint of the same shape, reloading weights
            generation[name] = generate_checkpoint(checkpoints[name], ev, out / name, name, data, seed=seed,
                                                   precision=suite.shared.precision, device=device,
                                                   tensor_parallel_size=tp, log=log, keep_engine=True)
    finally:
        release_engines()  # every generation engine is gone before the judge starts
    reference_outputs = None
    if data.instructions is not None:
        reference_outputs = read_outputs(ref_file) if ref_file else read_outputs(out / ref_name / ALPACA_OUTPUTS)
    cache = JudgmentCache(cache_path or default_cache_path())
    rows = []
    with context:
        for name in order:
            log(f"{name}: judging with {judge_label(judge)}")
            row = judge_checkpoint(out / name, ev, judge, data, generator_name=name, reference_outputs=reference_outputs,
                                   cache=cache, seed=seed, reference_answers=references, generation=generation[name])
            row.update(checkpoint=checkpoints[name], is_reference=name == ref_name)
            rows.append(row)
            if row.get("judging_failed"):
                log(f"{name}: unjudged {', '.join(row['judging_failed'])}: no figure")
                continue
            shown = {k: row.get(k) for k in ("win_rate", "lc_win_rate", "mt_bench_score") if row.get(k) is not None}
            log(f"{name}: " + ", ".join(f"{k}={v:.2f}" for k, v in shown.items()))
    raise_if_judging_failed(rows, judge, ev.max_unjudged_fraction)  # after every checkpoint: each verdict cached
    note = reference_answers_note(data.mt_source, data.questions) if data.questions and judge.reads_references else None
    references_note = [note] if note else []
    summary = {
        "reference": ref_name or ref_file,
        "judge": judge.identity(),
        "judge_label": judge_label(judge),
        "win_rate_unit": "percent",
        "alpaca_eval_prompts": data.alpaca_source if data.instructions is not None else None,
        "n_prompts": len(data.instructions) if data.instructions is not None else 0,
        "mt_bench_questions": data.mt_source if data.questions is not None else None,
        "n_questions": len(data.questions) if data.questions is not None else 0,
        "rows": rows,
        "generation": generation,
        "warnings": generation_warnings(generation, ev) + references_note + [w for row in rows for w in _warnings(row)],
    }
    if data.questions is not None:
        summary["fastchat_dir"] = str(fastchat_layout(out, order, judge).relative_to(out))
    write_json(out / SUMMARY, summary)
    return summary


def fastchat_judge_name(judge: Judge) -> str:
    """The judge's name as FastChat's file names use it (``gpt-4`` -> model_judgment/gpt-4_single.jsonl)."""
    name = judge.identity().get("model") or judge.type
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(Path(str(name)).name))


def fastchat_layout(out: Path, names: list[str], judge: Judge) -> Path:
    """Every checkpoint's MT-bench answers and judgments in FastChat's own layout, under out/fastchat:
    data/mt_bench/model_answer/<model>.jsonl and data/mt_bench/model_judgment/<judge>_single.jsonl (all models
    in one file, as FastChat's gen_judgment writes it). From that folder, FastChat's own
    ``python -m fastchat.llm_judge.show_result --bench-name mt_bench --judge-model <judge>`` prints the
    same scores as the report."""
    root = out / "fastchat"
    bench = root / "data" / "mt_bench"
    judgments = []
    for name in names:
        if (out / name / MT_ANSWERS).is_file():
            write_jsonl(bench / "model_answer" / f"{name}.jsonl", read_jsonl(out / name / MT_ANSWERS))
        if (out / name / MT_JUDGMENTS).is_file():
            judgments += read_jsonl(out / name / MT_JUDGMENTS)
    write_jsonl(bench / "model_judgment" / f"{fastchat_judge_name(judge)}_single.jsonl", judgments)
    return root
