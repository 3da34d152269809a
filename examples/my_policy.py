"""A policy of your own, in a file: ``ulrec bench --policies examples/my_policy.py:MyPolicy``.

The guide "Benchmark your own policy" (docs/guides/benchmark-your-policy.md) walks through it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from agents.baselines import shown_mask, window_items
from agents.policy import Policy


class MyPolicy(Policy):
    """Popular items, but none sharing a genre with the last ``window`` recommended ones (while any is left).

    It reads only the observation and the world's catalog (popularity, genres), so ``peeks`` stays false.

    Args:
        window: How many of the session's last recommendations to avoid the genres of.
    """

    name = "my-policy"

    def __init__(self, window: int = 2) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"`window` must be a positive integer, got {window!r}; e.g. MyPolicy(window=2).")
        self.window = window

    def _on_bind(self) -> None:
        genres = sorted({g for item in self.world.genres for g in item})
        column = {g: j for j, g in enumerate(genres)}
        self._genres = np.zeros((self.world.n_items, max(1, len(genres))), dtype=np.float64)
        for i, item in enumerate(self.world.genres):
            for g in item:
                self._genres[i, column[g]] = 1.0
        self._popularity = np.asarray(self.world.popularity, dtype=np.float64)

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        recent = window_items(obs["recommended"], obs["step"], self.window)  # (n, window), -1 where none yet
        recent_genres = (self._genres[np.clip(recent, 0, None)] * (recent >= 0)[..., None]).sum(axis=1)  # (n, G)
        repeats_genre = recent_genres @ self._genres.T > 0  # (n, n_items)
        score = np.broadcast_to(self._popularity, repeats_genre.shape) - 1e9 * repeats_genre
        score[shown_mask(obs["recommended"], self.world.n_items)] = -np.inf
        return score.argmax(axis=1)
