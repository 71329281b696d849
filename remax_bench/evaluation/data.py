"""Evaluation data: AlpacaEval instructions, MT-bench questions, reference answers and judge prompts.

Each comes from one of three places, chosen in the suite:
- ``synthetic``: the synthetic task's held-out prompts / two-turn questions (no download, gradable by the
  gold scorer);
- ``default``: the public sets, fetched once and cached under ``~/.cache/remax_bench`` (or
  ``$REMAX_BENCH_CACHE``): AlpacaEval's 805 instructions (dataset ``tatsu-lab/alpaca_eval``), MT-bench's 80
  questions, its reference answers and FastChat's judge prompts (from FastChat's repository; the judge
  prompts are not part of the fschat wheel);
- a local path.

Without network and without a cached copy, an ``EvalDataError`` says which data is missing and which suite
field takes a local file instead. ``HF_HUB_OFFLINE=1`` (or ``REMAX_BENCH_OFFLINE=1``) skips every download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from remax_bench.core.datafiles import DataError, json_records
from remax_bench.evaluation.common import (
    EvalDataError,
    cache_dir,
    download,
    offline_reason,
    run_with_timeout,
    write_json,
)

ALPACA_EVAL_DATASET = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_FILE = "alpaca_eval.json"  # the file the dataset's loading script reads: 805 instructions
FASTCHAT_DATA_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data"
MT_BENCH_QUESTIONS_URL = f"{FASTCHAT_DATA_URL}/mt_bench/question.jsonl"
MT_BENCH_REFERENCE_URL = f"{FASTCHAT_DATA_URL}/mt_bench/reference_answer/gpt-4.jsonl"
JUDGE_PROMPTS_URL = f"{FASTCHAT_DATA_URL}/judge_prompts.jsonl"
MT_BENCH_SIZE = 80
SYNTHETIC_DATASET = "remax_bench_synthetic"
# FastChat's single-answer grading uses these four prompts (gen_judgment.make_judge_single).
SINGLE_PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
DOWNLOAD_TIMEOUT_S = 20.0


def synthetic_task(synthetic: Any = None):
    """The synthetic task of the suite's ``data.synthetic`` block (defaults when None)."""
    from remax_bench.core.task import SyntheticTask

    if synthetic is None:
        return SyntheticTask()
    return SyntheticTask(seed=synthetic.seed, tasks=synthetic.tasks, demo_noise=synthetic.demo_noise)


def _n_eval(synthetic: Any) -> int:
    return getattr(synthetic, "n_eval", None) or 128


# -- fetching ------------------------------------------------------------------------------------
def _cached_or_fetched(cached: Path, fetch, what: str, how_to_provide: str) -> Path:
    """The cached file, else fetch() into it; EvalDataError with the way out when neither works."""
    if cached.is_file():
        return cached
    why = offline_reason()
    if why is None:
        try:
            fetch(cached)
            if cached.is_file():
                return cached
            why = "the download produced no file"
        except Exception as err:  # noqa: BLE001 - any failure means the same thing here: not available
            why = f"download failed: {type(err).__name__}: {str(err)[:200]}"
    else:
        why = f"offline ({why})"
    raise EvalDataError(
        f"{what} is not cached at {cached} and cannot be downloaded ({why}). {how_to_provide} "
        f"Or run once on a machine that is online and copy {cached} here."
    )


def _fetch_url(url: str):
    return lambda dest: download(url, dest, DOWNLOAD_TIMEOUT_S)


def _fetch_alpaca_eval(dest: Path) -> None:
    # The dataset's loading script (which datasets>=4 no longer runs) reads this one JSON file; take it directly.
    from huggingface_hub import hf_hub_download

    path = run_with_timeout(
        lambda: hf_hub_download(ALPACA_EVAL_DATASET, ALPACA_EVAL_FILE, repo_type="dataset",
                                cache_dir=str(cache_dir() / "hf"), etag_timeout=DOWNLOAD_TIMEOUT_S),
        DOWNLOAD_TIMEOUT_S * 3, f"download of {ALPACA_EVAL_DATASET}/{ALPACA_EVAL_FILE}",
    )
    rows = json.loads(Path(path).read_text())
    write_json(dest, [{"instruction": r["instruction"], "dataset": r.get("dataset", "alpaca_eval"), "index": i}
                      for i, r in enumerate(rows)])


# -- AlpacaEval instructions -----------------------------------------------------------------------
ALPACA_HOW = (
    "Give the instructions as a local file: set eval.alpaca_eval.prompts to a .json/.jsonl path with an "
    "'instruction' per row (AlpacaEval's alpaca_eval.json works as is), or use 'synthetic' for the synthetic "
    "task's held-out prompts."
)


def _records(path: Path, field: str) -> list[tuple[int, Any]]:
    """(line, row) of a local JSON / JSON lines file; UTF-8 and JSON faults named by file and line."""
    if not path.is_file():
        raise EvalDataError(f"{field}: file {path} not found")
    try:
        return json_records(path, field)
    except DataError as err:
        raise EvalDataError(str(err)) from None


