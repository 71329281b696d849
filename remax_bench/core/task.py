"""The synthetic instruction task: string transformations with a programmatic gold reward.

Small enough for a ~1M-parameter model with a byte tokenizer (words of 3-6 letters over a-h, prompts of at
most ~40 bytes, answers of at most 18), varied enough to need real learning (seven tasks by default, two
phrasings each), and graded, so that a nearly right answer scores between a wrong one and a right one:

- the gold scorer parses the instruction, recomputes the true answer, and grades closeness
  (difflib's similarity ratio 2*M/T for strings; 0.5 ** |error| for counts);
- SFT demonstrations are imperfect on purpose: ``demo_noise`` of them are *lazy* (they stop one or two
  characters early and trail off with "...") and ``TYPO_RATE`` of the rest have one random edit. With
  demo_noise above one half the SFT model learns to stop early, the gold-labelled preference pairs say that
  complete answers are better, and RL has something true to find -- the way real preference data corrects
  systematic flaws of demonstrations;
- preference pairs are two answers of different quality, labelled by the gold scorer;
- evaluation prompts use inputs that never appear in training: an input is a (task, word) pair and a hash of
  it puts it on the train or the eval side, once and for all, whatever the seed;
- two-turn questions (FastChat's question format) ask two different tasks of one held-out word; each turn
  is a standalone instruction, so the gold scorer grades each answer against its own turn.

Example prompts and answers, one per task:

    Reverse: abcd                     -> dcba
    Uppercase: bad                    -> BAD
    Sort the letters: hgab            -> abgh
    Repeat cab 2 times.               -> cabcab
    Count the letter a in: abca       -> 2
    First 2 letters of: fedc          -> fe
    Double each letter: abc           -> aabbcc
    Last 2 letters of: fedc           -> dc      (opt-in: not in the default TASKS)
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
from collections import Counter
from typing import Callable

ALPHABET = "abcdefgh"
MIN_LEN, MAX_LEN = 3, 6
EVAL_BUCKETS = 8  # one input in EVAL_BUCKETS goes to evaluation
PAIR_EXACT = 0.8  # share of preference pairs whose chosen answer is exactly right
TYPO_RATE = 0.1  # share of the other demonstrations that have a random typo

# name -> (phrasings, answer). A phrasing's {w} is the word; {k} and {c} are task arguments.
TASK_SPECS: dict[str, tuple[list[str], Callable[..., str]]] = {
    "reverse": (["Reverse: {w}", "Write {w} backwards."], lambda w: w[::-1]),
    "uppercase": (["Uppercase: {w}", "Write {w} in capitals."], lambda w: w.upper()),
    "sort": (["Sort the letters: {w}", "Put the letters of {w} in order."], lambda w: "".join(sorted(w))),
    "repeat": (["Repeat {w} {k} times.", "Say {w} {k} times."], lambda w, k: w * k),
    "count": (["Count the letter {c} in: {w}", "How many {c} are in {w}?"], lambda w, c: str(w.count(c))),
    "first": (["First {k} letters of: {w}", "Begin {w} with {k} letters."], lambda w, k: w[:k]),
    "double": (["Double each letter: {w}", "Write {w} with every letter twice."], lambda w: "".join(ch * 2 for ch in w)),
    "last": (["Last {k} letters of: {w}", "Give the last {k} letters of {w}."], lambda w, k: w[max(0, len(w) - k):]),
}
# The default mix (``tasks: null`` in a suite). Opt-in tasks are left out of it so that the tiny suite's
# data, and the training settings tuned on it, stay as they are.
TASKS = ["reverse", "uppercase", "sort", "repeat", "count", "first", "double"]
OPT_IN_TASKS = [name for name in TASK_SPECS if name not in TASKS]
# End-of-sequence texts a decoded response may still carry; the answer is what comes before the first one.
EOS_TEXTS = ("<|eos|>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>")


def _pattern(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{w\}", r"(?P<w>[a-z]+)").replace(r"\{k\}", r"(?P<k>\d+)")
    pattern = pattern.replace(r"\{c\}", r"(?P<c>[a-z])")
    return re.compile(f"^{pattern}$")


PARSERS = [(name, _pattern(t)) for name, (templates, _) in TASK_SPECS.items() for t in templates]


def parse_instruction(prompt: str) -> tuple[str, dict]:
    """(task name, arguments) of an instruction; ValueError when it is not one of the task's phrasings."""
    text = prompt.strip()
    for name, pattern in PARSERS:
        match = pattern.match(text)
        if match:
            args = match.groupdict()
            if "k" in args:
                args["k"] = int(args["k"])
            return name, args
    raise ValueError(f"not an instruction of the synthetic task: {prompt[:80]!r}")


