"""Data helpers every training stage shares: batches (per rank), held-out splits, prompt-length filters,
summary totals.

Stages import these instead of each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from remax_bench.core.checkpoint import Accumulators
from remax_bench.core.data import load_preferences
from remax_bench.core.stage import StageError, StageRun
from trainers.sequences import prompt_fits


def batches(rows: list, batch_size: int, rng: random.Random | None = None, drop_last: bool = False):
    """Mini-batches of rows, shuffled when an rng is given."""
    order = list(range(len(rows)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield [rows[i] for i in chunk]


class BatchStream:
    """This rank's share of each seeded global batch of rows, in endless shuffled passes, from where it stands.

    Every rank shuffles with the same seed and takes its own contiguous slice of each global batch, so N ranks
    together train on exactly the global batches one process draws with the same global size. With several
    ranks (or ``drop_last``) a last short batch is dropped (it would not split evenly); one process keeps it.
    Its position, the rng state at the start of the current pass and the batches taken from it, is part of the
    stage's checkpoint (``state_dict``): a resumed stream draws what the uninterrupted one draws."""

    def __init__(self, run: StageRun, rows: list, field: str, seed: int, name: str, drop_last: bool = False):
        self.run, self.rows, self.field, self.name = run, rows, field, name
        self.global_size = run.suite.batch_size(field)
        run.per_rank(field)
        self.drop_short = drop_last or run.world_size > 1
        self.rng = random.Random(seed)
        self.pass_start = None  # the rng state the current pass was shuffled from
        self.order: list[list[int]] = []  # the current pass's global batches of row indices
        self.taken = 0

    def _shuffle(self) -> list[list[int]]:
        order = list(range(len(self.rows)))
        self.rng.shuffle(order)
        chunks = [order[start : start + self.global_size] for start in range(0, len(order), self.global_size)]
        return [c for c in chunks if len(c) == self.global_size or not self.drop_short]

    def next(self) -> list:
        if self.taken == len(self.order):
            self.pass_start = self.rng.getstate()
            self.order, self.taken = self._shuffle(), 0
            if not self.order:
                raise StageError(f"{self.field}: {len(self.rows)} rows make no global batch of {self.global_size}")
        chunk = self.order[self.taken]
        self.taken += 1
        return [self.rows[i] for i in self.run.shard(self.name, chunk)]

    def state_dict(self) -> dict:
        return {"pass_start": self.pass_start, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        if state["pass_start"] is not None:
            self.rng.setstate(state["pass_start"])
            self.pass_start, self.order, self.taken = state["pass_start"], self._shuffle(), state["taken"]


def steps_per_pass(run: StageRun, n_rows: int, field: str) -> int:
    """Optimizer steps in one pass over n_rows (see BatchStream: several ranks drop a last short batch)."""
    global_size = run.suite.batch_size(field)
    if run.world_size > 1:
        if n_rows < global_size:
            raise StageError(f"{field}: {n_rows} training rows are fewer than one global batch of {global_size}")
        return n_rows // global_size
    return -(-n_rows // global_size)


def split_heldout(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train / held-out split; at least one held-out row."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_heldout = max(1, int(round(len(rows) * fraction)))
    heldout = [rows[i] for i in order[:n_heldout]]
    train = [rows[i] for i in order[n_heldout:]]
    if not train:
        raise StageError(f"dataset of {len(rows)} rows is too small to hold out {fraction:.0%} for evaluation")
    return train, heldout


def keep_fitting(run: StageRun, tokenizer, rows: list[dict], field: str) -> list[dict]:
    """Drop prompts over the length limit (named in a warning); none left is an error."""
    limit = run.suite.shared.max_prompt_length
    kept = [r for r in rows if prompt_fits(tokenizer, r["prompt"], limit)]
    if len(kept) < len(rows):
        run.warn(f"{len(rows) - len(kept)} of {len(rows)} rows of {field} have prompts over "
                 f"shared.max_prompt_length={limit} tokens and were dropped")
    if not kept:
        raise StageError(f"no row of {field} fits shared.max_prompt_length={limit}")
    return kept


def preference_splits(run: StageRun, tokenizer, eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """The preference pairs that fit the prompt limit, split into train and held-out (seeded)."""
    suite = run.suite
    rows = load_preferences(suite.data.preferences, suite.data.synthetic)  # DataError when empty
    rows = keep_fitting(run, tokenizer, rows, "data.preferences")
    return split_heldout(rows, eval_fraction, run.seed)


@dataclass
class Totals(Accumulators):
    """An offline stage's summary figures, accumulated over its iterations (part of its checkpoint)."""

    before: Any = None  # the held-out figure(s) of the model it starts from
    tokens: int = 0
    seconds: float = 0.0  # the iterations' wall time, checkpoint writes left out
    step_times: list = field(default_factory=list)
