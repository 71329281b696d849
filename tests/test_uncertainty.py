"""Intervals over seeds, IQM and probability of improvement: rliable's definitions, rliable's bootstrap."""

import numpy as np
import pytest
from rliable import metrics

from remax_bench import uncertainty as u


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9])
def test_the_statistics_are_rliables(n):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=(n, 3)).round(1)  # rounded: ties happen
    other = rng.normal(size=(n + 2, 3)).round(1)
    for j in range(3):
        assert u.trimmed_means(scores)[j] == pytest.approx(metrics.aggregate_iqm(scores[:, [j]]))
        assert u.improvement_probabilities(scores, other)[j] == pytest.approx(
            metrics.probability_of_improvement(scores[:, [j]], other[:, [j]]))
    same = scores[:, :1]
    assert u.improvement_probabilities(same, same)[0] == pytest.approx(0.5)


def test_intervals_are_seeded_and_leave_numpys_generator_alone():
    scores = np.random.default_rng(0).normal(size=(5, 4))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = u.summarise(scores, reps=300)
    assert np.array_equal(np.random.get_state()[1], before)  # rliable draws from the global generator
    assert first == u.summarise(scores, reps=300)
    for mean, iqm, column in zip(*first, scores.T):
        assert mean.point == pytest.approx(column.mean()) and mean.n == 5
        assert mean.lo <= mean.point <= mean.hi and column.min() <= mean.lo and mean.hi <= column.max()
        assert iqm.point == pytest.approx(np.sort(column)[1:4].mean())


def test_two_seeds_give_their_range_one_seed_no_interval_missing_seeds_count_less():
    two = u.mean_interval([0.66, 0.70])
    assert (two.point, two.lo, two.hi, two.n) == (pytest.approx(0.68), pytest.approx(0.66), pytest.approx(0.70), 2)
    one = u.mean_interval([0.5])
    assert one.point == 0.5 and not one.has_interval
    assert u.mean_interval([]) is u.NO_RUNS
    means, _ = u.summarise(np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 3.0]]), reps=200)
    assert (means[0].n, means[1].n) == (3, 2) and means[1].point == pytest.approx(2.0)


def test_a_large_sample_interval_is_the_normal_one():
    values = np.arange(100, dtype=float)
    interval = u.mean_interval(values)
    # standard error 29.0 / sqrt(100) = 2.9: the 95% interval is about 49.5 +- 5.7
    assert 42.5 < interval.lo < 45 and 54 < interval.hi < 56.5


def test_probability_of_improvement_and_when_seeds_tell_apart():
    low, high = np.array([[0.1], [0.2], [0.3]]), np.array([[0.5], [0.6], [0.7]])
    poi = u.probability_of_improvement(high, low, reps=300)[0]
    assert (poi.point, poi.lo, poi.hi) == (1.0, 1.0, 1.0)
    assert u.told_apart(poi, 3, 3) == 1 and u.told_apart(poi, 2, 3) == 0  # below 3 seeds: no order
    text = u.order_in_words("GRPO", "ReMax", "gold", poi, 3, 3)
    assert text == "gold: GRPO is better than ReMax (P(GRPO > ReMax) = 1.00 [1.00, 1.00], 3 seeds each)."
    worse = u.probability_of_improvement(low, high, reps=300)[0]
    assert u.order_in_words("GRPO", "ReMax", "gold", worse, 3, 3).startswith("gold: ReMax is better than GRPO")
    mixed = u.probability_of_improvement(np.array([[0.1], [0.5], [0.3], [0.7]]), np.array([[0.2], [0.4], [0.6]]),
                                         reps=300)[0]
    assert mixed.lo < 0.5 < mixed.hi and "cannot be told apart at 4 and 3 seeds" in \
        u.order_in_words("RLOO", "ReMax", "gold", mixed, 4, 3)
    few = u.probability_of_improvement(high[:2], low[:2], reps=300)[0]
    assert "below 3 seeds per algorithm no order is claimed" in u.order_in_words("A", "B", "gold", few, 2, 2)