def true_answer(prompt: str) -> str:
    name, args = parse_instruction(prompt)
    return TASK_SPECS[name][1](**args)


def _clean(response: str) -> str:
    """The answer part of a response: up to the first end-of-sequence text, whitespace stripped."""
    for eos in EOS_TEXTS:
        response = response.split(eos, 1)[0]
    return response.strip()


def gold_score(prompt: str, response: str) -> float:
    """Closeness of ``response`` to the true answer, in [0, 1]; 1 only for the exact answer.

    ``prompt`` is the raw instruction (no chat template); ValueError when it is not one of the task's. Strings
    are graded by difflib's ratio 2*M/T (M matching characters, T the two lengths together), so one wrong
    letter in a 5-letter answer scores 0.8; counts by 0.5 ** |error|, and a count that is not a number by 0.
    An empty response scores 0.
    """
    name, _ = parse_instruction(prompt)
    answer, given = true_answer(prompt), _clean(response)
    if not given:
        return 0.0
    if name == "count":
        if not given.isdigit():
            return 0.0
        return 0.5 ** abs(int(given) - int(answer))
    return difflib.SequenceMatcher(None, answer, given, autojunk=False).ratio()


# -- corruption: the imperfections of demonstrations and rejected answers ---------------------------
def corrupt(answer: str, rng: random.Random, task: str) -> str:
    """One random edit that makes the answer worse (never a no-op)."""
    if task == "count" and answer.isdigit():
        wrong = int(answer) + rng.choice([-1, 1, 2])
        return str(wrong if wrong >= 0 else int(answer) + 1)  # no count below zero, and never the answer
    if task == "count":
        return answer + rng.choice("0123456789")
    for _ in range(20):
        ops = ["drop", "substitute", "swap", "duplicate", "truncate"]
        op = rng.choice(ops)
        i = rng.randrange(len(answer))
        if op == "drop" and len(answer) > 1:
            out = answer[:i] + answer[i + 1 :]
        elif op == "substitute":
            pool = ALPHABET.upper() if answer[i].isupper() else ALPHABET
            out = answer[:i] + rng.choice(pool) + answer[i + 1 :]
        elif op == "swap" and len(answer) > 1:
            j = min(i + 1, len(answer) - 1) if i + 1 < len(answer) else i - 1
            chars = list(answer)
            chars[i], chars[j] = chars[j], chars[i]
            out = "".join(chars)
        elif op == "duplicate":
            out = answer[: i + 1] + answer[i] + answer[i + 1 :]
        elif op == "truncate" and len(answer) > 2:
            out = answer[: rng.randrange(1, len(answer))]
        else:
            continue
        if out != answer:
            return out
    return answer + rng.choice(ALPHABET)


LAZY_MARK = "..."


def lazy(answer: str, rng: random.Random, task: str) -> str:
    """The demonstrators' systematic flaw: they give up one or two characters early and trail off."""
    if task == "count" or len(answer) <= 1:
        return LAZY_MARK
    return answer[: max(1, len(answer) - rng.randint(1, 2))] + LAZY_MARK


def overlong(answer: str, rng: random.Random, task: str) -> str:
    """Running on past the answer: one or two of its own characters repeated (counts: one too high)."""
    if task == "count":
        return str(int(answer) + 1)
    return answer + answer[-rng.randint(1, min(2, len(answer))):]


def _bucket(task: str, word: str) -> int:
    return int(hashlib.sha256(f"{task}:{word}".encode()).hexdigest(), 16) % EVAL_BUCKETS


