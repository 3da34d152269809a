"""Typed, validated settings of the ULRec environment."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["EnvConfig", "LEAVE_RULES"]

LEAVE_RULES = ("satisfaction", "billp")


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a (low, high) pair of numbers, got {value!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"`{name}` must satisfy 0 <= low <= high (finite), got {value!r}.")
    return (lo, hi)


@dataclass(frozen=True)
class EnvConfig:
    """Every setting of ``ULRec-v0``; the keyword arguments of ``gym.make("ULRec-v0", ...)`` map onto it.

    Values not given fall back to the world's calibrated ``env_defaults`` and then to the defaults below.
    """

    leave_rule: str = field(default="satisfaction", metadata={"help": "'satisfaction' (default) or 'billp' (the seed's rule).", "choices": LEAVE_RULES})
    window: int = field(default=4, metadata={"help": "How many recent recommendations count for redundancy."})
    distance_threshold: float = field(
        default=1.0,
        metadata={"help": "billp: leave when closer than this to a window item; satisfaction: distance of half similarity."},
    )
    min_rating: float = field(default=2.0, metadata={"help": "Leave at once on a rating below this (-inf disables)."})
    dislike_quantile: float | None = field(
        default=None,
        metadata={"help": "Per-user dislike threshold: leave at once on an item rated below this quantile of the "
                          "user's own ratings of the catalogue (at least min_rating); None: min_rating alone.",
                  "metavar": "Q"},
    )
    leave_penalty: float = field(default=0.0, metadata={"help": "Reward of the step on which the user leaves."})
    stochastic: bool = field(default=False, metadata={"help": "satisfaction: leave through a smooth hazard instead of a floor."})
    satisfaction_floor: float = field(default=0.3, metadata={"help": "satisfaction: leave below this (or hazard 1/2 here)."})
    hazard_temperature: float = field(default=0.05, metadata={"help": "satisfaction, stochastic: width of the hazard sigmoid."})
    exposure_decay: float = field(default=0.5, metadata={"help": "satisfaction: fraction of exposure kept from one step to the next."})
    tolerance: tuple[float, float] = field(default=(0.6, 1.4), metadata={"help": "Range of per-user exposure tolerance.", "metavar": "LOW,HIGH"})
    patience: tuple[float, float] = field(default=(1.5, 4.0), metadata={"help": "Range of per-user patience (divides the loss).", "metavar": "LOW,HIGH"})
    recovery: tuple[float, float] = field(default=(0.1, 0.3), metadata={"help": "Range of per-user recovery rate.", "metavar": "LOW,HIGH"})
    trait_seed: int = field(default=0, metadata={"help": "Seed of the per-user traits (fixed per world row, not per episode)."})
    split: str = field(default="test", metadata={"help": "Users drawn at reset: 'train', 'test' or 'all'."})
    recommended_slots: int = field(default=100, metadata={"help": "Length of obs['recommended'] (most recent items)."})

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.leave_rule not in LEAVE_RULES:
            raise ValueError(f"`leave_rule` must be one of {LEAVE_RULES}, got {self.leave_rule!r}.")
        for name in ("window", "recommended_slots", "trait_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int,)) and not (hasattr(v, "__index__")):
                raise TypeError(f"`{name}` must be an integer, got {v!r} ({type(v).__name__}).")
            set_(self, name, int(v))
        if self.window < 1:
            raise ValueError(f"`window` must be >= 1 (number of recent items compared), got {self.window}.")
        if self.recommended_slots < 1:
            raise ValueError(f"`recommended_slots` must be >= 1, got {self.recommended_slots}.")
        for name in ("distance_threshold", "min_rating", "leave_penalty", "satisfaction_floor", "hazard_temperature", "exposure_decay"):
            v = getattr(self, name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"`{name}` must be a number, got {getattr(self, name)!r}.") from None
            if math.isnan(v):
                raise ValueError(f"`{name}` is NaN; pass a number.")
            set_(self, name, v)
        if not (math.isfinite(self.distance_threshold) and self.distance_threshold > 0):
            raise ValueError(f"`distance_threshold` must be a finite number > 0, got {self.distance_threshold}.")
        if self.min_rating == math.inf:
            raise ValueError("`min_rating` = inf would end every session; use -inf to disable the rule.")
        if self.dislike_quantile is not None:
            q = self.dislike_quantile
            if isinstance(q, bool) or not isinstance(q, (int, float)) and not hasattr(q, "__float__"):
                raise TypeError(f"`dislike_quantile` must be a number in [0, 1) or None, got {q!r}.")
            q = float(q)
            if not 0.0 <= q < 1.0:
                raise ValueError(f"`dislike_quantile` must be in [0, 1) (a quantile of each user's ratings) or None "
                                 f"to use min_rating alone, got {q}.")
            set_(self, "dislike_quantile", q)
        if not math.isfinite(self.leave_penalty):
            raise ValueError(f"`leave_penalty` must be finite, got {self.leave_penalty}.")
        if not 0.0 <= self.satisfaction_floor < 1.0:
            raise ValueError(f"`satisfaction_floor` must be in [0, 1), got {self.satisfaction_floor}.")
        if not (math.isfinite(self.hazard_temperature) and self.hazard_temperature > 0):
            raise ValueError(f"`hazard_temperature` must be > 0, got {self.hazard_temperature}.")
        if not 0.0 <= self.exposure_decay < 1.0:
            raise ValueError(f"`exposure_decay` must be in [0, 1), got {self.exposure_decay}.")
        for name in ("tolerance", "patience", "recovery"):
            set_(self, name, _range(name, getattr(self, name)))
        if self.patience[0] <= 0:
            raise ValueError(f"`patience` must be > 0 (it divides the loss), got {self.patience}.")
        if self.split not in ("train", "test", "all"):
            raise ValueError(f"`split` must be 'train', 'test' or 'all', got {self.split!r}.")
        if not isinstance(self.stochastic, (bool,)) and not hasattr(self.stochastic, "__bool__"):
            raise TypeError(f"`stochastic` must be a bool, got {self.stochastic!r}.")
        set_(self, "stochastic", bool(self.stochastic))

    @classmethod
    def resolve(cls, world_defaults: Mapping[str, Any] | None = None, **kwargs: Any) -> "EnvConfig":
        """Build a config from keyword arguments over a world's calibrated defaults.

        Raises:
            TypeError: for a keyword that is not a setting (the message lists the valid ones).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown ULRec-v0 setting(s) {unknown}; valid settings: {sorted(names)}.")
        merged = {k: v for k, v in (world_defaults or {}).items() if k in names}
        merged.update(kwargs)
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
