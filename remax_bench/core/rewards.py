"""Verifiable rewards: a Python function that scores an answer, used by the online algorithms instead of the
learned reward model (``shared.reward_function``).

A reward function takes ``(prompt: str, response: str)`` (the instruction as the dataset gives it and the
decoded answer, without its eos) and returns a number, higher is better. ``gold`` names the synthetic task's
own scorer (remax_bench.core.task.gold_score); anything else is an import path ``pkg.module:function``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Callable

GOLD = "remax_bench.core.task:gold_score"
ALIASES = {"gold": GOLD}
_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class RewardFunctionError(ValueError):
    """A reward_function that cannot be used; the message says what was expected."""


def load_reward_function(spec: str) -> Callable[[str, str], float]:
    """The callable a ``shared.reward_function`` names, after checking it can take (prompt, response)."""
    path = ALIASES.get(spec, spec)
    if not _PATH.match(path):
        raise RewardFunctionError(f"expected 'gold' or an import path 'pkg.module:function', got {spec!r}")
    module_name, _, attribute = path.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardFunctionError(f"cannot import module {module_name!r} of {spec!r}: {err}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardFunctionError(f"module {module_name!r} has no {attribute!r} (from {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise RewardFunctionError(f"{spec!r} is a {type(target).__name__}, not a function")
    try:
        inspect.signature(target).bind("prompt", "response")
    except TypeError:
        raise RewardFunctionError(
            f"{spec!r} must accept two positional arguments (prompt: str, response: str); its signature is "
            f"{attribute}{inspect.signature(target)}") from None
    except ValueError:  # a builtin without a signature: trust it, a wrong call fails at the first batch
        pass
    return target


def score_all(function: Callable[[str, str], float], prompts: list[str], responses: list[str]) -> list[float]:
    """The function's score of each (prompt, response), each checked to be a real number."""
    out = []
    for prompt, response in zip(prompts, responses):
        value = function(prompt, response)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RewardFunctionError(f"a reward function must return a number, got {type(value).__name__} "
                                      f"for prompt {prompt[:60]!r}")
        out.append(float(value))
    return out
