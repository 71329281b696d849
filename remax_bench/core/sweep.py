"""Sweeps: a suite that lists several values for a shared scalar field runs every algorithm once per value.

```yaml
shared:
  kl_coef: [0.05, 0.1, 0.2]      # three runs of every algorithm, one per beta
```

A list in place of a shared scalar is folded into the suite's ``sweep`` record (``{"shared.kl_coef": [...]}``) with
the first value in place, so the suite itself stays valid and one ``config_hash`` names the whole sweep.
``variants(suite)`` is the one function that turns it into concrete suites, one per value (the product of the
lists when several fields are swept); each has its value in place, no sweep, and its own config hash.

Each variant's stages write under ``<stage>@<label>`` (``ppo@kl_coef=0.1/seed0``, see core/results.py). The
preparation stages (SFT, the reward model) read only ``PREPARATION_READS`` of the shared block: a sweep over any
other field trains them once (with the first variant's suite), and every value starts from the same SFT model
and optimises the same reward model. A suite without lists is one variant with an empty label: today's layout.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

PREFIX = "shared."
# What trainers/sft.py, trainers/reward_model.py and the engine they build read of the shared block.
PREPARATION_READS = frozenset({"max_prompt_length", "max_response_length", "precision", "gradient_checkpointing",
                               "weight_decay", "max_grad_norm"})
LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]+$")  # a value must be able to name a results folder


@dataclass(frozen=True)
class Variant:
    label: str  # "" without a sweep, else "kl_coef=0.1" (several fields: "kl_coef=0.1,learning_rate=0.0001")
    values: dict[str, Any]  # {"shared.kl_coef": 0.1}
    suite: Any  # the concrete Suite: the values in place, no sweep
    shares_preparation: bool  # SFT and the reward model are the same for every value of the sweep


def fold_lists(data: Any, scalar_fields: set[str]) -> Any:
    """A raw suite with every list given for a shared scalar field moved into ``sweep`` and its first value left in
    place (an empty list stays in place, for the sweep's check to name it)."""
    if not isinstance(data, dict) or not isinstance(data.get("shared"), dict):
        return data
    lists = {key: value for key, value in data["shared"].items()
             if key in scalar_fields and isinstance(value, list) and value}
    if not lists:
        return data
    sweep = dict(data.get("sweep") or {})
    for key, values in lists.items():
        if f"{PREFIX}{key}" in sweep:
            raise ValueError(f"sweep: shared.{key} is swept twice (a list in shared and an entry in sweep)")
        sweep[f"{PREFIX}{key}"] = list(values)
    return {**data, "shared": {**data["shared"], **{k: v[0] for k, v in lists.items()}}, "sweep": sweep}


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def label_of(values: dict[str, Any]) -> str:
    return ",".join(f"{field.removeprefix(PREFIX)}={format_value(value)}" for field, value in values.items())


def check(sweep: dict[str, list], scalar_fields: set[str]) -> list[str]:
    """What is wrong with a suite's sweep record, one line each (the values themselves are checked by variants)."""
    errors = []
    for field, values in sweep.items():
        name = field.removeprefix(PREFIX)
        if not field.startswith(PREFIX) or name not in scalar_fields:
            errors.append(f"sweep: {field!r} is not a shared scalar field; a sweep lists values for one of "
                          f"{', '.join(sorted(scalar_fields))}")
            continue
        if not isinstance(values, list) or not values:
            errors.append(f"shared.{name}: a sweep needs at least one value, got {values!r}")
            continue
        shown = [format_value(v) for v in values]
        if len(set(shown)) != len(shown):
            errors.append(f"shared.{name}: the sweep's values must be distinct, got {values!r}")
        bad = [v for v in shown if not LABEL_VALUE.match(v)]
        if bad:
            errors.append(f"shared.{name}: a swept value names a results folder; {bad[0]!r} has characters other than "
                          "letters, digits and _ . : + -")
    return errors


def variants(suite) -> list[Variant]:
    """The concrete suites a suite runs: one per value of its sweep (the product over several swept fields), or the
    suite itself, unlabelled, when it sweeps nothing."""
    sweep = getattr(suite, "sweep", None) or {}
    if not sweep:
        return [Variant("", {}, suite, True)]
    shares = not ({field.removeprefix(PREFIX) for field in sweep} & PREPARATION_READS)
    fields = list(sweep)
    out = []
    for combination in itertools.product(*(sweep[f] for f in fields)):
        values = dict(zip(fields, combination))
        raw = suite.resolved()
        raw["sweep"] = {}
        raw["shared"].update({field.removeprefix(PREFIX): value for field, value in values.items()})
        out.append(Variant(label_of(values), values, type(suite).model_validate(raw), shares))
    return out
