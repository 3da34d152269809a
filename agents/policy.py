"""The one interface every recommender implements, baselines and LLM alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np

from ulrec_env import World

__all__ = ["Policy", "slice_obs"]


def slice_obs(obs: Mapping[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    """Select sessions (rows) from a batched observation."""
    return {k: np.asarray(v)[index] for k, v in obs.items()}


class Policy(ABC):
    """A recommender acting in ULRec-v0.

    Subclasses implement :meth:`_act_batch`; :meth:`act` (one env) and :meth:`act_batch` (a batch of
    sessions from the native vector env, already restricted to the active ones) validate and delegate.

    Attributes:
        name: Short name used in tables (``"greedy"``).
        peeks: Whether the policy reads the hidden user model (true ratings, distances, traits) instead of
            only the observation; tables mark such rows.
    """

    name: str = "policy"
    peeks: bool = False

    def __init__(self) -> None:
        self.world: World | None = None
        self.env: Any = None

    def bind(self, world: World, env: Any = None) -> "Policy":
        """Attach the policy to a world (and, for peeking policies, to the unwrapped env it acts in)."""
        if not isinstance(world, World):
            raise TypeError(f"`world` must be a ulrec_env.World, got {type(world).__name__}.")
        self.world = world
        self.env = env
        self._on_bind()
        return self

    def _on_bind(self) -> None:
        """Hook: precompute what depends on the world."""

    def reset(self, seed: int | None = None) -> None:
        """Reseed the policy's own generator (policies that sample override this)."""

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> int:
        """One action for one session's observation."""
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        return int(self.act_batch(batch)[0])

    def act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Actions (item ids, int64) for a batch of sessions."""
        if self.world is None:
            raise RuntimeError(f"policy {self.name!r} is not bound to a world; call policy.bind(world, env) first.")
        actions = np.asarray(self._act_batch(obs), dtype=np.int64)
        n = len(obs["user"])
        if actions.shape != (n,):
            raise RuntimeError(f"policy {self.name!r} returned {actions.shape} actions for {n} sessions.")
        return actions

    @abstractmethod
    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}{' (peeks)' if self.peeks else ''}>"
