"""One loader for prompts, SFT demonstrations and preference pairs.

A source is ``synthetic`` (the task in ``task.py``), a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or a
Hugging Face dataset id. Rows are normalised to ``{prompt}``, ``{prompt, response}`` and
``{prompt, chosen, rejected}``, where ``prompt`` is the raw instruction without any chat template.

Layouts recognised (``layout: auto`` looks at the columns):
- plain: ``prompt``/``response`` (also ``instruction``/``output``, ``question``), ``prompt``/``chosen``/``rejected``;
- Anthropic HH: ``chosen``/``rejected`` full transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``;
- UltraFeedback binarized: ``prompt`` plus ``chosen``/``rejected`` (and ``messages``) as lists of
  ``{role, content}`` messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remax_bench.task import SyntheticTask

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Data that cannot be used; the message names the source and the problem."""


def _synthetic(settings: Any) -> SyntheticTask:
    return SyntheticTask(seed=settings.seed, tasks=settings.tasks, demo_noise=settings.demo_noise)


def _read_rows(src: Any) -> list[dict]:
    """The raw rows of a local file or a hub dataset."""
    source = src.source
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"data file {path} not found")
        import datasets

        try:
            dataset = datasets.load_dataset(LOCAL_SUFFIXES.get(suffix, "json"), data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - any parse failure is a data error
            raise DataError(f"could not read {path}: {err}") from err
    else:
        import datasets

        try:
            dataset = datasets.load_dataset(source, name=src.subset, split=src.split)
        except Exception as err:  # noqa: BLE001
            raise DataError(
                f"could not load dataset {source!r} (split {src.split!r}): {type(err).__name__}: {err}. "
                "Offline? Give a local .jsonl or .parquet file as the source instead."
            ) from err
    rows = dataset.to_list()
    if src.max_examples:
        rows = rows[: src.max_examples]
    if not rows:
        raise DataError(f"dataset {source!r} is empty")
    return rows


def _detect(rows: list[dict], wanted: str, declared: str) -> str:
    if declared != "auto":
        return declared
    columns = set(rows[0])
    first = rows[0]
    if {"chosen", "rejected"} <= columns and isinstance(first["chosen"], list):
        return "ultrafeedback"
    if "messages" in columns and isinstance(first["messages"], list) and "prompt" in columns:
        return "ultrafeedback"
    if {"chosen", "rejected"} <= columns and "prompt" not in columns and HH_ASSISTANT in str(first["chosen"]):
        return "hh"
    if wanted == "sft" and "chosen" in columns and "prompt" not in columns and HH_ASSISTANT in str(first["chosen"]):
        return "hh"
    return "plain"


def split_hh(transcript: str) -> tuple[str, str]:
    """An HH transcript -> (prompt with the earlier turns, last assistant answer)."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"not an Anthropic HH transcript (no '\\n\\nAssistant:'): {transcript[:80]!r}")
    prompt = transcript[:cut].strip()
    if prompt.startswith("Human:"):
        prompt = prompt[len("Human:"):].strip()
    # Earlier turns stay in the prompt text, in the transcript's own markers.
    prompt = prompt.replace(HH_HUMAN, "\n\nHuman:").strip()
    return prompt, transcript[cut + len(HH_ASSISTANT):].strip()


def _last_assistant(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return message.get("content", "")
    raise DataError("a message list has no assistant message")


def _first_user(messages: list[dict]) -> str:
    for message in messages:
        if message.get("role") == "user":
            return message.get("content", "")
    raise DataError("a message list has no user message")


def _pick(row: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return None


PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
RESPONSE_COLUMNS = ("response", "output", "completion", "answer", "chosen")


def _normalise(rows: list[dict], wanted: str, layout: str, source: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        if layout == "hh":
            prompt, chosen = split_hh(row["chosen"])
            record: dict = {"prompt": prompt}
            if wanted == "sft":
                record["response"] = chosen
            elif wanted == "preferences":
                rejected_prompt, rejected = split_hh(row["rejected"])
                record.update(chosen=chosen, rejected=rejected)
        elif layout == "ultrafeedback":
            prompt = row.get("prompt") or _first_user(row.get("messages") or row["chosen"])
            record = {"prompt": prompt}
            if wanted == "sft":
                record["response"] = _last_assistant(row.get("messages") or row["chosen"])
            elif wanted == "preferences":
                record.update(chosen=_last_assistant(row["chosen"]), rejected=_last_assistant(row["rejected"]))
        else:
            prompt = _pick(row, PROMPT_COLUMNS)
            if prompt is None:
                raise DataError(
                    f"{source}: expected a prompt column ({'/'.join(PROMPT_COLUMNS)}) or an Anthropic HH / "
                    f"UltraFeedback layout; found columns {sorted(row)}"
                )
            record = {"prompt": prompt}
            if wanted == "sft":
                record["response"] = _pick(row, RESPONSE_COLUMNS)
            elif wanted == "preferences":
                record.update(chosen=row.get("chosen"), rejected=row.get("rejected"))
            for extra in ("task", "answer"):
                if extra in row:
                    record[extra] = row[extra]
        for key, value in record.items():
            if key in ("task", "answer"):
                continue
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{source}: row {i} has an empty or missing {key!r} (layout {layout})")
        out.append(record)
    return out


def _load(src: Any, wanted: str) -> list[dict]:
    rows = _read_rows(src)
    layout = _detect(rows, wanted, src.layout)
    if wanted == "preferences" and layout == "plain" and not {"chosen", "rejected"} <= set(rows[0]):
        raise DataError(
            f"{src.source}: expected columns prompt/chosen/rejected or an Anthropic HH / UltraFeedback layout; "
            f"found {sorted(rows[0])}"
        )
    return _normalise(rows, wanted, layout, src.source)


def load_prompts(src: Any, synthetic: Any, split_kind: str = "train") -> list[dict]:
    """Prompts for RL (``train``) or held-out evaluation (``eval``)."""
    if src.source == "synthetic":
        n = synthetic.n_eval if split_kind == "eval" else synthetic.n_prompts
        return _synthetic(synthetic).prompts(src.max_examples or n, split_kind)
    return _load(src, "prompts")


def load_sft(src: Any, synthetic: Any) -> list[dict]:
    if src.source == "synthetic":
        return _synthetic(synthetic).sft_demos(src.max_examples or synthetic.n_sft)
    return _load(src, "sft")


def load_preferences(src: Any, synthetic: Any) -> list[dict]:
    if src.source == "synthetic":
        return _synthetic(synthetic).preference_pairs(src.max_examples or synthetic.n_pairs)
    return _load(src, "preferences")
