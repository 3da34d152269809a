"""World validation and the embedded synthetic default."""

from __future__ import annotations

import numpy as np
import pytest

from ulrec_env import World
from ulrec_env.worlds import synthetic
from tests.conftest import make_tiny_world


def _kwargs(**over):
    w = make_tiny_world()
    kw = dict(name="t", titles=w.titles, genres=w.genres, ratings=np.array(w.ratings), distance=np.array(w.distance),
              histories=w.histories, train_users=w.train_users, test_users=w.test_users)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "over, match",
    [
        ({"ratings": np.ones((3, 5))}, "ratings must have shape \\(n_users, 6\\)"),
        ({"ratings": np.where(np.eye(3, 6) > 0, np.nan, 3.0)}, "ratings\\[0, 0\\] is nan"),
        ({"ratings": np.full((3, 6), 7.0)}, "outside rating_scale"),
        ({"distance": np.ones((6, 5))}, "distance must have shape \\(6, 6\\)"),
        ({"distance": -np.ones((6, 6))}, "negative"),
        ({"titles": ("a", "b", "c", "d", "e", "a")}, "items 0 and 5 are both called 'a'"),
        ({"genres": (("x",),)}, "genres has 1 entries for 6 titles"),
        ({"histories": (np.array([0, 9]),) * 3}, "histories\\[0\\] has item id 9"),
        ({"histories": (np.array([0.5]),) * 3}, "integer item ids"),
        ({"histories": (np.array([0]),) * 2}, "histories has 2 entries for 3 users"),
        ({"test_users": np.array([7])}, "test_users has user 7"),
        ({"train_users": np.array([], int), "test_users": np.array([], int)}, "both empty"),
    ],
)
def test_bad_worlds_are_named(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        World(**_kwargs(**over))


def test_world_is_read_only_and_looks_up_titles():
    w = World(**_kwargs())
    with pytest.raises(ValueError):
        w.ratings[0, 0] = 1.0
    assert w.item_id("Item 3") == 3
    with pytest.raises(KeyError, match="'Nope' is not a title"):
        w.item_id("Nope")
    assert w.users("all").tolist() == [0, 1, 2]


def test_synthetic_world_shape_and_determinism(default_world):
    w = default_world
    assert 1000 <= w.n_items <= 2000 and len(w.genre_names) == 18
    assert 900 <= w.n_users <= 1100
    assert len(set(w.titles)) == w.n_items
    assert all(15 <= len(h) <= 20 for h in w.histories)
    assert w.test_users.size == pytest.approx(0.2 * w.n_users, abs=1)
    assert not set(w.test_users.tolist()) & set(w.train_users.tolist())
    other = synthetic(seed=1, n_items=300, n_users=50)
    same = synthetic(seed=1, n_items=300, n_users=50)
    assert other is same  # cached
    from ulrec_env.worlds.synthetic import _generate

    fresh = _generate(seed=1, n_items=300, n_users=50, history_len=(15, 20), test_fraction=0.2, second_genre_p=0.3,
                      favourite_genres=(2, 4), disliked_genres=(3, 6))
    assert fresh.fingerprint() == other.fingerprint() and fresh.titles == other.titles
    assert synthetic(seed=2, n_items=300, n_users=50).fingerprint() != other.fingerprint()
    # Histories hold items the user likes.
    liked = np.mean([w.ratings[u, h].mean() for u, h in enumerate(w.histories)])
    assert liked > w.ratings.mean() + 0.8


@pytest.mark.parametrize("kw, match", [({"n_items": 1}, "n_items"), ({"test_fraction": 1.0}, "test_fraction"),
                                       ({"history_len": (5, 3)}, "history_len"), ({"seed": 1.5}, "seed")])
def test_synthetic_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        synthetic(**kw)