class SyntheticTask:
    """A seeded generator of prompts, demonstrations, preference pairs and two-turn questions."""

    def __init__(self, seed: int = 1234, tasks: list[str] | None = None, demo_noise: float = 0.3):
        if tasks is not None and not tasks:
            raise ValueError(f"synthetic tasks: give at least one of {list(TASK_SPECS)}, or null for {TASKS}")
        unknown = set(tasks or []) - set(TASK_SPECS)
        if unknown:
            raise ValueError(f"unknown synthetic tasks {sorted(unknown)}; choose from {list(TASK_SPECS)}")
        if not 0.0 <= demo_noise <= 1.0:
            raise ValueError(f"demo_noise is a probability in [0, 1], got {demo_noise}")
        self.seed = seed
        self.tasks = list(tasks or TASKS)
        self.demo_noise = demo_noise

    def _rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}")

    def _instance(self, rng: random.Random, split: str, task: str | None = None, word: str | None = None) -> dict:
        """One instruction whose (task, word) lies on the requested side of the train / eval split.

        The task and the word are drawn where not given, and drawn again until the pair is on the right side;
        a given pair is taken as it is (the caller has checked its side).
        """
        given_task, given_word = task, word
        while True:
            task = given_task or rng.choice(self.tasks)
            if given_word is None:
                word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))
            if given_task is None or given_word is None:
                if (_bucket(task, word) == 0) != (split == "eval"):
                    continue
            templates, _ = TASK_SPECS[task]
            args = {"w": word}
            if task == "repeat":
                args["k"] = rng.randint(2, 3)
            elif task in ("first", "last"):
                args["k"] = rng.randint(1, len(word) - 1)
            elif task == "count":
                args["c"] = rng.choice(word) if rng.random() < 0.7 else rng.choice(ALPHABET)
            prompt = rng.choice(templates).format(**args)
            return {"prompt": prompt, "task": task, "answer": true_answer(prompt)}

    def prompts(self, n: int, split: str = "train") -> list[dict]:
        """``n`` rows ``{prompt, task, answer}``; ``train`` and ``eval`` never share a (task, word) input."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        rng = self._rng(f"prompts:{split}")
        return [self._instance(rng, split) for _ in range(n)]

    def sft_demos(self, n: int) -> list[dict]:
        """``n`` rows ``{prompt, response, task}``: lazy with probability demo_noise, else a typo at TYPO_RATE."""
        rng = self._rng("sft")
        rows = []
        for _ in range(n):
            item = self._instance(rng, "train")
            response = item["answer"]
            if rng.random() < self.demo_noise:
                response = lazy(response, rng, item["task"])
            elif rng.random() < TYPO_RATE:
                response = corrupt(response, rng, item["task"])
            rows.append({"prompt": item["prompt"], "response": response, "task": item["task"]})
        return rows

    def preference_pairs(self, n: int) -> list[dict]:
        """A better and a worse answer, labelled by the gold scorer.

        The better one is usually exact (``PAIR_EXACT``) else one edit away. The worse one is the better one
        made lazy (35%: the demonstrations' flaw), overlong (30%: so that length alone never wins) or two edits
        away (35%). Mostly exact winners mirror real preference data, where the chosen answer is usually
        acceptable. Ties are drawn again; ``chosen`` always has the higher gold score.
        """
        rng = self._rng("pairs")
        rows = []
        while len(rows) < n:
            item = self._instance(rng, "train")
            good = item["answer"] if rng.random() < PAIR_EXACT else corrupt(item["answer"], rng, item["task"])
            kind = rng.random()
            if kind < 0.35:
                bad = lazy(good, rng, item["task"])  # the demonstrations' systematic flaw
            elif kind < 0.65:
                bad = overlong(good, rng, item["task"])  # so that "longer" alone is never "better"
            else:
                bad = corrupt(corrupt(good, rng, item["task"]), rng, item["task"])
            good_score, bad_score = gold_score(item["prompt"], good), gold_score(item["prompt"], bad)
            if good_score == bad_score:
                continue  # no ties: the label must mean something
            chosen, rejected = (good, bad) if good_score > bad_score else (bad, good)
            rows.append({"prompt": item["prompt"], "chosen": chosen, "rejected": rejected, "task": item["task"]})
        return rows

    def mt_bench_questions(self, n: int) -> list[dict]:
        """Two-turn questions in FastChat's question format, on held-out inputs.

        The second turn asks a different task of the same word, chosen among the tasks whose (task, word) pair
        is on the eval side too (a new held-out word when none is). Each turn is a standalone instruction:
        the gold scorer grades the second answer against the second turn alone, whatever the first answer was.
        ``category`` is the first turn's task.
        """
        rng = self._rng("mt_bench")
        questions = []
        for i in range(n):
            first = self._instance(rng, "eval")
            word = parse_instruction(first["prompt"])[1]["w"]
            others = [t for t in self.tasks if t != first["task"]]
            held_out = [t for t in others if _bucket(t, word) == 0]
            if held_out:
                second = self._instance(rng, "eval", task=rng.choice(held_out), word=word)
            else:
                second = self._instance(rng, "eval", task=rng.choice(others or self.tasks))
                while second["prompt"] == first["prompt"]:
                    second = self._instance(rng, "eval", task=second["task"])
            questions.append(
                {"question_id": i + 1, "category": first["task"], "turns": [first["prompt"], second["prompt"]]}
            )
        return questions

    def describe(self, rows: list[dict] | None = None, n: int = 1000) -> dict[str, int]:
        """Rows per task in ``rows`` (anything with a ``task`` field), or in ``n`` training prompts."""
        rows = self.prompts(n) if rows is None else rows
        return dict(sorted(Counter(row["task"] for row in rows).items()))
