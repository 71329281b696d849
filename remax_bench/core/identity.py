"""A stage's identity: the suite fields it reads and its inputs' identities, nothing else.

The runner keeps a complete result when its stage's identity is unchanged (remax_bench.runner.Runner.why_run),
and a stage that starts from another records that stage's identity among its inputs (``input_ids``). So
editing a field that only the algorithms read (``shared.iterations``, ``ppo.enabled``, ``seeds``, an algorithm
block) leaves SFT and the reward model complete, while an SFT field changes SFT's identity and, through the
input identities, that of every stage downstream.

Each stage declares what it reads below, as dotted prefixes of the suite (``sft`` is the whole block,
``shared.max_prompt_length`` one field). An algorithm's declaration follows from its registry entry (its own
block, the prompts or the preference pairs it trains on), so a new algorithm needs no entry here, and a new
field of a block a stage declares whole is part of its identity at once. A stage reads its suite through a
recording view (remax_bench.core.reads) and a field it reads outside its declaration is reported, so a
declaration cannot fall behind its stage unnoticed.
"""

from __future__ import annotations

from typing import Any

from remax_bench.core import algorithms
from remax_bench.core.results import json_digest

# Where a stage runs: the device, DeepSpeed's settings and the ranks. Not runtime.master_port or
# runtime.hostfile, which tell the launcher where to start the ranks and change nothing a stage computes.
_RUNTIME = ("runtime.device", "runtime.deepspeed", "runtime.num_gpus", "runtime.num_nodes",
            "runtime.collective_timeout_s")
# What every trained model's optimisation and sequence layout read (sequences are cut at the shared
# lengths; the engine reads the precision, checkpointing, weight decay and clipping).
_TRAINING = ("shared.max_prompt_length", "shared.max_response_length", "shared.precision",
             "shared.gradient_checkpointing", "shared.weight_decay", "shared.max_grad_norm", *_RUNTIME)
# The synthetic generator behind every "synthetic" source, and the held-out prompts a policy stage scores.
_HELDOUT = ("data.synthetic", "data.eval_prompts")

PREPARATION_READS: dict[str, tuple[str, ...]] = {
    "sft": ("models.policy", "data.sft", "sft", *_HELDOUT, *_TRAINING),
    "reward_model": ("models.reward", "data.preferences", "data.synthetic", "reward_model", *_TRAINING),
}
# The eval stage generates with the checkpoints it is given (its inputs) and judges them.
EVAL_READS = ("eval", "data.synthetic", "shared.precision", "runtime.device", "runtime.num_gpus")


def algorithm_reads(name: str) -> tuple[str, ...]:
    """An algorithm stage reads the whole shared block (it is what makes the comparison matched), its own
    block and the data it trains on; DPO holds out the same pairs as the reward model (its eval_fraction)."""
    spec = algorithms.get(name)
    data = ("data.prompts",) if spec.online else ()
    if spec.preference_data:
        data += ("data.preferences", "reward_model.eval_fraction")
    return (name, "shared", *_RUNTIME, *_HELDOUT, *data)


def stage_reads(stage: str) -> tuple[str, ...]:
    """The suite fields ``stage`` reads, as dotted prefixes."""
    if stage in PREPARATION_READS:
        return PREPARATION_READS[stage]
    if stage == "eval":
        return EVAL_READS
    return algorithm_reads(stage)


def project(data: Any, declared: tuple[str, ...]) -> dict:
    """The part of a resolved suite (a plain dict) that the dotted prefixes ``declared`` name."""
    out: dict = {}
    for prefix in sorted(declared):
        source, target, keys = data, out, prefix.split(".")
        for i, key in enumerate(keys):
            if not isinstance(source, dict) or key not in source:
                break
            if i == len(keys) - 1:
                target[key] = source[key]
            else:
                source = source[key]
                target = target.setdefault(key, {})
    return out


def identity_view(config: dict) -> dict:
    """A stage config as its identity sees it: every key of the config (stage, seed, inputs, input_ids and
    whatever else a caller records there) but the --set overrides that produced it (the resolved suite holds
    their values, however they were spelled), with the suite cut down to the fields the stage reads. The
    runtime fields that only watch a run (trackers, throughput) are read by no stage's declaration."""
    kept = {k: v for k, v in config.items() if k != "overrides"}
    return {**kept, "suite": project(config.get("suite") or {}, stage_reads(config["stage"]))}


def stage_identity(config: dict) -> str:
    """The identity of a stage config: what decides whether a complete result of it can be kept."""
    return json_digest(identity_view(config))
