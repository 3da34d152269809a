"""The oracle's model of the user against the environments it plans for."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.oracle import OraclePolicy, SessionModel
from ulrec_env import ULRecVectorEnv, UserPopulation
from ulrec_env.user_model import REASON_OF_CODE, STAYS

EXPECTED_REASONS = {"billp": {"repeat", "low_rating", "redundant"}, "satisfaction": {"repeat", "low_rating", "bored"}}


@pytest.mark.parametrize("dislike_quantile", [None, 0.3])
@pytest.mark.parametrize("leave_rule", ["billp", "satisfaction"])
def test_single_env_vector_env_and_oracle_model_agree_on_every_leave(small_world, leave_rule, dislike_quantile):
    """Seeded random actions, mostly among a dozen nearby well-rated items (so that near items, repeats and low
    ratings all occur): at every step the three give the same decision, the same reason and (satisfaction
    rule) the same state; with the absolute dislike threshold and with a per-user one."""
    n, horizon = 24, 25
    venv = ULRecVectorEnv(num_envs=n, world=small_world, autoreset_mode="disabled", max_episode_steps=horizon,
                          leave_rule=leave_rule, dislike_quantile=dislike_quantile)
    single = gym.make("ULRec-v0", world=small_world, max_episode_steps=horizon, leave_rule=leave_rule,
                      dislike_quantile=dislike_quantile)
    oracle = OraclePolicy().bind(small_world, venv)
    # The oracle's users are the vector env's; the single env draws the same ones from the same settings.
    assert oracle.population is venv.population
    own = UserPopulation.of(small_world, single.unwrapped.config)
    for name in ("tolerance", "patience", "recovery"):
        assert np.array_equal(getattr(own.traits, name), getattr(venv.population.traits, name))
        assert np.array_equal(getattr(single.unwrapped.traits, name), getattr(venv.population.traits, name))
    assert np.array_equal(own.min_ratings, venv.population.min_ratings)

    rng = np.random.default_rng(4)
    users = rng.choice(small_world.n_users, size=n, replace=False)
    actions = np.empty((horizon, n), np.int64)
    for i, u in enumerate(users):
        liked = np.flatnonzero(small_world.ratings[u] >= venv.population.min_ratings[u])
        near = liked[np.argsort(small_world.distance[int(rng.choice(liked)), liked])[:12]]
        # The pool once in some order, then draws from it; one step in ten any item of the catalog.
        planned = np.concatenate([rng.permutation(near), rng.choice(near, size=horizon)])[:horizon]
        actions[:, i] = np.where(rng.random(horizon) < 0.1, rng.integers(small_world.n_items, size=horizon), planned)

    _, _ = venv.reset(seed=0, options={"users": users})
    trace = []
    for t in range(horizon):
        _, _, term, _, info = venv.step(actions[t])
        trace.append((term.copy(), info["leave_reason"].copy(), info["satisfaction"].copy(), info["active"].copy()))

    reasons, steps = set(), 0
    for i, u in enumerate(users.tolist()):
        single.reset(seed=0, options={"user": u})
        model = SessionModel(small_world, single.unwrapped.config, own, u)
        for t in range(horizon):
            term_v, reason_v, sat_v, active = trace[t]
            assert active[i]
            a = int(actions[t, i])
            beams, alive = model.start(actions[:t, i])
            assert alive
            s, _, code, _ = model.expand(beams)
            _, _, term, trunc, info = single.step(a)
            steps += 1
            assert info["leave_reason"] == reason_v[i] == REASON_OF_CODE[code[0, a]], (u, t)
            assert term == term_v[i] == (code[0, a] != STAYS)
            if leave_rule == "satisfaction" and not term:
                assert info["satisfaction"] == pytest.approx(s[0, a])
                # The vector env takes similarities of float32 distances in float32: it drifts by ~1e-6.
                assert info["satisfaction"] == pytest.approx(sat_v[i], rel=1e-5)
            if term:
                reasons.add(info["leave_reason"])
            if term or trunc:
                break
    assert reasons == EXPECTED_REASONS[leave_rule] and steps > 4 * n
