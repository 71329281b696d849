import random

import pytest

from remax_bench.core.task import (
    EVAL_BUCKETS,
    LAZY_MARK,
    OPT_IN_TASKS,
    TASK_SPECS,
    TASKS,
    SyntheticTask,
    _bucket,
    corrupt,
    gold_score,
    lazy,
    overlong,
    parse_instruction,
    true_answer,
)


def _input(prompt: str) -> tuple[str, str]:
    name, args = parse_instruction(prompt)
    return name, args["w"]


def test_generator_is_deterministic_per_seed():
    a, b, c = SyntheticTask(3), SyntheticTask(3), SyntheticTask(4)
    assert a.prompts(50) == b.prompts(50) and a.prompts(20, "eval") == b.prompts(20, "eval")
    assert a.sft_demos(50) == b.sft_demos(50) and a.preference_pairs(20) == b.preference_pairs(20)
    assert a.mt_bench_questions(10) == b.mt_bench_questions(10)
    assert a.prompts(50) != c.prompts(50) and a.sft_demos(50) != c.sft_demos(50)
    assert a.preference_pairs(20) != c.preference_pairs(20)


def test_default_data_is_pinned():
    # The tiny suite's training settings were tuned on this data: a change to the generator must be deliberate.
    task = SyntheticTask(1234)
    assert task.prompts(3) == [
        {"prompt": "Say cad 2 times.", "task": "repeat", "answer": "cadcad"},
        {"prompt": "Put the letters of fahgdh in order.", "task": "sort", "answer": "adfghh"},
        {"prompt": "How many d are in bddb?", "task": "count", "answer": "2"},
    ]
    assert task.sft_demos(1)[0]["response"] == "cdffh..."  # "Sort the letters: hcffhd", lazy


