"""Data helpers every training stage shares: batches (per rank), held-out splits, prompt-length filters.

Stages import these instead of each other.
"""

from __future__ import annotations

import random

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


def rank_batches(run: StageRun, rows: list, field: str, rng: random.Random | None, name: str,
                 drop_last: bool = False):
    """This rank's share of each seeded global batch of rows (``field`` names the global batch size).

    Every rank shuffles with the same seed and takes its own contiguous slice of each global batch, so N ranks
    together train on exactly the global batches one process draws with the same global size. With several
    ranks a last short batch is dropped (it would not split evenly); one process keeps today's behaviour."""
    global_size = run.suite.batch_size(field)
    run.per_rank(field)
    order = list(range(len(rows)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        if len(chunk) < global_size and (drop_last or run.world_size > 1):
            return
        yield [rows[i] for i in run.shard(name, chunk)]


def steps_per_pass(run: StageRun, n_rows: int, field: str) -> int:
    """Optimizer steps in one pass over n_rows (see rank_batches: several ranks drop a last short batch)."""
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
