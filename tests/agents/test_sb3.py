"""The Stable-Baselines3 wrapper: PPO trains on ULRec-v0 and is benchmarked like any policy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.evaluation import run_policy
from agents.sb3 import SB3ObservationWrapper, SB3Policy


@pytest.mark.slow
def test_ppo_trains_and_acts_in_the_env(small_world):
    sb3 = pytest.importorskip("stable_baselines3")
    env = SB3ObservationWrapper(gym.make("ULRec-v0", world=small_world, split="train"))
    assert env.observation_space.contains(env.reset(seed=0)[0])
    model = sb3.PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, verbose=0)
    model.learn(total_timesteps=128)
    s = run_policy(SB3Policy(model, name="ppo"), small_world, small_world.test_users[:6], max_episode_steps=20)
    assert len(s.items) == 6 and all(((0 <= i) & (i < small_world.n_items)).all() for i in s.items)


def test_sb3_policy_rejects_non_models():
    with pytest.raises(TypeError, match="Stable-Baselines3 model"):
        SB3Policy(object())


def test_wrapper_space_is_float_and_flat(small_world):
    env = SB3ObservationWrapper(gym.make("ULRec-v0", world=small_world))
    obs, _ = env.reset(seed=0)
    assert "user" not in obs and obs["step"].shape == (1,) and obs["history"].dtype == np.float32
    assert obs in env.observation_space


def test_plain_env_passes_both_env_checkers():
    """`gym.make("ULRec-v0")` as it is: Gymnasium's checker and SB3's (no 0-d Box left)."""
    import warnings

    sb3_check = pytest.importorskip("stable_baselines3.common.env_checker")
    from gymnasium.utils.env_checker import check_env as gym_check

    env = gym.make("ULRec-v0")
    assert all(s.shape != () for s in env.observation_space.spaces.values() if isinstance(s, gym.spaces.Box))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(env.unwrapped, skip_render_check=True)
    sb3_check.check_env(env.unwrapped, warn=False)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["PPO", "DQN"])
def test_sb3_trains_on_the_plain_env(algo, small_world):
    sb3 = pytest.importorskip("stable_baselines3")
    env = gym.make("ULRec-v0", world=small_world, split="train")
    kw = {"n_steps": 64, "batch_size": 32, "n_epochs": 1} if algo == "PPO" else {"learning_starts": 16, "buffer_size": 500}
    model = getattr(sb3, algo)("MultiInputPolicy", env, seed=0, verbose=0, **kw)
    model.learn(total_timesteps=128)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert 0 <= int(action) < small_world.n_items
