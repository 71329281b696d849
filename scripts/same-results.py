#!/usr/bin/env python
"""Are two runs' results the same? `scripts/same-results.py RESULTS_A RESULTS_B`: for every stage of A (its
manifest.json), the figures at every step (metrics.jsonl) and at the end (summary.json) equal B's, times and
memory aside, and its trained weights (checkpoint/model.safetensors) equal B's byte for byte. One line per stage;
exit code 0 when every stage is the same, 1 otherwise. Used to check that `run --jobs 2` gives the sequential run's
results (README: Many stages at once, and Slurm)."""

import json
import sys
from pathlib import Path

# Figures that measure the machine, not the training: they differ between any two runs.
MACHINE_FIGURES = ("time", "second", "memory", "rss", "bytes", "per_s", "start", "end")


def training_figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(word in k for word in MACHINE_FIGURES)}


def figures(stage_dir: Path) -> tuple[list, dict | None]:
    steps = stage_dir / "metrics.jsonl"
    summary = stage_dir / "summary.json"
    rows = [training_figures(json.loads(line)) for line in steps.read_text().splitlines()] if steps.is_file() else []
    return rows, training_figures(json.loads(summary.read_text())) if summary.is_file() else None


def differences(a: Path, b: Path) -> list[str]:
    if not (b / "manifest.json").is_file():
        return ["missing in the second run"]
    found = []
    (rows_a, summary_a), (rows_b, summary_b) = figures(a), figures(b)
    if rows_a != rows_b:
        first = next((i for i, (x, y) in enumerate(zip(rows_a, rows_b)) if x != y), min(len(rows_a), len(rows_b)))
        found.append(f"per-step figures differ from step {first}")
    if summary_a != summary_b:
        found.append("final figures differ")
    weights_a, weights_b = a / "checkpoint" / "model.safetensors", b / "checkpoint" / "model.safetensors"
    if weights_a.is_file() and (not weights_b.is_file() or weights_a.read_bytes() != weights_b.read_bytes()):
        found.append("weights differ")
    return found


def main(first: str, second: str) -> int:
    a, b = Path(first), Path(second)
    stages = sorted(m.parent for m in a.rglob("seed*/manifest.json"))  # <suite>/<stage>/seed<k>: complete stages
    if not stages:
        print(f"no stage results under {a}")
        return 1
    same = True
    for stage in stages:
        found = differences(stage, b / stage.relative_to(a))
        same &= not found
        print(f"{stage.relative_to(a)}: {'; '.join(found) if found else 'same'}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
