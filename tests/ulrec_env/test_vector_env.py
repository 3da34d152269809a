"""The native vector env: same semantics as the single env, autoreset modes, bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from ulrec_env import ULRecEnv, ULRecVectorEnv


def make_vec(n, **kw):
    return gym.make_vec("ULRec-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)


@pytest.mark.parametrize("settings", [{}, {"leave_rule": "billp"}, {"leave_rule": "billp", "window": 1, "leave_penalty": -2.0},
                                      {"dislike_quantile": 0.3}, {"leave_rule": "billp", "dislike_quantile": 0.3}])
def test_matches_single_env_step_for_step(small_world, settings):
    n = 16
    venv = ULRecVectorEnv(num_envs=n, world=small_world, autoreset_mode="disabled", max_episode_steps=30, **settings)
    single = gym.make("ULRec-v0", world=small_world, max_episode_steps=30, **settings)
    users = np.arange(n) % small_world.n_users
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 12, size=(30, n)) * 7 % small_world.n_items  # few items: repeats and near items
    obs_v, _ = venv.reset(seed=0, options={"users": users})
    trace_v = []
    for t in range(30):
        obs_v, r, term, trunc, info = venv.step(actions[t])
        trace_v.append((r.copy(), term.copy(), trunc.copy(), info["leave_reason"].copy(), info["active"].copy(), obs_v))
    for i in range(n):
        obs, _ = single.reset(options={"user": int(users[i])})
        for t in range(30):
            r, term, trunc, reason, active, ov = trace_v[t]
            if not active[i]:
                break
            obs, rs, ts, trs, info = single.step(int(actions[t, i]))
            assert (rs, ts, trs, info["leave_reason"]) == (pytest.approx(r[i]), term[i], trunc[i], reason[i])
            for k in obs:
                assert np.array_equal(obs[k], ov[k][i]), k
            if ts or trs:
                break


def test_satisfaction_values_match_single_env(small_world):
    venv = ULRecVectorEnv(num_envs=4, world=small_world, autoreset_mode="disabled", min_rating=-math.inf)
    env = ULRecEnv(world=small_world, min_rating=-math.inf)
    venv.reset(options={"users": [0, 1, 2, 3]})
    seq = [5, 6, 40, 41, 90, 7]
    sats = []
    for a in seq:
        _, _, term, _, info = venv.step(np.full(4, a))
        sats.append(info["satisfaction"].copy())
    for i in range(4):
        env.reset(options={"user": i})
        for t, a in enumerate(seq):
            _, _, term, _, info = env.step(a)
            assert info["satisfaction"] == pytest.approx(sats[t][i])
            if term:
                break


def test_next_step_autoreset_restarts_finished_sessions():
    venv = make_vec(3, min_rating=-math.inf)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    a = np.zeros(3, np.int64)
    venv.step(a)
    obs, r, term, trunc, info = venv.step(a)  # repeat: everyone leaves
    assert term.all() and (info["leave_reason"] == "repeat").all()
    obs, r, term, trunc, info = venv.step(a)  # ignored: sessions restart
    assert (obs["step"] == 0).all() and (r == 0).all() and not term.any() and not info["active"].any()
    assert (obs["recommended"] == -1).all()


def test_same_step_autoreset_reports_final_obs():
    venv = make_vec(2, autoreset_mode="same_step", min_rating=-math.inf)
    venv.reset(seed=0)
    a = np.array([1, 1])
    venv.step(a)
    obs, r, term, trunc, info = venv.step(a)
    assert term.all() and info["_final_obs"].all()
    assert info["final_obs"][0]["step"] == 2 and (obs["step"] == 0).all()
    assert info["final_info"][1]["leave_reason"] == "repeat"


def test_disabled_mode_freezes_finished_sessions_until_reset_mask():
    venv = make_vec(2, autoreset_mode="disabled", min_rating=-math.inf)
    venv.reset(seed=0)
    venv.step(np.array([3, 3]))
    _, _, term, _, _ = venv.step(np.array([3, 4]))  # env 0 repeats
    assert term[0]
    obs, r, term, trunc, info = venv.step(np.array([9, 9]))
    assert term[0] and r[0] == 0 and not info["active"][0] and obs["step"][0] == 2
    obs, _ = venv.reset(options={"reset_mask": np.array([True, False])})
    assert obs["step"][0] == 0 and obs["step"][1] != 0


def test_truncates_at_max_episode_steps(small_world):
    venv = ULRecVectorEnv(num_envs=2, world=small_world, max_episode_steps=2, min_rating=-math.inf,
                          leave_rule="billp", distance_threshold=1e-9)
    venv.reset(seed=0)
    assert not venv.step(np.array([1, 2]))[3].any()
    _, _, term, trunc, _ = venv.step(np.array([3, 4]))
    assert trunc.all() and not term.any()


def test_observations_stay_in_space_and_roll_past_the_slots(small_world):
    venv = ULRecVectorEnv(num_envs=2, world=small_world, recommended_slots=3, max_episode_steps=10,
                          min_rating=-math.inf, leave_rule="billp", distance_threshold=1e-9)
    obs, _ = venv.reset(seed=0)
    for a in range(5):
        obs, *_ = venv.step(np.array([a, a + 10]))
        assert obs in venv.observation_space
    assert obs["recommended"][0].tolist() == [2, 3, 4]


def test_seeded_user_draws_repeat():
    a, b = make_vec(8), make_vec(8)
    assert np.array_equal(a.reset(seed=5)[0]["user"], b.reset(seed=5)[0]["user"])


def test_bad_input_is_named():
    venv = make_vec(2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.array([0, 0]))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        venv.step(np.array([0, 0, 0]))
    with pytest.raises(TypeError, match="integer item ids"):
        venv.step(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="actions\\[1\\] = 99999"):
        venv.step(np.array([0, 99999]))
    with pytest.raises(ValueError, match="options\\['users'\\] must hold 2"):
        venv.reset(options={"users": [1, 2, 3]})
    with pytest.raises(ValueError, match="not a row"):
        venv.reset(options={"users": [1, 10**6]})
    with pytest.raises(ValueError, match="autoreset_mode"):
        make_vec(2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="num_envs"):
        ULRecVectorEnv(num_envs=0)