def _read_rows(path: Path, field: str) -> list[tuple[int, Any]]:
    records = _records(path, field)
    if len(records) == 1 and isinstance(records[0][1], dict) and all(isinstance(v, list) for v in records[0][1].values()):
        columns = records[0][1]  # {"instruction": [...]} column layout: rows have no line of their own
        records = [(1, dict(zip(columns, values))) for values in zip(*columns.values())]
    if not records:
        raise EvalDataError(f"{field}: {path} holds no rows")
    return records


def alpaca_eval_instructions(source: str, max_instances: int | None = None, synthetic: Any = None) -> list[dict]:
    """Rows {instruction, dataset, index} in the set's order; ``index`` is the position in the full set
    (AlpacaEval's length-controlled GLM keys its instruction difficulty on it)."""
    if source == "synthetic":
        prompts = synthetic_task(synthetic).prompts(_n_eval(synthetic), "eval")
        rows = [{"instruction": p["prompt"], "dataset": SYNTHETIC_DATASET, "index": i} for i, p in enumerate(prompts)]
    elif source == "default":
        cached = cache_dir() / "alpaca_eval" / ALPACA_EVAL_FILE
        path = _cached_or_fetched(cached, _fetch_alpaca_eval,
                                  f"AlpacaEval's 805 instructions ({ALPACA_EVAL_DATASET}/{ALPACA_EVAL_FILE})", ALPACA_HOW)
        rows = json.loads(path.read_text())
    else:
        raw = _read_rows(Path(source).expanduser(), "eval.alpaca_eval.prompts")
        rows = []
        for i, (line, row) in enumerate(raw):
            text = row.get("instruction", row.get("prompt")) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise EvalDataError(f"eval.alpaca_eval.prompts: {source}, line {line}: no 'instruction' (or 'prompt') "
                                    "text")
            rows.append({"instruction": text, "dataset": row.get("dataset", Path(source).stem), "index": i})
    # AlpacaEval pairs outputs by instruction, so each instruction counts once (the synthetic generator can
    # draw one twice); the first occurrence keeps its index.
    seen: set[str] = set()
    rows = [r for r in rows if not (r["instruction"] in seen or seen.add(r["instruction"]))]
    return rows[:max_instances] if max_instances else rows


# -- MT-bench questions, reference answers, judge prompts -------------------------------------------
QUESTIONS_HOW = (
    "Give the questions as a local file: set eval.mt_bench.questions to the path of a question.jsonl in "
    "FastChat's format (question_id, category, turns), e.g. FastChat's fastchat/llm_judge/data/mt_bench/"
    "question.jsonl, or use 'synthetic' for two-turn questions of the synthetic task."
)
JUDGE_PROMPTS_HOW = (
    "Give them as a local file: set eval.mt_bench.judge_prompts to a judge_prompts.jsonl in FastChat's format "
    f"(name, type, system_prompt, prompt_template, output_format; names {', '.join(SINGLE_PROMPT_NAMES)}), e.g. "
    "FastChat's fastchat/llm_judge/data/judge_prompts.jsonl."
)
REFERENCE_HOW = (
    "Give them as a local file: set eval.mt_bench.questions to a local question.jsonl with FastChat's "
    "reference_answer/gpt-4.jsonl next to it (the layout of fastchat/llm_judge/data/mt_bench/)."
)


def mt_bench_questions(source: str, max_questions: int | None = None, synthetic: Any = None) -> list[dict]:
    """Questions in FastChat's format: {question_id, category, turns: [turn1, turn2], reference?}."""
    if source == "synthetic":
        records = [("", q) for q in synthetic_task(synthetic).mt_bench_questions(max_questions or MT_BENCH_SIZE)]
    else:
        if source == "default":
            path = _cached_or_fetched(cache_dir() / "mt_bench" / "question.jsonl", _fetch_url(MT_BENCH_QUESTIONS_URL),
                                      "MT-bench's 80 questions (FastChat data/mt_bench/question.jsonl)", QUESTIONS_HOW)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise EvalDataError(f"eval.mt_bench.questions: file {path} not found. {QUESTIONS_HOW}")
        # Read as FastChat's load_questions reads it (one JSON object per line), but with the file and line of a
        # fault: FastChat's raises a bare UnicodeDecodeError, or places a JSON fault within its one line.
        records = [(f"{path}, line {line}: ", q) for line, q in _records(path, "eval.mt_bench.questions")]
    for where, q in records:
        if not isinstance(q, dict) or not isinstance(q.get("turns"), list) or not 1 <= len(q["turns"]) <= 2 \
                or "question_id" not in q:
            named = q.get("question_id") if isinstance(q, dict) else None
            raise EvalDataError(f"eval.mt_bench.questions: {where}question {named!r} needs question_id and a list of "
                                "one or two turns (MT-bench's single-answer grading covers two)")
        q.setdefault("category", "general")
    questions = [q for _, q in records]
    return questions[:max_questions] if max_questions else questions


