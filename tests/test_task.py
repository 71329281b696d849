import pytest

from remax_bench.task import (
    LAZY_MARK,
    TASKS,
    SyntheticTask,
    corrupt,
    gold_score,
    lazy,
    overlong,
    parse_instruction,
    true_answer,
)


def test_generator_is_deterministic_per_seed():
    assert SyntheticTask(3).prompts(50) == SyntheticTask(3).prompts(50)
    assert SyntheticTask(3).preference_pairs(20) == SyntheticTask(3).preference_pairs(20)
    assert SyntheticTask(3).prompts(50) != SyntheticTask(4).prompts(50)


def test_eval_inputs_never_appear_in_training():
    task = SyntheticTask(0)
    train = {parse_instruction(r["prompt"])[1]["w"] + r["task"] for r in task.prompts(3000)}
    held = {parse_instruction(r["prompt"])[1]["w"] + r["task"] for r in task.prompts(300, "eval")}
    assert not train & held


def test_every_task_appears_and_answers_are_recomputed():
    rows = SyntheticTask(0).prompts(500)
    assert {r["task"] for r in rows} == set(TASKS)
    assert all(true_answer(r["prompt"]) == r["answer"] for r in rows)


@pytest.mark.parametrize(
    "prompt, response, expected",
    [
        ("Reverse: abcde", "edcba", 1.0),
        ("Reverse: abcde", "", 0.0),
        ("Reverse: abcde", "edcbx", 0.8),  # 4 of 5 match: 2 * 4 / (5 + 5)
        ("Uppercase: abc", "ABC<|eos|>", 1.0),
        ("Sort the letters: cab", "ab", 0.8),  # 2 * 2 / (3 + 2)
        ("Repeat ab 2 times.", "abab", 1.0),
        ("Count the letter a in: aab", "2", 1.0),
        ("Count the letter a in: aab", "3", 0.5),
        ("Count the letter a in: aab", "0", 0.25),
        ("Count the letter a in: aab", "two", 0.0),
        ("First 2 letters of: abcd", "ab", 1.0),
        ("Double each letter: ab", "aabb", 1.0),
    ],
)
def test_gold_score_hand_picked(prompt, response, expected):
    assert gold_score(prompt, response) == pytest.approx(expected)


def test_gold_score_rejects_unknown_prompts():
    with pytest.raises(ValueError, match="not an instruction"):
        gold_score("Tell me a joke", "no")


def test_demonstrations_are_imperfect_at_the_chosen_rate():
    demos = SyntheticTask(0, demo_noise=0.3).sft_demos(4000)
    lazy = [d for d in demos if d["response"].endswith(LAZY_MARK)]
    assert 0.27 < len(lazy) / len(demos) < 0.33
    assert all(gold_score(d["prompt"], d["response"]) < 1.0 for d in lazy)
    others = [d for d in demos if not d["response"].endswith(LAZY_MARK)]
    typos = sum(gold_score(d["prompt"], d["response"]) < 1.0 for d in others) / len(others)
    assert 0.07 < typos < 0.13  # TYPO_RATE of the rest
    assert not any(d["response"].endswith(LAZY_MARK) for d in SyntheticTask(0, demo_noise=0.0).sft_demos(200))


def test_lazy_and_overlong_answers_score_below_the_answer():
    import random

    rng = random.Random(0)
    # "abcde" reversed is "edcba"; lazy keeps 3-4 chars and trails off, overlong repeats 1-2 of its own chars.
    assert gold_score("Reverse: abcde", "edcb...") == pytest.approx(2 * 4 / (5 + 7))
    assert lazy("7", rng, "count") == LAZY_MARK and overlong("2", rng, "count") == "3"
    for _ in range(20):
        assert gold_score("Reverse: abcde", lazy("edcba", rng, "reverse")) < 1.0
        assert gold_score("Reverse: abcde", overlong("edcba", rng, "reverse")) < 1.0


def test_preference_pairs_are_gold_labelled():
    for pair in SyntheticTask(1).preference_pairs(300):
        assert gold_score(pair["prompt"], pair["chosen"]) > gold_score(pair["prompt"], pair["rejected"])


def test_corrupt_always_changes_the_answer():
    import random

    rng = random.Random(0)
    for answer in ["a", "ab", "abc", "ABCD", "3"]:
        for _ in range(50):
            assert corrupt(answer, rng, "count" if answer.isdigit() else "reverse") != answer


def test_mt_bench_questions_have_two_scoreable_turns():
    questions = SyntheticTask(0).mt_bench_questions(20)
    assert [q["question_id"] for q in questions] == list(range(1, 21))
    for q in questions:
        assert len(q["turns"]) == 2
        first, second = (parse_instruction(t) for t in q["turns"])
        assert first[0] != second[0] and first[1]["w"] == second[1]["w"]
