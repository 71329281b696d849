"""What became of one planned stage in a run: the runner's loop and its executors (this machine, Slurm) share it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outcome:
    key: str
    # completed | skipped (already complete) | given | failed | blocked | interrupted | planned | complete (dry run)
    # | submitted (a Slurm job that goes on after `run` stopped following it)
    status: str
    seconds: float = 0.0
    detail: str = ""


OK = ("completed", "skipped", "given")  # an input in one of these states can be read
