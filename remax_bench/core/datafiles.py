"""Local data files read with errors that name the file and the line.

A suite's data files (JSON lines, JSON, CSV, Parquet) are read by libraries (``datasets``, FastChat's loaders)
that report a bad file as a byte offset, as "line 1 column 17" of one JSON line, or as a bare
UnicodeDecodeError. These readers decode and parse the text themselves and say where each record starts, so
every message can name the file and the line a person opens it at: ``data.prompts.source: p.jsonl, line 7:
not valid JSON (Expecting value, column 17)``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Data that cannot be used; the message names the field, the source (file and line) and the problem."""


def decode(path: Path, where: str) -> str:
    """A file's text, which must be UTF-8."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise DataError(f"{where}: {path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                        f"{column}); save the file as UTF-8") from None


def _json_error(path: Path, where: str, line: int, err: json.JSONDecodeError) -> DataError:
    return DataError(f"{where}: {path}, line {line}: not valid JSON ({err.msg}, column {err.colno})")


def json_records(path: Path, where: str) -> list[tuple[int, Any]]:
    """(line, value) of each record: every non-blank line of a ``.jsonl`` file; every element of a ``.json``
    file's top-level list (the whole value, at line 1, when it is not a list)."""
    path = Path(path)
    text = decode(path, where)
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise _json_error(path, where, number, err) from None
        return records
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(path, where, err.lineno, err) from None
    if not isinstance(value, list):
        return [(1, value)]
    return list(zip(_element_lines(text), value))


def _element_lines(text: str) -> list[int]:
    """The line each element of a valid JSON text's top-level array starts on."""
    decoder, lines = json.JSONDecoder(), []
    index, line, counted = text.index("[") + 1, 1, 0
    while True:
        while text[index] in " \t\r\n,":
            index += 1
        if text[index] == "]":
            return lines
        line += text.count("\n", counted, index)
        counted = index
        lines.append(line)
        _, index = decoder.raw_decode(text, index)


def csv_record_lines(text: str) -> list[int]:
    """The line each data record of a CSV text starts on (after the header; blank lines skipped, as pandas
    does; a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text))
    lines, previous_end = [], 0
    for row in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if row:
            lines.append(start)
    return lines[1:]


def record_lines(path: Path, where: str) -> list[int] | None:
    """The line each record of a local data file starts on, in the order ``datasets`` reads them (the file is
    checked on the way: UTF-8, and valid JSON for JSON files); None for a binary format (Parquet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return [line for line, _ in json_records(path, where)]
    if suffix == ".csv":
        return csv_record_lines(decode(path, where))
    return None
