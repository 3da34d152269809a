"""Running Stable-Baselines3 models (PPO, DQN with ``MultiInputPolicy``) in ULRec-v0.

Needs the ``rl`` extra: ``pip install 'ulrec[rl]'``.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.policy import Policy

__all__ = ["SB3ObservationWrapper", "SB3Policy", "sb3_observation"]


def _sb3_space(space: spaces.Dict) -> spaces.Dict:
    out = {}
    for k, s in space.spaces.items():
        if k == "user":
            continue  # a one-hot over every user would only let the network memorise users
        if isinstance(s, spaces.Box) and s.shape == ():
            out[k] = spaces.Box(0.0, np.float32(s.high) if np.isfinite(float(s.high)) else np.inf, shape=(1,), dtype=np.float32)
        else:
            out[k] = spaces.Box(s.low.astype(np.float32), s.high.astype(np.float32), dtype=np.float32)
    return spaces.Dict(out)


def sb3_observation(obs: Mapping[str, np.ndarray], batched: bool = False) -> dict[str, np.ndarray]:
    """ULRec observation -> the float Dict SB3 policies take (user id dropped, step as a 1-vector)."""
    out = {}
    for k, v in obs.items():
        if k == "user":
            continue
        v = np.asarray(v, dtype=np.float32)
        if k == "step":
            v = v.reshape(-1, 1) if batched else v.reshape(1)
        out[k] = v
    return out


class SB3ObservationWrapper(gym.ObservationWrapper):
    """Makes ULRec-v0's observations fit SB3's ``MultiInputPolicy`` (float boxes, no 0-d arrays)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = _sb3_space(env.observation_space)

    def observation(self, observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return sb3_observation(observation)


class SB3Policy(Policy):
    """Wraps a trained SB3 model (``model.predict``) as a :class:`Policy` for ``ulrec bench`` and rollouts."""

    peeks = False

    def __init__(self, model: Any, name: str = "sb3", deterministic: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "predict"):
            raise TypeError(f"`model` must be a Stable-Baselines3 model with .predict(), got {type(model).__name__}.")
        self.model, self.name, self.deterministic = model, name, deterministic

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        actions, _ = self.model.predict(sb3_observation(obs, batched=True), deterministic=self.deterministic)
        return np.asarray(actions, dtype=np.int64).reshape(-1)