def mt_bench_reference_answers(source: str, questions: list[dict]) -> dict[Any, list[str]]:
    """Reference answers by question id (turns), for FastChat's reference-guided grading of the categories
    in NEED_REF_CATS (math, reasoning, coding). ``default``: FastChat's reference_answer/gpt-4.jsonl; a local
    question file: reference_answer/*.jsonl next to it, else the questions' own ``reference`` lists."""
    answers: dict[Any, list[str]] = {}
    if source == "synthetic":
        from remax_bench.core.task import true_answer

        return {q["question_id"]: [true_answer(t) for t in q["turns"]] for q in questions}
    if source == "default":
        path = _cached_or_fetched(cache_dir() / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
                                  _fetch_url(MT_BENCH_REFERENCE_URL),
                                  "MT-bench's reference answers (FastChat data/mt_bench/reference_answer/gpt-4.jsonl)",
                                  REFERENCE_HOW)
        files = [path]
    else:
        folder = Path(source).expanduser().parent / "reference_answer"
        # FastChat's references are GPT-4's answers (gpt-4.jsonl); any other single file is taken as given.
        files = [folder / "gpt-4.jsonl"] if (folder / "gpt-4.jsonl").is_file() else sorted(folder.glob("*.jsonl"))
    for f in files[:1]:
        for line, row in _records(f, "eval.mt_bench.questions (its reference answers)"):
            try:
                answers[row["question_id"]] = list(row["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise EvalDataError(f"eval.mt_bench.questions: reference answers {f}, line {line}: expected FastChat's "
                                    "layout {question_id, choices: [{turns: [...]}]}") from None
    for q in questions:
        if q["question_id"] not in answers and any(q.get("reference") or []):
            answers[q["question_id"]] = list(q["reference"])
    return answers


def reference_answers_note(source: str, questions: list[dict]) -> str | None:
    """What the reference-guided questions of a local question file are graded against, when it is not
    FastChat's own reference_answer/gpt-4.jsonl beside it; None otherwise."""
    if source in ("synthetic", "default"):
        return None
    from remax_bench.evaluation.llm_judges import needs_reference

    guided = [q for q in questions if needs_reference(q.get("category", ""))]
    if not guided:
        return None
    folder = Path(source).expanduser().parent / "reference_answer"
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if (folder / "gpt-4.jsonl").is_file():
        return None
    if files:
        return (f"eval.mt_bench.questions: {folder} has no gpt-4.jsonl, so the {len(guided)} math, reasoning and "
                f"coding questions are graded against {files[0].name} (FastChat grades them against GPT-4's answers)")
    with_own = sum(1 for q in guided if any(q.get("reference") or []))
    return (f"eval.mt_bench.questions: no {folder}/ beside the question file, so {with_own} of the {len(guided)} math, "
            "reasoning and coding questions are graded against the question file's own short `reference` lists and "
            f"{len(guided) - with_own} without a reference (FastChat grades them against GPT-4's answers in "
            "reference_answer/gpt-4.jsonl)")


def judge_prompts(source: str) -> dict[str, dict]:
    """FastChat's judge prompts by name, read as fastchat.llm_judge.common.load_judge_prompts reads them (one JSON
    object per line, keyed by its name), with the file and line of a fault."""
    if source == "default":
        path = _cached_or_fetched(cache_dir() / "fastchat" / "judge_prompts.jsonl", _fetch_url(JUDGE_PROMPTS_URL),
                                  "FastChat's judge prompts (data/judge_prompts.jsonl; not shipped in the fschat wheel)",
                                  JUDGE_PROMPTS_HOW)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise EvalDataError(f"eval.mt_bench.judge_prompts: file {path} not found. {JUDGE_PROMPTS_HOW}")
    prompts = {}
    for line, row in _records(path, "eval.mt_bench.judge_prompts"):
        if not isinstance(row, dict) or "name" not in row:
            raise EvalDataError(f"eval.mt_bench.judge_prompts: {path}, line {line}: expected a JSON object with a "
                                f"'name', as FastChat's judge prompts have. {JUDGE_PROMPTS_HOW}")
        prompts[row["name"]] = row
    missing = [name for name in SINGLE_PROMPT_NAMES if name not in prompts]
    if missing:
        raise EvalDataError(f"eval.mt_bench.judge_prompts: {path} lacks the prompts {missing}. {JUDGE_PROMPTS_HOW}")
    for name in SINGLE_PROMPT_NAMES:
        if prompts[name].get("output_format") != "[[rating]]":
            raise EvalDataError(f"eval.mt_bench.judge_prompts: prompt {name!r} in {path} must have output_format "
                                f"'[[rating]]' (single-answer grading), got {prompts[name].get('output_format')!r}")
    return prompts
