"""The user's rules as pure functions: the leave decision and the population of users."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ulrec_env import EnvConfig, UserPopulation
from ulrec_env.user_model import REASON_OF_CODE, STAYS, UserTraits, dislike_thresholds, leave_decision, too_close


@pytest.mark.parametrize("leave_rule, own_reason", [("billp", "redundant"), ("satisfaction", "bored")])
def test_leave_decision_takes_the_first_reason_for_one_user_and_for_arrays(leave_rule, own_reason):
    cases = list(itertools.product([False, True], [4.0, 1.0], [False, True]))  # repeated, rating, fed up
    expected = []
    for repeated, rating, fed_up in cases:
        reason = "repeat" if repeated else "low_rating" if rating < 2.0 else own_reason if fed_up else None
        code = leave_decision(repeated, rating, 2.0, fed_up, leave_rule)
        assert type(code) is int and REASON_OF_CODE[code] == reason, (repeated, rating, fed_up)
        expected.append(code)
    repeated, rating, fed_up = (np.array(c) for c in zip(*cases))
    codes = leave_decision(repeated, rating, 2.0, fed_up, leave_rule)
    assert codes.tolist() == expected and (codes == STAYS).sum() == 1
    # Broadcasting, as the oracle uses it: beams (rows) against items (columns).
    grid = leave_decision(np.array([[False, True], [False, False]]), np.array([[4.0, 1.0]]), 2.0, np.array(True), leave_rule)
    assert [[REASON_OF_CODE[c] for c in row] for row in grid.tolist()] == [[own_reason, "repeat"], [own_reason, "low_rating"]]


def test_leave_decision_names_a_bad_rule_and_too_close_skips_empty_slots():
    with pytest.raises(ValueError, match="`leave_rule` must be one of \\['billp', 'satisfaction'\\], got 'bored'"):
        leave_decision(False, 4.0, 2.0, False, "bored")
    assert too_close([60.0, 40.0], 50.0) and not too_close([], 50.0)
    assert too_close(np.array([[60.0, np.inf], [np.inf, np.inf]]), 50.0).tolist() == [False, False]


def test_population_draws_each_users_traits_once_from_the_seed(small_world):
    a = UserPopulation.of(small_world, EnvConfig(trait_seed=3))
    b = UserPopulation.of(small_world, EnvConfig(trait_seed=3))
    c = UserPopulation.of(small_world, EnvConfig(trait_seed=4))
    assert len(a) == small_world.n_users
    assert np.array_equal(a.traits.patience, b.traits.patience) and not np.array_equal(a.traits.patience, c.traits.patience)
    tolerance, patience, recovery = a.traits_of(7)
    assert type(tolerance) is float and (tolerance, patience, recovery) == (
        a.traits.tolerance[7], a.traits.patience[7], a.traits.recovery[7])
    lo, hi = EnvConfig().tolerance
    assert ((a.traits.tolerance >= lo) & (a.traits.tolerance <= hi)).all()
    with pytest.raises(TypeError, match="`traits` must be a UserTraits"):
        UserPopulation(traits={"tolerance": np.ones(2)}, min_ratings=np.ones(2))
    with pytest.raises(ValueError, match="one threshold per user"):
        UserPopulation(traits=a.traits, min_ratings=np.ones(3))
    assert isinstance(a.traits, UserTraits)


def test_dislike_thresholds_are_each_users_quantile_floored_at_min_rating():
    ratings = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 3.5, 4.0, 4.5, 5.0], [1.0, 1.0, 1.0, 1.0, 1.5]])
    assert np.array_equal(dislike_thresholds(ratings, 2.0, None), [2.0, 2.0, 2.0])
    # The 0.25 quantile of each row: 2.0, 3.5, 1.0; the last is raised to min_rating.
    assert np.allclose(dislike_thresholds(ratings, 2.0, 0.25), [2.0, 3.5, 2.0])
    assert np.allclose(dislike_thresholds(ratings, -np.inf, 0.25), [2.0, 3.5, 1.0])
    # Each user rejects the same share of the catalogue, however they rate.
    rng = np.random.default_rng(0)
    wide = np.concatenate([rng.uniform(1, 5, (4, 400)), rng.uniform(3.5, 4.5, (4, 400))])
    thr = dislike_thresholds(wide, -np.inf, 0.2)
    share = (wide < thr[:, None]).mean(axis=1)
    assert np.allclose(share, 0.2, atol=0.01)


def test_population_takes_the_per_user_threshold_from_the_config(small_world):
    plain = UserPopulation.of(small_world, EnvConfig(min_rating=2.5))
    assert np.array_equal(plain.min_ratings, np.full(small_world.n_users, 2.5))
    per_user = UserPopulation.of(small_world, EnvConfig(min_rating=2.5, dislike_quantile=0.4))
    expected = np.maximum(np.quantile(small_world.ratings.astype(np.float64), 0.4, axis=1), 2.5)
    assert np.array_equal(per_user.min_ratings, expected)
    assert len(set(per_user.min_ratings.tolist())) > 1
    assert type(per_user.min_rating_of(3)) is float and per_user.min_rating_of(3) == expected[3]
    # The traits do not depend on the threshold.
    assert np.array_equal(plain.traits.patience, per_user.traits.patience)
