"""The length-controlled win rate on the synthetic task, with the gold judge: a real estimate where the data
holds one, "not estimable" with the reason where the fit can only return 50%.

The tiny suite's policies win by completing the answers that SFT's lazy demonstrations cut short: each decided
pair is won by the longer output, the length term of alpaca_eval's GLM explains every verdict, and its answer
at equal length is the ties' 50% (the tiny report used to print LC 50.00 beside a raw win rate of 82%).
"""

import pytest

from remax_bench.core.task import SyntheticTask, true_answer
from remax_bench.evaluation.alpaca import judge_alpaca_eval
from remax_bench.evaluation.judges import GoldJudge


def _outputs(rows, generator):
    return [{"instruction": i, "output": o, "generator": generator, "dataset": "synthetic"} for i, o in rows]


@pytest.fixture(scope="module")
def instructions():
    return [p["prompt"] for p in SyntheticTask(seed=3).prompts(64, split="eval")]


def _lazy(answer: str) -> str:
    return answer[: max(1, len(answer) // 2)]  # SFT's habit: stop half-way


def test_winning_by_completing_lazy_answers_is_not_estimable(instructions):
    reference, model = [], []
    for k, instruction in enumerate(instructions):
        answer = true_answer(instruction)
        if k % 8 == 0:  # both complete: a tie without the judge
            reference.append((instruction, answer)), model.append((instruction, answer))
        elif k % 8 == 1:  # the policy still lazy, SFT complete: SFT wins
            reference.append((instruction, answer)), model.append((instruction, _lazy(answer)))
        else:  # the policy completes what SFT cut short
            reference.append((instruction, _lazy(answer))), model.append((instruction, answer))
    result, _ = judge_alpaca_eval(_outputs(model, "remax"), _outputs(reference, "sft"), GoldJudge(),
                                  bootstrap_samples=50)
    assert result["win_rate"] > 70
    assert result["lc_win_rate"] is None and result["lc_method"] == "length_controlled_minimal"
    decided = result["n_wins"] + result["n_wins_base"]
    assert result["lc_not_estimable"].startswith(f"not estimable: the longer output won each of the {decided} "
                                                 "decided pairs")
    assert result["lc_fit"]["lc_win_rate"] == pytest.approx(50.0, abs=0.5)  # what the fit said, kept aside


def test_winning_at_equal_length_gives_a_real_estimate(instructions):
    reference, model = [], []
    for k, instruction in enumerate(instructions):
        answer = true_answer(instruction)
        wrong = "".join("z" if c != "z" else "y" for c in answer)  # as long, and wrong
        if k % 4 == 0:  # SFT right, the policy wrong at the same length
            reference.append((instruction, answer)), model.append((instruction, wrong))
        elif k % 4 == 1:  # the policy right but longer than SFT's wrong answer: length and quality agree
            reference.append((instruction, _lazy(wrong))), model.append((instruction, answer + " "))
        else:  # the policy right, SFT wrong, the same length
            reference.append((instruction, wrong)), model.append((instruction, answer))
    result, _ = judge_alpaca_eval(_outputs(model, "remax"), _outputs(reference, "sft"), GoldJudge(),
                                  bootstrap_samples=50)
    assert result.get("lc_not_estimable") is None and result["lc_error"] is None
    assert result["lc_win_rate"] > 55  # the policy wins at equal length: quality, not length
