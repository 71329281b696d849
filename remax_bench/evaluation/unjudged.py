"""Unjudged items: why the judge gave no verdict, in one line, and whether a checkpoint's figures may count.

An item (an AlpacaEval pair, an MT-bench turn) is unjudged when every try at the judge failed or gave no
verdict; it carries its error and is counted, never dropped. A win rate or a score that rests on the judged
items alone is a figure about a different sample, so it counts only while each checkpoint's unjudged share
of each benchmark is at most ``eval.max_unjudged_fraction`` (default 2%), and is shown with its unjudged
count beside it. Above that share the eval stage fails with the cause in one line and writes no figure; a
re-run asks the judge again for exactly the unjudged items, since only verdicts are cached (cache.py).
"""

from __future__ import annotations

from collections import Counter

from remax_bench.evaluation.common import EvalError

# What an error's text holds -> the cause in words. The openai client names its exceptions after the HTTP
# outcome; the first match wins.
CAUSES = (
    ("APIConnectionError", "could not be reached (connection refused, or no route to it)"),
    ("APITimeoutError", "did not answer within eval.judge.timeout_s"),
    ("AuthenticationError", "refused the API key (401; the key is read from eval.judge.api_key_env)"),
    ("PermissionDeniedError", "denied access (403)"),
    ("NotFoundError", "does not serve the model in eval.judge.model (404)"),
    ("RateLimitError", "kept rate-limiting the requests (429)"),
    ("InternalServerError", "answered with server errors (5xx)"),
    ("no log-probabilities", "returned no log-probabilities, which alpaca_eval's annotator reads its preference "
                             "from (use an endpoint that returns them, or set eval.alpaca_eval.annotator: null)"),
    ("unparseable verdict", "gave replies with no verdict the parser could read"),
)


class JudgingFailed(EvalError):
    """Too many items went unjudged for the figures to count."""


def cause(error: str | None) -> str:
    """The cause of one item's failure, in words (the error's own text where no known cause matches)."""
    text = error or "no error recorded"
    for marker, words in CAUSES:
        if marker in text:
            return words
    return f"failed: {text.splitlines()[0][:200]}"


def main_cause(errors: list[str | None]) -> str:
    """The most frequent cause among the unjudged items, and how many of them it explains when not all."""
    counts = Counter(cause(e) for e in errors)
    (top, n), = counts.most_common(1)
    return top if n == len(errors) else f"{top} ({n} of {len(errors)}; others: {len(counts) - 1} other causes)"


def shortfalls(row: dict, alpaca_errors: list, mt_errors: list, max_fraction: float) -> list[str]:
    """The benchmarks of one checkpoint's row whose unjudged share is above ``max_fraction``, as phrases
    ("20 of 20 MT-bench turns"); [] when its figures count."""
    out = []
    for what, n_unjudged, n, errors in (
        ("AlpacaEval pairs", row.get("n_unjudged"), row.get("n"), alpaca_errors),
        ("MT-bench turns", row.get("mt_bench_n_unjudged"), row.get("mt_bench_n_judgments"), mt_errors),
    ):
        if n and n_unjudged and n_unjudged / n > max_fraction:
            out.append(f"{n_unjudged} of {n} {what}")
    return out


def failure_message(failures: dict[str, list[str]], errors: list, judge: str, max_fraction: float) -> str:
    """One line: which checkpoints went unjudged, how much, and why."""
    where = "; ".join(f"{name}: {', '.join(parts)}" for name, parts in failures.items())
    return (f"judging failed, so no figure is written: unjudged above eval.max_unjudged_fraction={max_fraction:g} "
            f"({where}); the judge {judge} {main_cause(errors)}. Run again to ask the judge for exactly the "
            "unjudged items (every verdict already given is reused)")


def unjudged_note(n_unjudged, n, what: str) -> str:
    """'(3 of 128 pairs unjudged)' beside a figure that rests on partial judging; '' when it rests on all."""
    if not n_unjudged or n_unjudged != n_unjudged:  # 0, None or NaN
        return ""
    if not n or n != n:
        return f"({int(n_unjudged)} {what} unjudged)"
    return f"({int(n_unjudged)} of {int(n)} {what} unjudged)"
