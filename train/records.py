"""The structured record of one step of a rollout: what training and evaluation read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

__all__ = ["StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """One recommendation and the user's answer.

    Attributes:
        episode: Episode id, unique within a rollout run.
        user: World row of the user.
        step: 0-based index of the step within the episode.
        prompt: The exact text the policy saw (empty for non-text policies).
        completion: The item as the policy produced it (the title text; what training scores).
        item: Item id that was recommended.
        title: Catalog title of ``item``.
        rating: The user's rating of the item.
        reward: The reward of the step (the rating on continue, ``leave_penalty`` on leave).
        feedback: ``"continue"`` or ``"leave"``.
        leave_reason: Why the user left (``None`` on continue).
        truncated: Whether the episode was cut by the horizon at this step (only on its last step).
        session_len: Continued steps of the whole episode (filled in when the episode ends).
        session_return: Summed reward of the whole episode.
        logprob: Log-probability of ``completion`` under the policy when it sampled it (``None`` otherwise).
    """

    episode: int
    user: int
    step: int
    prompt: str
    completion: str
    item: int
    title: str
    rating: float
    reward: float
    feedback: str
    leave_reason: str | None
    truncated: bool
    session_len: int
    session_return: float
    logprob: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StepRecord":
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is not None and f.name != "logprob"]
        if missing:
            raise ValueError(f"step record is missing field(s) {missing}; got keys {sorted(d)}.")
        return cls(**{k: v for k, v in d.items() if k in names})
