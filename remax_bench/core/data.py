"""One loader for prompts, SFT demonstrations and preference pairs.

Rows are normalised to ``{prompt}`` (RL and evaluation prompts), ``{prompt, response}`` (SFT) and
``{prompt, chosen, rejected}`` (preferences). ``prompt`` is the raw instruction, without any chat template:
the trainers apply the model's own template. Plain rows may carry ``task`` and ``answer`` along.

A source (``src``, duck-typed: the suite's ``data.<field>`` block) has the attributes

- ``source``: ``synthetic`` (the task in ``task.py``), a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv``
  file, or a Hugging Face dataset id (or a local dataset directory), read with
  ``datasets.load_dataset(source, name=subset, split=split)``;
- ``split``, ``subset``: used for Hugging Face datasets only;
- ``max_examples``: keep the first N rows (None: all) -- the same N rows on every run;
- ``layout``: ``auto`` (from the columns), ``plain``, ``hh`` or ``ultrafeedback``.

The synthetic settings (``synthetic``: the suite's ``data.synthetic`` block, an object or a dict) give
``seed``, ``tasks``, ``demo_noise`` and the sizes ``n_sft``, ``n_pairs``, ``n_prompts`` (RL prompts, train side)
and ``n_eval`` (held-out prompts, eval side); ``max_examples`` can only lower a size.

Layouts:

- plain: ``prompt`` (or ``instruction`` [+ ``input``], ``question``) with ``response`` (or ``output``,
  ``completion``, ``answer``, ``chosen``), and ``chosen``/``rejected`` for preferences. A prompt written as
  an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant:", as in Dahoas/rm-static and full-hh-rlhf) loses its
  markers like the HH layout's;
- Anthropic HH: ``chosen``/``rejected`` are full transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt
  is the chosen transcript up to its last "\\n\\nAssistant:", without the first "Human:" and the final
  "Assistant:" markers (the chat template adds the roles); earlier turns stay in the text with their
  markers. The responses are what follows the last "\\n\\nAssistant:" of each transcript. SFT uses the
  chosen transcript;
- UltraFeedback binarized: ``prompt``, and ``chosen``/``rejected`` (and ``messages`` for SFT) as lists of
  ``{role, content}`` messages; a response is the last assistant message. A multi-turn conversation
  becomes a prompt like an HH one.

Responses are stripped of surrounding whitespace. Any problem is a ``DataError`` that names the suite
field, the source and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remax_bench.core.datafiles import DataError, record_lines
from remax_bench.core.task import SyntheticTask

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PROMPT_COLUMNS = ("prompt", "instruction", "question")
RESPONSE_COLUMNS = ("response", "output", "completion", "answer", "chosen")
EXTRA_COLUMNS = ("task", "answer")  # carried along on plain rows (the synthetic task's own fields)
LAYOUTS = ("plain", "hh", "ultrafeedback")
EXPECTED = {
    "prompts": "a prompt column (prompt, instruction or question)",
    "sft": "columns prompt/response (or instruction/output, question/answer)",
    "preferences": "columns prompt/chosen/rejected",
}


# -- synthetic ------------------------------------------------------------------------------------
def _setting(synthetic: Any, name: str, default: Any = ...) -> Any:
    value = synthetic.get(name, default) if isinstance(synthetic, dict) else getattr(synthetic, name, default)
    if value is ...:
        raise DataError(f"data.synthetic: the synthetic source needs the setting {name!r}")
    return value


def _synthetic_task(synthetic: Any) -> SyntheticTask:
    if synthetic is None:
        raise DataError("data.synthetic: a 'synthetic' source needs the synthetic settings (seed, sizes, ...)")
    try:
        return SyntheticTask(
            seed=_setting(synthetic, "seed"),
            tasks=_setting(synthetic, "tasks", None),
            demo_noise=_setting(synthetic, "demo_noise", 0.3),
        )
    except ValueError as err:
        raise DataError(f"data.synthetic: {err}") from None


def _size(src: Any, synthetic: Any, name: str) -> int:
    n = _setting(synthetic, name)
    return min(n, src.max_examples) if src.max_examples else n


# -- reading ----------------------------------------------------------------------------------------
def _holds_no_rows(path: Path) -> bool:
    """An empty file, ``[]``, or a parquet file of zero rows (datasets' own error for these is obscure)."""
    if path.stat().st_size == 0:
        return True
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # noqa: BLE001 - not parquet at all: load_dataset reports it
            return False
    return path.stat().st_size < 64 and path.read_text(errors="replace").strip() in ("", "[]")


def _read_rows(src: Any, field: str) -> tuple[list[dict], list[int] | None]:
    """The raw rows of a local file or a hub dataset, cut to ``max_examples``, and the line of the file each
    row starts on (None where rows have no line: Parquet, a hub dataset)."""
    import datasets  # heavy: imported only for non-synthetic sources

    source, where = src.source, f"data.{field}.source"
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    lines = None
    if suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise DataError(f"{where}: data file {path} not found")
        if _holds_no_rows(path):
            raise DataError(f"{where}: data file {path} is empty")
        lines = record_lines(path, where)  # UTF-8 and JSON checked here, with the line of any fault
        try:
            dataset = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - any parse failure is a data error
            raise DataError(f"{where}: could not read {path}: {type(err).__name__}: {err}") from err
    elif path.is_file():
        raise DataError(f"{where}: {path} is not a {' / '.join(LOCAL_FORMATS)} file")
    else:
        try:
            dataset = datasets.load_dataset(source, name=src.subset, split=src.split)
        except Exception as err:  # noqa: BLE001 - offline, unknown id, unknown split: all end here
            raise DataError(
                f"could not load dataset {source!r}{f' subset {src.subset!r}' if src.subset else ''} split "
                f"{src.split!r} (offline?): "
                f"{type(err).__name__}: {err}. Give a local .jsonl / .json / .parquet file in {where}"
            ) from err
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{where}: {source!r} gave {type(dataset).__name__}, not one split; set data.{field}.split")
    if lines is not None and len(lines) != len(dataset):
        lines = None  # a layout whose rows are not the file's records (a JSON object of columns)
    if src.max_examples:
        dataset = dataset.select(range(min(src.max_examples, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{where}: dataset {source!r} is empty")
    return dataset.to_list(), lines


# -- layouts ----------------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def detect_layout(row: dict) -> str:
    """The layout of rows like ``row`` (column -> value): message lists are UltraFeedback, transcripts
    without a prompt column are HH, anything else is plain."""
    if _is_messages(row.get("chosen")) or ("prompt" in row and _is_messages(row.get("messages"))):
        return "ultrafeedback"
    if "prompt" not in row and HH_ASSISTANT in str(row.get("chosen", "")):
        return "hh"
    return "plain"


def _check_columns(first: dict, wanted: str, layout: str, where: str) -> None:
    found = sorted(first)
    need = {
        "hh": ["chosen", "rejected"] if wanted == "preferences" else ["chosen"],
        "ultrafeedback": ["chosen", "rejected"] if wanted == "preferences" else [],
        "plain": ["chosen", "rejected"] if wanted == "preferences" else [],
    }[layout]
    has_prompt = any(c in first for c in PROMPT_COLUMNS)
    if layout == "ultrafeedback" and wanted != "preferences":
        ok = has_prompt or any(_is_messages(first.get(c)) for c in ("messages", "chosen"))
    elif layout == "plain":
        ok = has_prompt and (wanted != "sft" or any(c in first for c in RESPONSE_COLUMNS))
    else:
        ok = True
    if not ok or any(c not in first for c in need):
        raise DataError(
            f"{where}: expected {EXPECTED[wanted]} or an Anthropic HH / UltraFeedback layout "
            f"(layout {layout}); found columns: {found}"
        )


def strip_hh_markers(text: str) -> str:
    """An HH-style prompt "\\n\\nHuman: ...\\n\\nAssistant:" -> its text; other text unchanged."""
    stripped = text.strip()
    if not stripped.startswith("Human:"):
        return text
    stripped = stripped[len("Human:"):]
    if stripped.endswith("Assistant:"):
        stripped = stripped[: -len("Assistant:")]
    return stripped.strip()


def split_hh(transcript: str) -> tuple[str, str]:
    """An HH transcript -> (prompt with the earlier turns, last assistant answer)."""
    cut = transcript.rfind(HH_ASSISTANT) if isinstance(transcript, str) else -1
    if cut < 0:
        raise DataError(f"not an Anthropic HH transcript (no '\\n\\nAssistant:'): {str(transcript)[:80]!r}")
    return strip_hh_markers(transcript[: cut + len(HH_ASSISTANT)]), transcript[cut + len(HH_ASSISTANT):].strip()


def _last_assistant(messages: list[dict]) -> tuple[list[dict], str]:
    """(the messages before the last assistant message, its content)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return messages[:i], messages[i].get("content") or ""
    raise DataError("a message list has no assistant message")


def messages_prompt(messages: list[dict]) -> str:
    """The prompt text of a conversation: one user turn as it is, several in HH markers (system dropped)."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns or turns[0].get("role") != "user":
        raise DataError("a message list has no user message to start from")
    text = turns[0].get("content") or ""
    for m in turns[1:]:
        text += (HH_HUMAN if m["role"] == "user" else HH_ASSISTANT) + " " + (m.get("content") or "")
    return text


def _uf_prompt(row: dict, before: list[dict] | None) -> str:
    """UltraFeedback prompt: the ``prompt`` column for one turn, the rendered conversation for several."""
    prompt = row.get("prompt")
    if _is_messages(prompt):
        return messages_prompt(prompt)
    if before is not None and sum(m.get("role") == "user" for m in before) > 1:
        return messages_prompt(before)
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    return messages_prompt(before or [])


def _uf_response(value: Any) -> tuple[list[dict] | None, str]:
    if _is_messages(value):
        return _last_assistant(value)
    return None, value  # TRL's conversational layout may give a plain string


def _plain_prompt(row: dict) -> Any:
    for name in PROMPT_COLUMNS:
        value = row.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            return value  # reported as missing below
        if name == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
            value = f"{value}\n\n{row['input']}"  # Alpaca: the input is part of the instruction
        return strip_hh_markers(value)
    return None


def _record(row: dict, wanted: str, layout: str) -> dict:
    if layout == "hh":
        prompt, chosen = split_hh(row["chosen"])
        record = {"prompt": prompt}
        if wanted == "sft":
            record["response"] = chosen
        elif wanted == "preferences":
            # The chosen transcript's prompt; the rejected one shares it in well-formed HH data.
            record.update(chosen=chosen, rejected=split_hh(row["rejected"])[1])
        return record
    if layout == "ultrafeedback":
        if wanted == "preferences":
            before, chosen = _uf_response(row["chosen"])
            record = {"prompt": _uf_prompt(row, before), "chosen": chosen, "rejected": _uf_response(row["rejected"])[1]}
        else:
            conversation = row.get("messages") if _is_messages(row.get("messages")) else row.get("chosen")
            before, response = _uf_response(conversation) if conversation is not None else (None, None)
            record = {"prompt": _uf_prompt(row, before)}
            if wanted == "sft":
                record["response"] = response
        return record
    record = {"prompt": _plain_prompt(row)}
    if wanted == "sft":
        record["response"] = next((row[c] for c in RESPONSE_COLUMNS if row.get(c) is not None), None)
    elif wanted == "preferences":
        record.update(chosen=row.get("chosen"), rejected=row.get("rejected"))
    record.update({c: row[c] for c in EXTRA_COLUMNS if c in row and c not in record})
    return record


def _normalise(rows: list[dict], wanted: str, layout: str, where: str, lines: list[int] | None) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        at = f"line {lines[i]}" if lines else f"row {i}"  # a file's line; a row (from 0) of Parquet or the hub
        try:
            record = _record(row, wanted, layout)
        except DataError as err:
            raise DataError(f"{where}, {at}: {err}") from None
        for key in ("prompt", "response", "chosen", "rejected"):
            if key not in record:
                continue
            value = record[key]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}, {at}: an empty or missing {key!r} (layout {layout})")
            if key != "prompt":
                record[key] = value.strip()
        out.append(record)
    return out


def _load(src: Any, wanted: str, field: str) -> list[dict]:
    where = f"data.{field}.source {src.source!r}"
    rows, lines = _read_rows(src, field)
    layout = src.layout if src.layout != "auto" else detect_layout(rows[0])
    if layout not in LAYOUTS:
        raise DataError(f"data.{field}.layout: expected auto or one of {list(LAYOUTS)}, got {layout!r}")
    _check_columns(rows[0], wanted, layout, where + (f", line {lines[0]}" if lines else ""))
    return _normalise(rows, wanted, layout, where, lines)


# -- public -----------------------------------------------------------------------------------------
def load_prompts(src: Any, synthetic: Any = None, split_kind: str = "train", field: str | None = None) -> list[dict]:
    """Prompts for RL (``train``) or held-out evaluation (``eval``): rows ``{prompt}`` (+ extra fields).

    Synthetic: ``n_prompts`` train-side or ``n_eval`` eval-side prompts with their ``task`` and ``answer``.
    ``field`` names the suite field in messages (default ``prompts`` / ``eval_prompts``).
    """
    if split_kind not in ("train", "eval"):
        raise ValueError(f"split_kind must be 'train' or 'eval', got {split_kind!r}")
    field = field or ("eval_prompts" if split_kind == "eval" else "prompts")
    if src.source == "synthetic":
        size = _size(src, synthetic, "n_eval" if split_kind == "eval" else "n_prompts")
        return _synthetic_task(synthetic).prompts(size, split_kind)
    return _load(src, "prompts", field)


def load_sft(src: Any, synthetic: Any = None, field: str = "sft") -> list[dict]:
    """SFT demonstrations: rows ``{prompt, response}`` (synthetic ones also carry ``task``)."""
    if src.source == "synthetic":
        return _synthetic_task(synthetic).sft_demos(_size(src, synthetic, "n_sft"))
    return _load(src, "sft", field)


def load_preferences(src: Any, synthetic: Any = None, field: str = "preferences") -> list[dict]:
    """Preference pairs: rows ``{prompt, chosen, rejected}`` (synthetic ones also carry ``task``)."""
    if src.source == "synthetic":
        return _synthetic_task(synthetic).preference_pairs(_size(src, synthetic, "n_pairs"))
    return _load(src, "preferences", field)
