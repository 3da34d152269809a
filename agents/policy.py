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

    Subclasses implement :meth:`_act_batch`; the public methods validate and delegate:

    - :meth:`act` takes one session's observation (of ``gym.make("ULRec-v0")``) and returns one item id;
    - :meth:`act_batch` takes a batch of sessions (the native vector env's observation, already restricted to
      the sessions that act) and returns int64 item ids, one per session;
    - :meth:`decode_batch` returns ``(item_ids, records)``: the same actions and, for policies whose decisions
      come with a record (the LLM's :class:`~agents.llm.DecodeRecord`: prompt, completion, log-prob), one record
      per session, else ``None``. Rollouts that keep what each decision was made from call it; it is the one
      channel for records (as Stable-Baselines3's ``predict`` always returns ``(actions, state)``). Policies with
      records override :meth:`_decode_batch` instead of :meth:`_act_batch`.

    What :meth:`_act_batch` receives: a dict of arrays with one row per acting session, ``user`` ``(n,)``,
    ``history`` ``(n, H)`` (``-1`` padded), ``recommended`` and ``rewards`` ``(n, recommended_slots)`` (this
    session so far, oldest first, ``-1``/0 padded) and ``step`` ``(n, 1)``; :func:`agents.baselines.shown_mask`
    and :func:`agents.baselines.window_items` turn them into masks and recent items. It returns ``n`` item ids.

    Attributes:
        name: Short name used in tables (``"greedy"``).
        peeks: Whether the policy reads the hidden user model (true ratings, distances, traits) instead of
            only the observation; tables mark such rows. Peeking policies get the unwrapped env in
            :meth:`bind` (``self.env``); the others get ``env=None`` from the evaluation loop.
        invalid_actions: (optional) how many actions were not a valid catalog item (free-text decoders).

    ``reset(seed)`` reseeds the policy's own generator: ``reset(seed)`` with the same seed replays the same
    decisions, and ``reset(None)`` returns to the constructor's seed. The evaluation loop calls it before each
    batch of sessions after the first with that batch's seed.
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
        """Reseed the policy's own generator (``None``: the constructor's seed); policies that sample override this."""

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> int:
        """One action for one session's observation."""
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        return int(self.act_batch(batch)[0])

    def act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Actions (item ids, int64) for a batch of sessions."""
        return self.decode_batch(obs)[0]

    def decode_batch(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[Any] | None]:
        """``(actions, records)`` for a batch of sessions: records are one per session, or ``None`` for policies
        that keep none (see the class docstring)."""
        if self.world is None:
            raise RuntimeError(f"policy {self.name!r} is not bound to a world; call policy.bind(world, env) first.")
        raw, records = self._decode_batch(obs)
        actions = np.asarray(raw, dtype=np.int64)
        n = len(obs["user"])
        if actions.shape != (n,):
            raise RuntimeError(f"policy {self.name!r} returned {actions.shape} actions for {n} sessions.")
        if records is not None and len(records) != n:
            raise RuntimeError(f"policy {self.name!r} returned {len(records)} records for {n} sessions.")
        return actions, records

    def _decode_batch(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[Any] | None]:
        """Hook of :meth:`decode_batch`: ``(self._act_batch(obs), None)`` unless the policy keeps records."""
        return self._act_batch(obs), None

    @abstractmethod
    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}{' (peeks)' if self.peeks else ''}>"
