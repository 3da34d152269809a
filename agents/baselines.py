"""Non-LLM recommenders: random, popular, greedy (the short-term recommender), and MMR."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from agents.policy import Policy
from ulrec_env.user_model import similarity

MMR_PENALTY = 0.5

__all__ = [
    "MMR_PENALTY", "RandomPolicy", "PopularPolicy", "GreedyPolicy", "MMRPolicy", "GenreCyclePolicy",
    "recent_history", "shown_mask", "title_words", "window_items",
]


def shown_mask(recommended: np.ndarray, n_items: int) -> np.ndarray:
    """Boolean ``(n, n_items)``: which items each session has already shown (from ``obs["recommended"]``)."""
    rec = np.asarray(recommended)
    mask = np.zeros((rec.shape[0], n_items), dtype=bool)
    rows, cols = np.nonzero(rec >= 0)
    mask[rows, rec[rows, cols]] = True
    return mask


def window_items(recommended: np.ndarray, steps: np.ndarray, window: int) -> np.ndarray:
    """The last ``window`` shown items per session, ``-1`` where the session is shorter."""
    rec = np.asarray(recommended)
    n, slots = rec.shape
    filled = np.minimum(np.asarray(steps).reshape(-1), slots)
    offsets = np.arange(-window, 0)
    idx = filled[:, None] + offsets[None, :]
    out = np.where(idx >= 0, rec[np.arange(n)[:, None], np.clip(idx, 0, slots - 1)], -1)
    return out


def recent_history(history: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` most recent real entries of each ``obs["history"]`` row (``-1`` is padding)."""
    hist = np.asarray(history)
    valid = hist >= 0
    # Count real entries from the right: the newest real entry is 1, the one before it 2, ...
    from_end = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]
    return valid & (from_end <= k)


_STOPWORDS = frozenset({"the", "and", "for", "with", "from", "les", "las", "der", "die", "das"})


def title_words(title: str) -> frozenset[str]:
    """The case-folded alphabetic words of a title with three letters or more, minus a few stopwords."""
    words = ("".join(ch for ch in w if ch.isalpha()).casefold() for w in title.split())
    return frozenset(w for w in words if len(w) >= 3 and w not in _STOPWORDS)


