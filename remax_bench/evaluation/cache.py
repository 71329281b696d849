"""Judgments cached on disk, so a re-run never pays a judge twice for the same question.

One JSON line per judged item, appended (flushed and fsynced) the moment its verdict arrives, so a crash or Ctrl-C
during judging loses no verdict already paid for. Each line is keyed by a hash of the judge's identity (type,
model, endpoint; never a key), the kind of judgment and the exact payload (for an LLM judge: the messages it is
sent, so a changed prompt is a new item). Only successful verdicts are stored: an unjudged item is asked again next
time.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from remax_bench.evaluation.common import stable_hash


def judgment_key(identity: dict, kind: str, payload: dict) -> str:
    return stable_hash({"judge": identity, "kind": kind, "payload": payload}, length=32)


class JudgmentCache:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.hits = 0
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                self.entries[row["key"]] = row

    def get(self, key: str) -> dict | None:
        row = self.entries.get(key)
        if row is not None:
            self.hits += 1
        return row

    def put(self, key: str, row: dict) -> None:
        row = {"key": key, **row}
        with self._lock:
            self.entries[key] = row
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as f:
                    # A line cut short by a crash would swallow the next one: start on a line of our own.
                    if f.tell() > 0 and not _ends_with_newline(self.path):
                        f.write(b"\n")
                    f.write((json.dumps(row, default=str) + "\n").encode())
                    f.flush()
                    os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _judge_each(judge, method, items: list, on_verdict) -> None:
    """Judge items, handing each verdict to on_verdict(index, verdict) as soon as it is known.

    An API judge (one with ``workers``) is asked one item per call on that many threads, so every answer
    is stored on arrival; a batched judge (a reward model) is asked one batch at a time.
    """
    workers = getattr(judge, "workers", None)
    if workers:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(method, [item]): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                on_verdict(futures[future], future.result()[0])
        return
    size = max(1, int(getattr(judge, "batch_size", 16) or 16))
    for start in range(0, len(items), size):
        for offset, verdict in enumerate(method(items[start:start + size])):
            on_verdict(start + offset, verdict)


def judge_items(judge, kind: str, items: list, cache: JudgmentCache | None) -> list[tuple]:
    """(verdict, key, cached) per item: cached verdicts reused, the rest judged and each stored on arrival."""
    from remax_bench.evaluation.verdicts import Verdict

    identity = judge.identity()
    use_cache = cache is not None and judge.cacheable
    keys = [judgment_key(identity, kind, judge.payload(kind, item)) if use_cache else None for item in items]
    results: list = [None] * len(items)
    todo = []
    for i, key in enumerate(keys):
        row = cache.get(key) if use_cache else None
        if row is not None:
            results[i] = (Verdict(row["value"], raw=row.get("raw"), attempts=0, extra=row.get("extra") or {}), key, True)
        else:
            todo.append(i)
    method = judge.pairwise if kind == "pairwise" else judge.single

    def store(j: int, verdict) -> None:
        i = todo[j]
        if use_cache and verdict.judged:
            cache.put(keys[i], {"value": verdict.value, "raw": verdict.raw, "extra": verdict.extra, "kind": kind,
                                "judge": identity})
        results[i] = (verdict, keys[i], False)

    if not todo:
        return results
    if use_cache:
        _judge_each(judge, method, [items[i] for i in todo], store)
    else:
        for j, verdict in enumerate(method([items[i] for i in todo])):
            store(j, verdict)
    return results
