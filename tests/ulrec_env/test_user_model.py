"""The user's rules as pure functions: the leave decision and the population of users."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ulrec_env import EnvConfig, UserPopulation
from ulrec_env.user_model import REASON_OF_CODE, STAYS, UserTraits, leave_decision, too_close


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
        UserPopulation(traits={"tolerance": np.ones(2)})
    assert isinstance(a.traits, UserTraits)
