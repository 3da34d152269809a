"""Property-based checks over random action sequences (hypothesis)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from hypothesis import given, settings, strategies as st

from ulrec_env import ULRecEnv, ULRecVectorEnv
from ulrec_env.worlds import synthetic

WORLD = synthetic(seed=3, n_items=120, n_users=40)
RULES = st.sampled_from([{}, {"leave_rule": "billp"}, {"stochastic": True}, {"leave_penalty": -3.0}])


@settings(max_examples=60, deadline=None)
@given(rule=RULES, user=st.integers(0, WORLD.n_users - 1), seed=st.integers(0, 2**31 - 1),
       actions=st.lists(st.integers(0, WORLD.n_items - 1), min_size=1, max_size=40))
def test_single_env_invariants(rule, user, seed, actions):
    env = gym.make("ULRec-v0", world=WORLD, max_episode_steps=25, **rule)
    obs, _ = env.reset(seed=seed, options={"user": user})
    assert obs in env.observation_space
    lo, hi = WORLD.rating_scale
    penalty = rule.get("leave_penalty", 0.0)
    for t, a in enumerate(actions):
        obs, r, term, trunc, info = env.step(a)
        assert obs in env.observation_space
        assert obs["step"].shape == (1,) and int(obs["step"][0]) == t + 1
        assert term == (info["feedback"] == "leave")
        assert (info["leave_reason"] is not None) == term
        if term:
            assert r == penalty
        else:
            assert lo <= r <= hi and r == info["rating"]
        assert 0.0 <= info["satisfaction"] <= 1.0
        assert trunc == (not term and t + 1 == 25)
        if term or trunc:
            break


@settings(max_examples=25, deadline=None)
@given(rule=RULES, seed=st.integers(0, 2**31 - 1),
       actions=st.lists(st.lists(st.integers(0, WORLD.n_items - 1), min_size=6, max_size=6), min_size=1, max_size=30))
def test_vector_env_invariants(rule, seed, actions):
    venv = ULRecVectorEnv(num_envs=6, world=WORLD, max_episode_steps=20, **rule)
    obs, _ = venv.reset(seed=seed)
    for a in actions:
        obs, r, term, trunc, info = venv.step(np.asarray(a))
        assert obs in venv.observation_space
        stepped = info["active"]
        assert np.array_equal(term[stepped], info["feedback"][stepped] == "leave")
        assert not (term & trunc).any()
        assert (r[~stepped] == 0).all()