def test_eval_inputs_never_appear_in_training():
    task = SyntheticTask(0)
    train = {_input(r["prompt"]) for r in task.prompts(3000)}
    train |= {_input(r["prompt"]) for r in task.sft_demos(1000) + task.preference_pairs(1000)}
    held = {_input(r["prompt"]) for r in task.prompts(300, "eval")}
    assert held and not train & held
    # By construction: the side is a function of the (task, word) input alone, about 1 in EVAL_BUCKETS held out.
    assert all(_bucket(*i) == 0 for i in held) and all(_bucket(*i) != 0 for i in train)
    words = [(t, "abc" + "abcdefgh"[i % 8] + "abcdefgh"[i // 8]) for t in TASKS for i in range(64)]
    assert 0.5 / EVAL_BUCKETS < sum(_bucket(*w) == 0 for w in words) / len(words) < 2 / EVAL_BUCKETS


def test_every_task_appears_answers_are_recomputed_and_sizes_are_small():
    rows = SyntheticTask(0).prompts(1000) + SyntheticTask(0).prompts(300, "eval")
    assert {r["task"] for r in rows} == set(TASKS)
    assert all(true_answer(r["prompt"]) == r["answer"] for r in rows)
    assert max(len(r["prompt"].encode()) for r in rows) <= 60  # one byte is one token of the tiny models
    assert max(len(r["answer"].encode()) for r in rows) <= 20
    assert len({r["prompt"] for r in rows}) > 900  # varied, not a handful of prompts repeated


@pytest.mark.parametrize(
    "prompt, response, expected",
    [
        ("Reverse: abcde", "edcba", 1.0),
        ("Reverse: abcde", "", 0.0),
        ("Reverse: abcde", "  \n", 0.0),
        ("Reverse: abcde", "edcbx", 0.8),  # 4 of 5 match: 2 * 4 / (5 + 5)
        ("Write abcde backwards.", "edcba \n", 1.0),
        ("Uppercase: abc", "ABC<|eos|>", 1.0),
        ("Uppercase: abc", "ABC</s>ABC", 1.0),  # what follows the end of sequence is not the answer
        ("Sort the letters: cab", "ab", 0.8),  # 2 * 2 / (3 + 2)
        ("Sort the letters: cab", "abd", 2 * 2 / 6),
        ("Repeat ab 2 times.", "abab", 1.0),
        ("Repeat ab 3 times.", "ababa", 10 / 11),  # 2 * 5 / (6 + 5)
        ("Count the letter a in: aab", "2", 1.0),
        ("How many a are in aab?", "3", 0.5),  # off by one
        ("Count the letter a in: aab", "0", 0.25),  # off by two
        ("Count the letter a in: aab", "two", 0.0),
        ("First 2 letters of: abcd", "ab", 1.0),
        ("Begin abcd with 2 letters.", "abc", 0.8),  # 2 * 2 / (2 + 3)
        ("Double each letter: ab", "aabb", 1.0),
        ("Last 2 letters of: abcd", "cd", 1.0),
        ("Give the last 3 letters of abcd.", "bd", 0.8),  # 2 * 2 / (3 + 2)
    ],
)
def test_gold_score_hand_picked(prompt, response, expected):
    assert gold_score(prompt, response) == pytest.approx(expected)


def test_gold_score_rejects_unknown_prompts():
    for prompt in ["Tell me a joke", "Reverse: ABC", "<|user|>Reverse: abc<|assistant|>", ""]:
        with pytest.raises(ValueError, match="not an instruction"):
            gold_score(prompt, "cba")


def test_demonstrations_are_imperfect_at_the_chosen_rate():
    demos = SyntheticTask(0, demo_noise=0.3).sft_demos(4000)
    lazy_rows = [d for d in demos if d["response"].endswith(LAZY_MARK)]
    assert 0.27 < len(lazy_rows) / len(demos) < 0.33
    assert all(gold_score(d["prompt"], d["response"]) < 1.0 for d in lazy_rows)
    others = [d for d in demos if not d["response"].endswith(LAZY_MARK)]
    typos = sum(gold_score(d["prompt"], d["response"]) < 1.0 for d in others) / len(others)
    assert 0.07 < typos < 0.13  # TYPO_RATE of the rest
    assert not any(d["response"].endswith(LAZY_MARK) for d in SyntheticTask(0, demo_noise=0.0).sft_demos(200))
    # Graded: the imperfect demonstrations are close to right, not worthless.
    mean = sum(gold_score(d["prompt"], d["response"]) for d in demos) / len(demos)
    assert 0.75 < mean < 0.9


def test_lazy_and_overlong_answers_score_below_the_answer():
    rng = random.Random(0)
    # "abcde" reversed is "edcba"; lazy keeps 3-4 chars and trails off, overlong repeats 1-2 of its own chars.
    assert gold_score("Reverse: abcde", "edcb...") == pytest.approx(2 * 4 / (5 + 7))
    assert gold_score("Reverse: abcde", "edcbaa") == pytest.approx(2 * 5 / (5 + 6))
    assert lazy("7", rng, "count") == LAZY_MARK and overlong("2", rng, "count") == "3"
    for _ in range(20):
        assert gold_score("Reverse: abcde", lazy("edcba", rng, "reverse")) < 1.0
        assert gold_score("Reverse: abcde", overlong("edcba", rng, "reverse")) < 1.0


def test_preference_pairs_are_gold_labelled_without_ties():
    pairs = SyntheticTask(1).preference_pairs(500)
    margins = [gold_score(p["prompt"], p["chosen"]) - gold_score(p["prompt"], p["rejected"]) for p in pairs]
    assert len(pairs) == 500 and min(margins) > 0
    exact = sum(gold_score(p["prompt"], p["chosen"]) == 1.0 for p in pairs) / len(pairs)
    assert 0.7 < exact < 0.9  # mostly exact winners (PAIR_EXACT)
    longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) / len(pairs)
    shorter = sum(len(p["chosen"]) < len(p["rejected"]) for p in pairs) / len(pairs)
    # Lazy losers ("abc...") are longer than the answer, overlong ones too, two-edit ones either way:
    # length alone does not tell the winner.
    assert longer > 0.1 and shorter < 0.8


def test_corrupt_always_changes_the_answer():
    rng = random.Random(0)
    for answer in ["a", "ab", "abc", "ABCD", "3", "0"]:
        for _ in range(50):
            assert corrupt(answer, rng, "count" if answer.isdigit() else "reverse") != answer


def test_mt_bench_questions_have_two_held_out_scoreable_turns():
    questions = SyntheticTask(0).mt_bench_questions(40)
    assert [q["question_id"] for q in questions] == list(range(1, 41))
    for q in questions:
        assert set(q) == {"question_id", "category", "turns"} and len(q["turns"]) == 2
        (t1, w1), (t2, w2) = (_input(t) for t in q["turns"])
        assert q["category"] == t1 and t1 != t2
        assert _bucket(t1, w1) == 0 and _bucket(t2, w2) == 0  # both turns held out from training
        assert all(gold_score(t, true_answer(t)) == 1.0 for t in q["turns"])
    assert sum(_input(q["turns"][0])[1] == _input(q["turns"][1])[1] for q in questions) > 10  # mostly one word
    single = SyntheticTask(0, tasks=["reverse"]).mt_bench_questions(5)
    assert all(q["turns"][0] != q["turns"][1] for q in single)


def test_task_selection_opt_in_tasks_and_describe():
    assert "last" in OPT_IN_TASKS and "last" not in TASKS and set(TASKS) | set(OPT_IN_TASKS) == set(TASK_SPECS)
    task = SyntheticTask(0, tasks=["last", "count"])
    assert task.describe(task.prompts(200)).keys() == {"count", "last"}
    assert sum(SyntheticTask(0).describe(n=300).values()) == 300
    for bad in (["nope"], []):
        with pytest.raises(ValueError, match="tasks"):
            SyntheticTask(0, tasks=bad)
    with pytest.raises(ValueError, match="demo_noise"):
        SyntheticTask(0, demo_noise=1.5)
    with pytest.raises(ValueError, match="split"):
        SyntheticTask(0).prompts(3, "test")
