"""The simulated user's rules, as pure functions.

Every function here works on Python floats (one user, used by :class:`ulrec_env.ULRecEnv`) and on numpy
arrays of users (used by :class:`ulrec_env.ULRecVectorEnv` and the oracle's model in ``agents.oracle``), so
the single environment, the batched one and the planner share one definition of the dynamics. Nothing here
draws random numbers except :func:`sample_user_traits`, which takes an explicit generator.

The user state of one session is ``(satisfaction, exposure, shown items)``; a user's traits are fixed per
world row (:class:`UserPopulation`). RecSim's split of a user into state, choice and transition is kept, but
as functions:

* :func:`similarity` turns an item-item distance into a similarity in ``[0, 1]``;
* :func:`redundancy` sums the similarity of a new item to the recent window;
* :func:`satisfaction_step` is the transition of ``(satisfaction, exposure)``;
* :func:`leave_decision` is the leave decision of both rules (their shared precedence), with the rules' own
  tests :func:`too_close` (billp) and the satisfaction floor or :func:`leave_hazard` (satisfaction);
  :func:`billp_leave_reason` and :func:`satisfaction_leave_reason` are its one-user forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    from ulrec_env.config import EnvConfig
    from ulrec_env.world import World

__all__ = [
    "LEAVE_REASONS",
    "REASON_OF_CODE",
    "STAYS",
    "UserTraits",
    "UserPopulation",
    "sample_user_traits",
    "dislike_thresholds",
    "is_bored",
    "similarity",
    "redundancy",
    "satisfaction_step",
    "passes_first_checks",
    "too_close",
    "leave_decision",
    "billp_leave_reason",
    "satisfaction_leave_reason",
    "leave_hazard",
]

Number = Union[float, np.ndarray]
#: A truth value per user: a Python ``bool`` for one user, a numpy bool array for many.
Flag = Union[bool, np.ndarray]
#: A leave code per user (see :func:`leave_decision`): an ``int`` for one user, an int64 array for many.
Code = Union[int, np.ndarray]

#: Every value ``info["leave_reason"]`` can take on a leaving step.
LEAVE_REASONS = ("repeat", "low_rating", "redundant", "bored")
#: The reason of each code :func:`leave_decision` returns: ``None`` (the user stays), then ``LEAVE_REASONS``.
REASON_OF_CODE = (None, *LEAVE_REASONS)
#: The code of a user who stays.
STAYS = 0
_REPEAT = REASON_OF_CODE.index("repeat")
_LOW_RATING = REASON_OF_CODE.index("low_rating")
# The reason each leave rule's own test gives.
_OWN_CODE = {"billp": REASON_OF_CODE.index("redundant"), "satisfaction": REASON_OF_CODE.index("bored")}

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


@dataclass(frozen=True)
class UserPopulation:
    """The simulated users of a world: every row's traits, drawn once from a config's ranges and ``trait_seed``,
    and every row's dislike threshold.

    The single environment, the vector environment and the oracle's model take their users from here, so one
    world and one config give the same users everywhere (and the same user in every session).

    Attributes:
        traits: One entry per world row.
        min_ratings: Per world row, the rating below which the user leaves at once (``"low_rating"``):
            ``config.min_rating``, or with ``config.dislike_quantile`` set, the larger of ``min_rating`` and
            that quantile of the user's own ratings of the catalogue (:func:`dislike_thresholds`).
    """

    traits: UserTraits
    min_ratings: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.traits, UserTraits):
            raise TypeError(f"`traits` must be a UserTraits, got {type(self.traits).__name__}; "
                            "build a population with UserPopulation.of(world, config).")
        m = np.asarray(self.min_ratings, dtype=np.float64)
        if m.shape != (len(self.traits),):
            raise ValueError(f"`min_ratings` must hold one threshold per user ({len(self.traits)}), got shape {m.shape}; "
                             "build a population with UserPopulation.of(world, config).")
        m.setflags(write=False)
        object.__setattr__(self, "min_ratings", m)

    @classmethod
    def of(cls, world: World, config: EnvConfig) -> UserPopulation:
        """The users of ``world`` under ``config``: traits drawn with ``default_rng(config.trait_seed)``."""
        traits = sample_user_traits(
            world.n_users, np.random.default_rng(config.trait_seed), config.tolerance, config.patience, config.recovery,
        )
        return cls(traits, dislike_thresholds(world.ratings, config.min_rating, config.dislike_quantile))

    def __len__(self) -> int:
        return len(self.traits)

    def traits_of(self, user: int) -> tuple[float, float, float]:
        """``(tolerance, patience, recovery)`` of world row ``user``, as Python floats."""
        t = self.traits
        return float(t.tolerance[user]), float(t.patience[user]), float(t.recovery[user])

    def min_rating_of(self, user: int) -> float:
        """The dislike threshold of world row ``user``, as a Python float."""
        return float(self.min_ratings[user])


def dislike_thresholds(ratings: np.ndarray, min_rating: float, dislike_quantile: float | None) -> np.ndarray:
    """Each user's dislike threshold: ``min_rating``, raised to the ``dislike_quantile`` of the user's row.

    A fixed threshold fits a world whose ratings spread over the scale; in a ratings log where most users rate
    most items 3 or more (MovieLens), a threshold of 2 almost never fires and random items make good sessions.
    A quantile makes each user reject the same share of the catalogue, whatever their own rating habits.

    Args:
        ratings: ``(n_users, n_items)`` ratings (the world's).
        min_rating: The absolute floor (``-inf``: none).
        dislike_quantile: In ``[0, 1)``, or ``None`` for ``min_rating`` alone.

    Returns:
        ``float64`` thresholds, one per user (row of ``ratings``).
    """
    n_users = int(np.shape(ratings)[0])
    if dislike_quantile is None:
        return np.full(n_users, float(min_rating))
    q = np.quantile(np.asarray(ratings, dtype=np.float64), float(dislike_quantile), axis=1)
    return np.maximum(q, float(min_rating))


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


def is_bored(satisfaction: Number, floor: float, hazard_temperature: float | None = None,
             uniform: Number | None = None) -> Flag:
    """The satisfaction rule's own test: deterministic users are bored below ``floor``; stochastic users (pass the
    ``uniform`` draw(s) in [0, 1) from the env's generator, and ``hazard_temperature``) when the draw falls below
    :func:`leave_hazard`. For one user or arrays of users."""
    if uniform is None:
        return satisfaction < floor
    if hazard_temperature is None:
        raise ValueError("`hazard_temperature` is needed with a `uniform` draw (stochastic users).")
    return uniform < leave_hazard(satisfaction, floor, hazard_temperature)


def passes_first_checks(repeated: Flag, rating: Number, min_rating: float) -> Flag:
    """Whether an item passes the checks both leave rules make first: not shown before, rated at least ``min_rating``.

    Only such items move the satisfaction rule's state. ``x ^ True`` is ``not x`` for Python bools and numpy
    bool arrays alike, so one expression serves one user and many.
    """
    return (repeated | (rating < min_rating)) ^ True


def too_close(window_distances: Union[Sequence[float], np.ndarray], distance_threshold: float) -> Flag:
    """The billp rule's own test: the item lies closer than ``distance_threshold`` to an item of the window.

    Args:
        window_distances: Distances from the item to the last ``window`` shown items; for many users (or
            items), an array ``(..., window)`` with ``np.inf`` where a slot is empty.
        distance_threshold: The billp rule's distance.
    """
    if isinstance(window_distances, np.ndarray):
        return (window_distances < distance_threshold).any(axis=-1)
    return any(d < distance_threshold for d in window_distances)


def leave_decision(repeated: Flag, rating: Number, min_rating: float, fed_up: Flag, leave_rule: str) -> Code:
    """Whether and why users leave: the one precedence of both leave rules, for one user or arrays of users.

    The checks, in this order: the item was shown before in this session (``"repeat"``); its rating is below
    ``min_rating`` (``"low_rating"``, also on the first step); the rule's own test, ``fed_up``: for
    ``"billp"`` the item is too close to the window (:func:`too_close`, reason ``"redundant"``), for
    ``"satisfaction"`` the user is bored (satisfaction below the floor, or the :func:`leave_hazard` draw;
    reason ``"bored"``).

    Args:
        repeated: Whether the item was shown before in this session.
        rating: The user's rating of the item.
        min_rating: Ratings below this make the user leave.
        fed_up: The rule's own test, as above (arrays broadcast against ``repeated`` and ``rating``).
        leave_rule: ``"billp"`` or ``"satisfaction"``.

    Returns:
        :data:`STAYS` (0) where the user stays, else the code of the first reason that holds;
        ``REASON_OF_CODE[code]`` is the reason. An ``int`` for Python scalars, an int64 array for arrays.
    """
    try:
        own = _OWN_CODE[leave_rule]
    except KeyError:
        raise ValueError(f"`leave_rule` must be one of {sorted(_OWN_CODE)}, got {leave_rule!r}.") from None
    low = rating < min_rating
    # Each reason counts only where no earlier one holds; the sum picks the first (``^ True`` is ``not``).
    return (repeated * _REPEAT + (low & (repeated ^ True)) * _LOW_RATING
            + (fed_up & passes_first_checks(repeated, rating, min_rating)) * own)


def billp_leave_reason(
    repeated: bool,
    rating: float,
    window_distances: Sequence[float],
    min_rating: float,
    distance_threshold: float,
) -> str | None:
    """The seed system's rule (BiLLP/ULRec, with the first-step rating bug fixed), for one user.

    The user leaves when the item was shown before in this session (``"repeat"``), when its rating is below
    ``min_rating`` (``"low_rating"``, checked at every step, the first included), or when it lies closer than
    ``distance_threshold`` to any of the last ``window`` shown items (``"redundant"``). Checked in that order
    (:func:`leave_decision`).
    """
    fed_up = too_close(window_distances, distance_threshold)
    return REASON_OF_CODE[leave_decision(repeated, rating, min_rating, fed_up, "billp")]


def satisfaction_leave_reason(repeated: bool, rating: float, min_rating: float, leaves_bored: bool) -> str | None:
    """Leave decision of the satisfaction rule for one user (:func:`leave_decision`); ``leaves_bored`` comes
    from the floor or the hazard draw."""
    return REASON_OF_CODE[leave_decision(repeated, rating, min_rating, leaves_bored, "satisfaction")]