class RandomPolicy(Policy):
    """Uniformly random among the items this session has not shown yet (seeded)."""

    name = "random"

    def __init__(self, seed: int | None = 0) -> None:
        super().__init__()
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Reseed (``None``: back to the constructor's seed), as every policy's ``reset`` does."""
        self._rng = np.random.default_rng(self._seed if seed is None else seed)

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        seen = shown_mask(obs["recommended"], self.world.n_items)
        # Random keys, seen items pushed to the end: one vectorized draw per batch.
        keys = self._rng.random(seen.shape)
        keys[seen] = 2.0
        return keys.argmin(axis=1)


class PopularPolicy(Policy):
    """The world's most-consumed items, in order, minus those already shown."""

    name = "popular"

    def _on_bind(self) -> None:
        self._score = np.asarray(self.world.popularity, dtype=np.float64)

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        seen = shown_mask(obs["recommended"], self.world.n_items)
        score = np.broadcast_to(self._score, seen.shape).copy()
        score[seen] = -np.inf
        return score.argmax(axis=1)


class GreedyPolicy(Policy):
    """The short-term recommender: the highest predicted rating the user has not been shown.

    It peeks at the world's ratings. Because a user's best-rated items are alike, it is what builds the
    echo chamber.
    """

    name = "greedy"
    peeks = True

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        users = np.asarray(obs["user"]).reshape(-1)
        score = self.world.ratings[users].astype(np.float64)
        score[shown_mask(obs["recommended"], self.world.n_items)] = -np.inf
        return score.argmax(axis=1)


class MMRPolicy(Policy):
    """Maximal marginal relevance: rating minus a penalty for similarity to the recent window.

    ``score(i) = rating(u, i) - penalty * (high - low) * max_h sim(i, h)`` over the last ``window`` shown
    items ``h``, with the environment's similarity ``2 ** -(d / d0) ** 2``. Peeks at ratings and distances.

    Args:
        penalty: Weight of the redundancy term (0 gives greedy).
        window: How many recent items to compare with; ``None`` takes the environment's.
        distance_threshold: ``d0``; ``None`` takes the environment's setting (or the world's default).
    """

    name = "mmr"
    peeks = True

    def __init__(self, penalty: float = MMR_PENALTY, window: int | None = None, distance_threshold: float | None = None) -> None:
        super().__init__()
        if not penalty >= 0:
            raise ValueError(f"`penalty` must be >= 0, got {penalty}.")
        self.penalty = float(penalty)
        self._window_arg = window
        self._threshold_arg = distance_threshold

    def _on_bind(self) -> None:
        cfg = getattr(self.env, "config", None)
        defaults = self.world.env_defaults
        self.window = self._window_arg or (cfg.window if cfg else int(defaults.get("window", 4)))
        self.distance_threshold = self._threshold_arg or (
            cfg.distance_threshold if cfg else float(defaults.get("distance_threshold", 1.0))
        )

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        users = np.asarray(obs["user"]).reshape(-1)
        lo, hi = self.world.rating_scale
        score = self.world.ratings[users].astype(np.float64)
        win = window_items(obs["recommended"], obs["step"], self.window)
        empty = win < 0
        # (n, n_items, window) distances from every item to each recent item.
        d = self.world.distance[:, np.where(empty, 0, win)].transpose(1, 0, 2).astype(np.float64)
        sim = similarity(d, self.distance_threshold)
        sim[np.broadcast_to(empty[:, None, :], sim.shape)] = 0.0
        score -= self.penalty * (hi - lo) * sim.max(axis=2)
        score[shown_mask(obs["recommended"], self.world.n_items)] = -np.inf
        return score.argmax(axis=1)


class GenreCyclePolicy(Policy):
    """A rule that reads only what the LLM's prompt shows: genres of the history and of the recent session.

    Among the items not shown yet it picks, at random, one whose genres all occur in the user's last
    ``max_history`` history items and none of which occurs among the last ``window`` recommended items. If no
    item qualifies it drops the history condition, then the window condition. It never looks at ratings or
    distances (``peeks`` is False), so every decision is a function of the prompt's text plus a coin: the kind of
    teacher whose sessions an LLM reading the same prompt can learn to imitate (``ulrec loop --teacher
    genre-cycle``). It also measures how far the prompt's information alone can take a recommender.

    With ``copy_words`` it prefers, among the qualifying items, those whose title shares a word (three letters or
    more, case-folded) with a read history title: a small LLM tends to copy words from its prompt, so this
    variant's choices are the closest to what the untuned model already does (``genre-cycle-words``).

    With ``avoid_rated_below`` it also reads the ratings the prompt shows: an item sharing a genre with one of the
    last ``max_session`` shown items rated below that value (as the prompt writes it, to one decimal) drops to the
    lowest tier of items not shown yet. Ratings are in the prompt, so ``peeks`` stays False.

    With ``spread`` it prefers, within a tier, the items that share a genre with the fewest of the last ``spread``
    recommended items (at random among equals): a soft wider window, which spreads the genres of a session over the
    environment's redundancy window where a hard one would run out of liked genres (``genre-cycle-words:spread=4``).

    Args:
        max_history: How many of the most recent history items it reads (set it to the prompt's ``max_history``).
        window: How many of the most recent recommended items' genres it avoids (at most the prompt's
            ``max_session``, so that it reads nothing the prompt hides).
        seed: Seed of the random choice among qualifying items.
        copy_words: Prefer titles that share a word with the read history.
        avoid_rated_below: Avoid the genres of recent shown items rated below this (None: ratings unread).
        max_session: How many of the most recent shown items' ratings it reads (None: all; set it to the prompt's
            ``max_session``).
        spread: How many of the most recent recommended items' genres it prefers to avoid within a tier (None: no
            preference; at most ``max_session`` where that is set, so that it reads nothing the prompt hides).
    """

    name = "genre-cycle"

    def __init__(self, max_history: int = 15, window: int = 2, seed: int | None = 0, copy_words: bool = False,
                 avoid_rated_below: float | None = None, max_session: int | None = None,
                 spread: int | None = None) -> None:
        super().__init__()
        for arg, value in (("max_history", max_history), ("window", window), ("max_session", max_session),
                           ("spread", spread)):
            if value is None and arg in ("max_session", "spread"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{arg}` must be an integer >= 0, got {value!r}.")
        if avoid_rated_below is not None and (isinstance(avoid_rated_below, bool)
                                              or not isinstance(avoid_rated_below, (int, float, np.number))
                                              or not np.isfinite(avoid_rated_below)):
            raise ValueError(f"`avoid_rated_below` must be a finite number (a rating) or None, "
                             f"got {avoid_rated_below!r}.")
        self.max_history = int(max_history)
        self.window = int(window)
        self.copy_words = bool(copy_words)
        self.avoid_rated_below = None if avoid_rated_below is None else float(avoid_rated_below)
        self.max_session = None if max_session is None else int(max_session)
        if spread is not None and self.max_session is not None and spread > self.max_session:
            raise ValueError(f"`spread` ({spread}) must be at most `max_session` ({self.max_session}), the session "
                             "steps the prompt shows; lower `spread`.")
        self.spread = None if spread is None else int(spread)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Reseed (``None``: back to the constructor's seed), as every policy's ``reset`` does."""
        self._rng = np.random.default_rng(self._seed if seed is None else seed)

    def _on_bind(self) -> None:
        names = {g: k for k, g in enumerate(self.world.genre_names)}
        member = np.zeros((self.world.n_items, max(len(names), 1)), dtype=np.float64)
        for i, gs in enumerate(self.world.genres):
            for g in gs:
                member[i, names[g]] = 1.0
        self._member = member  # (n_items, n_genres)
        self._has_genre = member.sum(axis=1) > 0
        if self.copy_words:
            from scipy import sparse

            words = [title_words(t) for t in self.world.titles]
            vocab = {w: k for k, w in enumerate(sorted(set().union(*words)))}
            rows = [i for i, ws in enumerate(words) for _ in ws]
            cols = [vocab[w] for ws in words for w in ws]
            self._words = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(words), max(len(vocab), 1)))

    def _check_bound(self) -> None:
        if self.world is None:
            raise RuntimeError(f"policy {self.name!r} is not bound to a world; call policy.bind(world) first.")

    def tiers(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """How much the rule wants each item, ``(n, n_items)`` int8: 2 for an item whose genres are all in the read
        history and none in the window ("fresh and liked"), 1 for one with no genre in the window ("fresh"), 0 for
        any other item not shown yet, -1 for items already shown; with ``copy_words``, 3 for a fresh and liked item
        whose title shares a word with a read history title; with ``avoid_rated_below``, 0 for any item not shown
        yet that shares a genre with a read shown item rated below it. The rule picks at random among its highest
        tier (with ``spread``, among the items of that tier with the fewest :meth:`overlaps`), so
        ``tiers(obs)[i, a]`` against ``tiers(obs)[i].max()`` says whether another policy's action ``a`` is one the
        rule without ``spread`` could have taken (``benchmarks/teacher_tiers.py``)."""
        from scipy import sparse

        self._check_bound()

        def selector(items: np.ndarray, keep: np.ndarray) -> "sparse.csr_matrix":
            # (n, n_items): 1 where a session's row reads an item (repeats add up; only > 0 matters below).
            rows, cols = np.nonzero(keep)
            return sparse.csr_matrix((np.ones(rows.size), (rows, items[rows, cols])), shape=(items.shape[0], n_items))

        n_items, member = self.world.n_items, self._member
        hist = np.asarray(obs["history"])
        read = selector(hist, recent_history(hist, self.max_history))
        win = window_items(obs["recommended"], obs["step"], self.window)
        # (n, n_genres): genres present in the read history / in the recent window.
        hist_genres, win_genres = read @ member, selector(win, win >= 0) @ member
        fresh = (win_genres > 0).astype(np.float64) @ member.T == 0  # (n, n_items): no genre in the window
        # Every genre occurs in the history (an item without genres is not known to be liked).
        liked = ((hist_genres == 0).astype(np.float64) @ member.T == 0) & self._has_genre
        tier = fresh.astype(np.int8) + (fresh & liked)
        if self.copy_words:
            # (n, n_items): shares a word with a read history title; a third tier above "fresh and liked".
            shared = ((read @ self._words) @ self._words.T).toarray() > 0
            tier += fresh & liked & shared
        if self.avoid_rated_below is not None:
            # (n, n_items): shares a genre with a read shown item rated below the threshold; lowest unshown tier.
            seen = np.shape(obs["recommended"])[1] if self.max_session is None else self.max_session
            recent = window_items(obs["recommended"], obs["step"], seen)
            # The same slots' ratings; where the session is shorter, `recent` is -1 whatever the rating reads.
            rated = np.round(window_items(np.asarray(obs["rewards"], dtype=np.float64), obs["step"], seen), 1)
            low = np.where(rated < self.avoid_rated_below, recent, -1)
            low_genres = selector(low, low >= 0) @ member
            tier[(low_genres > 0).astype(np.float64) @ member.T > 0] = 0
        tier[shown_mask(obs["recommended"], n_items)] = -1
        return tier

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        # Tiers as score offsets, random within a tier; shown items never. With `spread`, fewer of the last `spread`
        # items sharing a genre first within a tier: the offset stays below 1.
        tier = self.tiers(obs)
        within = self._rng.random(tier.shape)
        if self.spread:
            within = (self.spread - self.overlaps(obs) + within) / (self.spread + 1)
        score = within + tier
        score[tier < 0] = -np.inf
        return score.argmax(axis=1)

    def overlaps(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(n, n_items)``: how many of the last ``spread`` recommended items share a genre with each item (0
        without ``spread``)."""
        self._check_bound()
        win = window_items(obs["recommended"], obs["step"], self.spread or 0)
        count = np.zeros((win.shape[0], self.world.n_items))
        for slot in win.T:  # one recommended item per session at a time
            genres = np.where((slot >= 0)[:, None], self._member[np.maximum(slot, 0)], 0.0)
            count += genres @ self._member.T > 0
        return count
