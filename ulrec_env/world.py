"""The world a simulated user lives in: a catalog, predicted ratings, item distances and user histories."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["World"]


def _as_history(h: Any, u: int, n_items: int, source: str) -> np.ndarray:
    arr = np.asarray(h)
    if arr.ndim != 1:
        raise ValueError(f"{source}: histories[{u}] must be a 1-D sequence of item ids, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{source}: histories[{u}] must hold integer item ids, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_items):
        raise ValueError(
            f"{source}: histories[{u}] has item id {int(arr.min() if arr.min() < 0 else arr.max())} "
            f"outside [0, {n_items}); ids are columns of `ratings`."
        )
    return arr


@dataclass(frozen=True, eq=False)
class World:
    """Everything the simulator knows about items and users; validated at construction.

    Args:
        name: A short name for tables and cache keys (``"synthetic"``, ``"ml-100k"``, ``"billp-steam-test"``).
        titles: One readable, distinct title per item; item ``i`` is column ``i`` of ``ratings``.
        genres: Per item, a tuple of genre names (may be empty).
        ratings: ``(n_users, n_items)`` predicted ratings, finite, inside ``rating_scale``.
        distance: ``(n_items, n_items)`` item-item distance, finite, non-negative, zero on the diagonal
            (smaller means more alike).
        histories: Per user, the item ids the user consumed before the session (oldest first).
        train_users: World rows whose sessions are used for training (rollouts).
        test_users: World rows held out for evaluation.
        rating_scale: ``(low, high)`` of the rating scale.
        popularity: Optional per-item interaction counts (used by the ``popular`` baseline); defaults to
            how often each item appears in the histories.
        env_defaults: Environment settings calibrated for this world (e.g. ``{"distance_threshold": 50.0}``);
            ``ULRecEnv`` uses them when the caller does not pass the setting.
        fit_report: Optional description of how ``ratings`` were obtained (e.g. a reward model's held-out RMSE).
        source: Where the world came from, for error messages.
        user_ids: Optional raw id (as in the source data) of each user row, to join results back to the data.
        item_ids: Optional raw id of each item column.
    """

    name: str
    titles: tuple[str, ...]
    genres: tuple[tuple[str, ...], ...]
    ratings: np.ndarray
    distance: np.ndarray
    histories: tuple[np.ndarray, ...]
    train_users: np.ndarray
    test_users: np.ndarray
    rating_scale: tuple[float, float] = (1.0, 5.0)
    popularity: np.ndarray | None = None
    env_defaults: Mapping[str, Any] = field(default_factory=dict)
    fit_report: Mapping[str, Any] | None = None
    source: str = "<memory>"
    user_ids: tuple[str, ...] | None = None
    item_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        src = self.source
        set_ = object.__setattr__
        titles = tuple(str(t) for t in self.titles)
        n_items = len(titles)
        if n_items < 2:
            raise ValueError(f"{src}: a world needs at least 2 items, got {n_items}.")
        if len(set(titles)) != n_items:
            seen: dict[str, int] = {}
            for i, t in enumerate(titles):
                if t in seen:
                    raise ValueError(
                        f"{src}: titles must be distinct; items {seen[t]} and {i} are both called {t!r}. "
                        "Add a year or an id to one of them."
                    )
                seen[t] = i
        if any(not t.strip() for t in titles):
            bad = next(i for i, t in enumerate(titles) if not t.strip())
            raise ValueError(f"{src}: item {bad} has an empty title.")
        set_(self, "titles", titles)

        if len(self.genres) != n_items:
            raise ValueError(f"{src}: genres has {len(self.genres)} entries for {n_items} titles; give one tuple per item.")
        set_(self, "genres", tuple(tuple(str(g) for g in gs) for gs in self.genres))

        ratings = np.asarray(self.ratings, dtype=np.float32)
        if ratings.ndim != 2 or ratings.shape[1] != n_items:
            raise ValueError(
                f"{src}: ratings must have shape (n_users, {n_items}) (one column per title), got {ratings.shape}."
            )
        if not np.isfinite(ratings).all():
            r, c = np.argwhere(~np.isfinite(ratings))[0]
            raise ValueError(f"{src}: ratings[{r}, {c}] is {ratings[r, c]}; ratings must be finite (fill or drop the user).")
        lo, hi = (float(x) for x in self.rating_scale)
        if not lo < hi:
            raise ValueError(f"{src}: rating_scale must be (low, high) with low < high, got {self.rating_scale}.")
        set_(self, "rating_scale", (lo, hi))
        tol = 1e-4 * (hi - lo)
        if ratings.min() < lo - tol or ratings.max() > hi + tol:
            raise ValueError(
                f"{src}: ratings span [{ratings.min():.3f}, {ratings.max():.3f}] outside rating_scale {self.rating_scale}; "
                "clip them or pass the right rating_scale."
            )
        ratings = np.clip(ratings, lo, hi)
        ratings.setflags(write=False)
        set_(self, "ratings", ratings)
        n_users = ratings.shape[0]

        dist = np.asarray(self.distance, dtype=np.float32)
        if dist.shape != (n_items, n_items):
            raise ValueError(f"{src}: distance must have shape ({n_items}, {n_items}), got {dist.shape}.")
        if not np.isfinite(dist).all():
            r, c = np.argwhere(~np.isfinite(dist))[0]
            raise ValueError(f"{src}: distance[{r}, {c}] is {dist[r, c]}; distances must be finite.")
        if dist.min() < 0:
            r, c = np.argwhere(dist < 0)[0]
            raise ValueError(f"{src}: distance[{r}, {c}] = {dist[r, c]} is negative; distances must be >= 0.")
        dist.setflags(write=False)
        set_(self, "distance", dist)

        if len(self.histories) != n_users:
            raise ValueError(f"{src}: histories has {len(self.histories)} entries for {n_users} users (rows of ratings).")
        hist = tuple(_as_history(h, u, n_items, src) for u, h in enumerate(self.histories))
        for h in hist:
            h.setflags(write=False)
        set_(self, "histories", hist)

        for name in ("train_users", "test_users"):
            users = np.asarray(getattr(self, name))
            if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
                raise ValueError(f"{src}: {name} must be a 1-D array of integer user rows, got {users.dtype} {users.shape}.")
            users = users.astype(np.int64)
            if users.size and (users.min() < 0 or users.max() >= n_users):
                raise ValueError(f"{src}: {name} has user {int(users.max())} outside [0, {n_users}).")
            users.setflags(write=False)
            set_(self, name, users)
        if self.train_users.size + self.test_users.size == 0:
            raise ValueError(f"{src}: train_users and test_users are both empty; assign users to a split.")

        if self.popularity is None:
            pop = np.bincount(np.concatenate(hist) if hist else np.zeros(0, np.int64), minlength=n_items)
        else:
            pop = np.asarray(self.popularity, dtype=np.float64)
            if pop.shape != (n_items,):
                raise ValueError(f"{src}: popularity must have shape ({n_items},), got {pop.shape}.")
        pop = pop.astype(np.float64)
        pop.setflags(write=False)
        set_(self, "popularity", pop)
        set_(self, "env_defaults", dict(self.env_defaults))
        for name, n in (("user_ids", n_users), ("item_ids", n_items)):
            ids = getattr(self, name)
            if ids is None:
                continue
            ids = tuple(str(x) for x in ids)
            if len(ids) != n:
                raise ValueError(f"{src}: {name} has {len(ids)} entries for {n} {name[:4]}s; give one raw id each.")
            if len(set(ids)) != n:
                raise ValueError(f"{src}: {name} repeats an id; raw ids must be distinct.")
            set_(self, name, ids)

    # ------------------------------------------------------------------ views
    @property
    def n_items(self) -> int:
        return len(self.titles)

    @property
    def n_users(self) -> int:
        return int(self.ratings.shape[0])

    @property
    def max_history(self) -> int:
        """Length of the longest user history (the observation pads histories to this size)."""
        return max((len(h) for h in self.histories), default=0)

    @property
    def genre_names(self) -> tuple[str, ...]:
        """All genres that occur, sorted."""
        return tuple(sorted({g for gs in self.genres for g in gs}))

    def users(self, split: str) -> np.ndarray:
        """User rows of ``split`` (``"train"``, ``"test"`` or ``"all"``)."""
        if split == "train":
            return self.train_users
        if split == "test":
            return self.test_users
        if split == "all":
            return np.arange(self.n_users, dtype=np.int64)
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")

    def item_id(self, title: str) -> int:
        """The item id of an exact title; ``KeyError`` names the title when it is not in the catalog."""
        index = self.__dict__.get("_title_index")
        if index is None:
            index = {t: i for i, t in enumerate(self.titles)}
            object.__setattr__(self, "_title_index", index)
        try:
            return index[title]
        except KeyError:
            raise KeyError(f"{title!r} is not a title of world {self.name!r}") from None

    def fingerprint(self) -> str:
        """A short content hash: two worlds with the same fingerprint hold the same catalog and ratings."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.titles).encode())
        h.update(self.ratings.tobytes())
        h.update(self.distance.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"World {self.name!r}: {self.n_items} items, {len(self.genre_names)} genres, {self.n_users} users "
            f"({self.train_users.size} train / {self.test_users.size} test), ratings {self.rating_scale}"
        )

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    def subset_users(self, users: Sequence[int]) -> np.ndarray:
        """Validate a list of user rows against this world; returns them as an int64 array."""
        arr = np.asarray(users)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"users must be a 1-D list of integer rows, got {users!r}.")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_users):
            bad = int(arr[(arr < 0) | (arr >= self.n_users)][0])
            raise ValueError(f"user {bad} is not a row of world {self.name!r} (valid: 0..{self.n_users - 1}).")
        return arr.astype(np.int64)
