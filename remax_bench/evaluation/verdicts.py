"""What every judge takes and gives back, in the conventions of the tools whose metrics we use:

- pairwise (AlpacaEval): a preference in alpaca_eval's encoding -- 1 when ``output_1`` (the reference
  generator) wins, 2 when ``output_2`` (the evaluated model) wins, 1.5 for a tie;
- single (MT-bench): a score from 1 to 10 for one turn's answer, as FastChat's single-answer grading.

A verdict with ``value=None`` is unjudged: it carries its ``error`` and is counted, never dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# alpaca_eval's preference encoding (alpaca_eval.metrics.winrate.get_winrate)
REFERENCE_WINS, MODEL_WINS, TIE = 1.0, 2.0, 1.5


@dataclass
class PairwiseItem:
    instruction: str
    output_1: str  # the reference generator's output (alpaca_eval's output_1)
    output_2: str  # the evaluated model's output (alpaca_eval's output_2)


@dataclass
class SingleItem:
    question: dict  # FastChat question: question_id, category, turns
    answers: list[str]  # the model's answers, one per turn
    turn: int  # 1-based: the answer being graded
    reference: list[str] | None = None  # reference answers per turn (reference-guided grading)


@dataclass
class Verdict:
    value: float | None  # preference (1 / 1.5 / 2) or score (1-10); None: unjudged
    raw: str | None = None  # the judge's own text, or its scores
    error: str | None = None
    attempts: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.value is not None


def preference_from_scores(reference_score: float, model_score: float) -> float:
    """Higher score wins, in alpaca_eval's encoding."""
    if model_score > reference_score:
        return MODEL_WINS
    if model_score < reference_score:
        return REFERENCE_WINS
    return TIE


class Judge:
    type = "base"
    cacheable = False  # worth caching: costs money or GPU time
    reads_references = False  # grades MT-bench's math, reasoning and coding against reference answers (FastChat)

    def identity(self) -> dict:
        """What makes this judge's verdicts what they are (cache key, records); never a secret."""
        return {"type": self.type}

    def payload(self, kind: str, item) -> dict:
        return asdict(item)

    def pairwise(self, items: list[PairwiseItem]) -> list[Verdict]:
        raise NotImplementedError

    def single(self, items: list[SingleItem]) -> list[Verdict]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def judge_label(judge: Judge) -> str:
    """A short name for records: the type, and the judge model's name where there is one."""
    model = getattr(judge, "model", None)
    return f"{judge.type}:{model}" if isinstance(model, str) else judge.type
