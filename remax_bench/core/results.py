"""The results layout: one directory per stage and seed, written atomically.

```
results/<suite>/<stage>/seed<k>/          (a sweep's runs: <stage>@<field>=<value>/seed<k>/)
  manifest.json   resolved config, its hash, package versions, git sha, device, start/end, status
  metrics.jsonl   one line per step
  summary.json    peak memory, wall time, time per iteration, throughput, final figures
  checkpoint/     a standard Hugging Face model directory
  eval/           evaluation outputs (eval stage)
results/<suite>/tensorboard/, wandb/, mlflow/   the trackers' files (remax_bench/core/trackers.py)
```

A stage writes into ``.<seed dir>.partial`` next to its final place and renames it on success, so a
directory without the ``.partial`` prefix is always complete. A failed stage is moved to
``<seed dir>.failed`` with its manifest, log and last good checkpoint, for inspection. Its mid-stage
checkpoints of the whole training state (remax_bench/core/checkpoint.py) sit in ``.<seed dir>.checkpoints``
until the stage completes: an interrupted or failed attempt is resumed from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from remax_bench.core.algorithms import PREPARATION_STAGES

PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".partial"
FAILED_SUFFIX = ".failed"


def stage_dir(results_dir: str | Path, suite_name: str, stage: str, seed: int) -> Path:
    return Path(results_dir) / suite_name / stage / f"seed{seed}"


# A sweep's runs (core/sweep.py) sit beside the others, the value in the stage's folder name:
# results/<suite>/ppo@kl_coef=0.1/seed0/. Stages shared by every value of the sweep keep their plain name.
VARIANT_SEPARATOR = "@"


def stage_dirname(stage: str, variant: str = "") -> str:
    return f"{stage}{VARIANT_SEPARATOR}{variant}" if variant else stage


def split_stage_dirname(name: str) -> tuple[str, str]:
    """(stage, variant) of a stage folder's name; the variant is "" outside a sweep."""
    stage, _, variant = name.partition(VARIANT_SEPARATOR)
    return stage, variant


def variants_in(suite_dir: str | Path) -> list[str]:
    """The sweep labels found in a suite's results folder ([""] when it holds no sweep)."""
    found = {split_stage_dirname(p.name)[1] for p in Path(suite_dir).iterdir() if p.is_dir()} \
        if Path(suite_dir).is_dir() else set()
    labels = sorted(found - {""}, key=variant_sort_key)
    return labels or [""]


def variant_sort_key(label: str) -> tuple:
    """Sweep labels in the order of their values (0.05 before 0.1 before 0.2), numbers as numbers."""
    def value(text: str):
        try:
            return (0, float(text), "")
        except ValueError:
            return (1, 0.0, text)

    return tuple(value(part.partition("=")[2]) for part in label.split(","))


def stage_dirs_of(suite_dir: str | Path, variant: str = "") -> dict[str, Path]:
    """stage -> its folder for one value of a sweep: the stage's run of that value, else, for the preparation
    stages, the run every value shares. Outside a sweep (variant "") the plain folders."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        return {}
    found = {split_stage_dirname(p.name): p for p in sorted(suite_dir.iterdir())
             if p.is_dir() and not p.name.startswith(".")}
    out = {stage: path for (stage, label), path in found.items() if label == variant}
    if variant:
        out.update({stage: path for (stage, label), path in found.items()
                    if label == "" and stage in PREPARATION_STAGES and stage not in out})
    return out


def partial_dir(final: Path) -> Path:
    return final.parent / f"{PARTIAL_PREFIX}{final.name}{PARTIAL_SUFFIX}"


def failed_dir(final: Path) -> Path:
    return final.parent / f"{final.name}{FAILED_SUFFIX}"


def checkpoints_dir(final: Path) -> Path:
    return final.parent / f"{PARTIAL_PREFIX}{final.name}.checkpoints"


def is_complete(final: Path) -> bool:
    manifest = final / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("status") == "completed"
    except json.JSONDecodeError:
        return False


def suite_root_of(final: Path) -> Path:
    """The results folder of a suite, from one of its stage directories (<root>/<stage>/seed<k>)."""
    return Path(final).parent.parent


def resolve_inputs(inputs: Any, root: Path) -> Any:
    """A stage config's input paths with those recorded relative to the suite's results folder made real.

    Trained checkpoints are recorded as ``<stage>/seed<k>/checkpoint`` so that a stage's config, its hash
    and its manifest do not depend on where the results folder sits; a given checkpoint (a path or a hub
    id) is kept as written.
    """
    if isinstance(inputs, dict):
        return {k: resolve_inputs(v, root) for k, v in inputs.items()}
    if isinstance(inputs, str) and not os.path.isabs(inputs) and (Path(root) / inputs).exists():
        return str(Path(root) / inputs)
    return inputs


def _jsonable(value: Any):
    """numpy / pandas scalars (alpaca_eval's metric functions return them) as plain numbers, else text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def json_digest(obj: Any, length: int = 12) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys): the identity of a config, a payload, a file list."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON via a temp file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def write_jsonl(path: str | Path, rows) -> Path:
    """One JSON object per line, written whole via a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def promote(partial: Path, final: Path) -> None:
    """Move a finished partial dir into its final place (replacing an older result)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def discard(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


# A stage's machine-readable progress, one line on stderr: "[progress] stage=<stage> step=<n> <json figures>".
# StageRun.log writes it; the runner's live display reads it.
PROGRESS_PREFIX = "[progress]"


def progress_line(stage: str, step: int, figures: dict) -> str:
    return f"{PROGRESS_PREFIX} stage={stage} step={step} {json.dumps(figures)}"


def parse_progress(line: str) -> tuple[str, int, str] | None:
    """(stage, step, figures as JSON text) of a progress line; None for any other line."""
    parts = line.strip().split(" ", 3)
    if len(parts) < 3 or parts[0] != PROGRESS_PREFIX or not parts[1].startswith("stage=") \
            or not parts[2].startswith("step=") or not parts[2][5:].isdigit():
        return None
    return parts[1][6:], int(parts[2][5:]), parts[3] if len(parts) > 3 else "{}"
