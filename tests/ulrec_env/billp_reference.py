"""The seed system's leave rule written the way its authors run it: pure Python, titles, one step at a time.

This is a yardstick, not part of the simulator (it lives with the tests and is not installed): tests check that ``ULRec-v0`` with ``leave_rule="billp"``
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
    """One user session at a time, item titles in, ``(reward, leave)`` out.

    Args:
        faithful: ``True`` mirrors the published code's structure: each step walks the *whole* list of
            recommended titles, looking up ids, the distance and the reward at every position and testing the
            window inside the loop. ``False`` is a tight pure-Python version of the same rule (stops at the
            window, hoists lookups). Both give the same decisions.
    """

    def __init__(self, titles: Sequence[str], reward_mat: np.ndarray, distance_mat: np.ndarray,
                 window: int = 4, threshold: float = 50.0, min_rating: float = 2.0, faithful: bool = True) -> None:
        self.item2id = {t: i for i, t in enumerate(titles)}
        self.reward_mat = reward_mat
        self.distance_mat = distance_mat
        self.window = window
        self.threshold = threshold
        self.min_rating = min_rating
        self.faithful = faithful
        self.userid = 0
        self.item_list: list[str] = []

    def reset(self, userid: int) -> None:
        self.userid = userid
        self.item_list = []

    def get_reward(self, userid: int, item: str) -> float:
        if item in self.item2id.keys():
            return self.reward_mat[userid, self.item2id[item]]
        return 0

    def whether_to_leave(self, userid: int, item: str, item_list: list[str]) -> bool:
        """``item_list`` ends with ``item`` (as in the published environment)."""
        if item in item_list[:-1]:
            return True
        if self.get_reward(userid, item) < self.min_rating:  # the fixed first-step check
            return True
        if self.faithful:
            for i, history_item in enumerate(reversed(item_list[:-1])):
                itemid = self.item2id[item]
                history_itemid = self.item2id[history_item]
                distance = self.distance_mat[itemid, history_itemid]
                reward = self.get_reward(userid, item)
                if i < self.window and (distance < self.threshold or reward < self.min_rating):
                    return True
            return False
        itemid = self.item2id[item]
        row = self.distance_mat[itemid]
        for history_item in item_list[-self.window - 1 : -1]:
            if row[self.item2id[history_item]] < self.threshold:
                return True
        return False

    def step(self, item: str) -> tuple[float, bool]:
        self.item_list.append(item)
        leave = self.whether_to_leave(self.userid, item, self.item_list)
        reward = 0.0 if leave else float(self.get_reward(self.userid, item))
        return reward, leave
