"""The simulated user's rules, as pure functions.

Every function here works on Python floats (one user, used by :class:`ulrec_env.ULRecEnv`) and on numpy
arrays of users (used by :class:`ulrec_env.ULRecVectorEnv`), so the single and the batched environment share
one definition of the dynamics. Nothing here draws random numbers except :func:`sample_user_traits`, which
takes an explicit generator.

The user state of one session is ``(satisfaction, exposure, shown items)``; a user's traits are fixed per
world row. RecSim's split of a user into state, choice and transition is kept, but as functions:

* :func:`similarity` turns an item-item distance into a similarity in ``[0, 1]``;
* :func:`redundancy` sums the similarity of a new item to the recent window;
* :func:`satisfaction_step` is the transition of ``(satisfaction, exposure)``;
* :func:`billp_leave_reason` and :func:`satisfaction_leave_reason` are the two leave decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

__all__ = [
    "LEAVE_REASONS",
    "UserTraits",
    "sample_user_traits",
    "similarity",
    "redundancy",
    "satisfaction_step",
    "billp_leave_reason",
    "satisfaction_leave_reason",
    "leave_hazard",
]

Number = Union[float, np.ndarray]

#: Every value ``info["leave_reason"]`` can take on a leaving step.
LEAVE_REASONS = ("repeat", "low_rating", "redundant", "bored")

_LN2 = math.log(2.0)


def _pos(x: Number) -> Number:
    """max(x, 0) for floats and arrays."""
    if isinstance(x, np.ndarray):
        return np.maximum(x, 0.0)
    return x if x > 0.0 else 0.0


def _clip01(x: Number) -> Number:
    if isinstance(x, np.ndarray):
        return np.clip(x, 0.0, 1.0)
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


@dataclass(frozen=True)
class UserTraits:
    """Per-user parameters of the satisfaction rule, one entry per world row.

    Attributes:
        tolerance: Exposure a user absorbs before satisfaction starts to fall (``tau_u``).
        patience: Divides the satisfaction loss from excess exposure; patient users fall slower (``pi_u``).
        recovery: How much a fresh, well-rated item restores satisfaction (``rho_u``).
    """

    tolerance: np.ndarray
    patience: np.ndarray
    recovery: np.ndarray

    def __len__(self) -> int:
        return int(self.tolerance.shape[0])


def sample_user_traits(
    n_users: int,
    rng: np.random.Generator,
    tolerance: tuple[float, float] = (0.6, 1.4),
    patience: tuple[float, float] = (1.5, 4.0),
    recovery: tuple[float, float] = (0.1, 0.3),
) -> UserTraits:
    """Draw every user's traits uniformly from the given ranges with ``rng``."""
    for name, (lo, hi) in (("tolerance", tolerance), ("patience", patience), ("recovery", recovery)):
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(f"{name} range must be finite with 0 <= low <= high, got {(lo, hi)}.")
    if patience[0] <= 0:
        raise ValueError(f"patience range must be > 0 (it divides the loss), got {patience}.")
    return UserTraits(
        tolerance=rng.uniform(*tolerance, size=n_users),
        patience=rng.uniform(*patience, size=n_users),
        recovery=rng.uniform(*recovery, size=n_users),
    )


def similarity(distance: Number, distance_threshold: float) -> Number:
    """Similarity ``2 ** -(d / d0) ** 2``: 1 for identical items, 1/2 at the threshold ``d0``, -> 0 far away."""
    z = distance / distance_threshold
    if isinstance(z, np.ndarray):
        return np.exp(-_LN2 * z * z)
    return math.exp(-_LN2 * z * z)


def redundancy(window_distances: Union[Sequence[float], np.ndarray], distance_threshold: float) -> Number:
    """Redundancy of a new item: the sum of its similarities to the recent window.

    Args:
        window_distances: Distances from the new item to the last ``window`` shown items; for a batch, an
            array ``(n, window)`` with ``np.inf`` where a slot is empty.
        distance_threshold: The distance at which two items count as half-similar.
    """
    if isinstance(window_distances, np.ndarray):
        return similarity(window_distances, distance_threshold).sum(axis=-1)
    return sum(similarity(float(d), distance_threshold) for d in window_distances)


def satisfaction_step(
    satisfaction: Number,
    exposure: Number,
    redundancy_: Number,
    quality: Number,
    tolerance: Number,
    patience: Number,
    recovery: Number,
    exposure_decay: float,
) -> tuple[Number, Number]:
    """One transition of the satisfaction rule.

    ``E_t = lambda * E_{t-1} + r_t``  (exposure fades with time, grows with redundancy ``r_t``);
    ``s_t = clip(s_{t-1} + rho * max(0, 1 - r_t) * q_t * (1 - s_{t-1}) - max(0, E_t - tau) / pi, 0, 1)``
    where ``q_t`` is the item's rating rescaled to ``[0, 1]``: fresh, well-rated items restore satisfaction,
    exposure beyond the user's tolerance drains it.

    Returns:
        ``(satisfaction, exposure)`` after the step.
    """
    new_exposure = exposure_decay * exposure + redundancy_
    freshness = _pos(1.0 - redundancy_)
    gain = recovery * freshness * quality * (1.0 - satisfaction)
    loss = _pos(new_exposure - tolerance) / patience
    return _clip01(satisfaction + gain - loss), new_exposure


def leave_hazard(satisfaction: Number, floor: float, temperature: float) -> Number:
    """Probability of leaving at a given satisfaction (stochastic users): ``sigmoid((floor - s) / T)``."""
    z = (floor - satisfaction) / temperature
    if isinstance(z, np.ndarray):
        return 0.5 * (1.0 + np.tanh(0.5 * z))
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def billp_leave_reason(
    repeated: bool,
    rating: float,
    window_distances: Sequence[float],
    min_rating: float,
    distance_threshold: float,
) -> str | None:
    """The seed system's rule (BiLLP/ULRec, with the first-step rating bug fixed).

    The user leaves when the item was shown before in this session (``"repeat"``), when its rating is below
    ``min_rating`` (``"low_rating"``, checked at every step, the first included), or when it lies closer than
    ``distance_threshold`` to any of the last ``window`` shown items (``"redundant"``). Checked in that order.
    """
    if repeated:
        return "repeat"
    if rating < min_rating:
        return "low_rating"
    for d in window_distances:
        if d < distance_threshold:
            return "redundant"
    return None


def satisfaction_leave_reason(repeated: bool, rating: float, min_rating: float, leaves_bored: bool) -> str | None:
    """Leave decision of the satisfaction rule; ``leaves_bored`` comes from the floor or the hazard draw."""
    if repeated:
        return "repeat"
    if rating < min_rating:
        return "low_rating"
    if leaves_bored:
        return "bored"
    return None
