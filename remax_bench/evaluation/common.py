"""Errors, the download cache, and small file helpers shared by the evaluation modules."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any

# One atomic JSON writer and one digest for the whole project (remax_bench.core.results); re-exported here for the
# evaluation modules.
from remax_bench.core.results import json_digest as stable_hash  # noqa: F401
from remax_bench.core.results import write_json, write_jsonl  # noqa: F401

TRUTHY = {"1", "true", "yes", "on"}


class EvalError(RuntimeError):
    """Evaluation cannot go on; the message names the cause."""


class EvalDataError(EvalError):
    """Evaluation data (instructions, questions, judge prompts) that is neither cached nor given as a file."""


class EvalConfigError(EvalError):
    """An eval setting that cannot work here (a backend that is not installed, a judge without its model...)."""


def cache_dir() -> Path:
    """Where downloaded evaluation data and judgments are kept: $REMAX_BENCH_CACHE or ~/.cache/remax_bench."""
    root = os.environ.get("REMAX_BENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "remax_bench"


def offline_reason() -> str | None:
    """Why no download should be tried, or None. HF's own switches count, so one setting covers everything."""
    for name in ("REMAX_BENCH_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in TRUTHY:
            return f"{name}={os.environ[name]}"
    return None


def run_with_timeout(fn, timeout_s: float, what: str):
    """fn() in a daemon thread: a download never blocks longer than timeout_s (DNS lookups ignore socket
    timeouts)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def download(url: str, dest: Path, timeout_s: float = 20.0) -> Path:
    """Fetch url into dest (atomically); raises on any failure."""

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - fixed https URLs
            return response.read()

    data = run_with_timeout(fetch, timeout_s + 5, f"download of {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def dir_fingerprint(path: str | Path) -> dict:
    """Identity of a checkpoint directory: its path and each file's size and modification time.
    A checkpoint retrained at the same path gets a new fingerprint, so nothing stale is reused."""
    root = Path(path)
    if not root.is_dir():
        return {"path": str(path)}
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {"path": str(root.resolve()),
            "files": stable_hash([(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])}


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def clean_float(value: Any) -> float | None:
    """A plain float, or None for missing / NaN (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number
