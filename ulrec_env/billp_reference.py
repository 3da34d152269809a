"""The seed system's leave rule written the way its authors run it: pure Python, titles, one step at a time.

This is a yardstick, not part of the simulator: tests check that ``ULRec-v0`` with ``leave_rule="billp"``
reproduces it step for step, and ``benchmarks/bench_env.py`` measures the environment's speed against it.
It follows the published environment (titles looked up in ``item2id``, membership in the list of
recommended titles, the reward and distance matrices indexed per step) with the first-step rating bug
fixed, as the authors did later.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["BiLLPReference"]


class BiLLPReference:
    """One user session at a time, item titles in, ``(reward, leave)`` out."""

    def __init__(self, titles: Sequence[str], reward_mat: np.ndarray, distance_mat: np.ndarray,
                 window: int = 4, threshold: float = 50.0, min_rating: float = 2.0) -> None:
        self.item2id = {t: i for i, t in enumerate(titles)}
        self.reward_mat = reward_mat
        self.distance_mat = distance_mat
        self.window = window
        self.threshold = threshold
        self.min_rating = min_rating
        self.userid = 0
        self.item_list: list[str] = []

    def reset(self, userid: int) -> None:
        self.userid = userid
        self.item_list = []

    def get_reward(self, item: str) -> float:
        return self.reward_mat[self.userid, self.item2id[item]]

    def whether_to_leave(self, item: str) -> bool:
        if item in self.item_list:
            return True
        reward = self.get_reward(item)
        if reward < self.min_rating:
            return True
        itemid = self.item2id[item]
        for i, history_item in enumerate(reversed(self.item_list)):
            if i >= self.window:
                break
            if self.distance_mat[itemid, self.item2id[history_item]] < self.threshold:
                return True
        return False

    def step(self, item: str) -> tuple[float, bool]:
        leave = self.whether_to_leave(item)
        reward = 0.0 if leave else float(self.get_reward(item))
        self.item_list.append(item)
        return reward, leave
