"""from_ratings: parsing, histories without held-out ratings, user split, errors with line numbers, disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from ulrec_env import ULRecEnv, World
from ulrec_env.reward_model import split_ratings
from ulrec_env.worlds import from_ratings
from ulrec_env.worlds import ratings as ratings_mod

from .rating_fixtures import N_ITEMS, N_USERS, make_log, write_csv


@pytest.fixture()
def csv_files(tmp_path):
    return write_csv(tmp_path)


def test_world_from_csv(csv_files, tmp_path):
    r, i = csv_files
    w = from_ratings(r, i, cache=False)
    assert isinstance(w, World)
    assert (w.n_users, w.n_items) == (N_USERS, N_ITEMS)
    assert w.titles[0] == "Movie 1 (1981)"
    assert all(len(g) >= 1 for g in w.genres)
    assert w.rating_scale == (1.0, 5.0)
    assert w.ratings.min() >= 1.0 and w.ratings.max() <= 5.0
    # 80/20 user split, disjoint, covering everyone.
    assert w.test_users.size == 6 and w.train_users.size == 24
    assert np.intersect1d(w.train_users, w.test_users).size == 0
    assert np.union1d(w.train_users, w.test_users).size == N_USERS
    rep = w.fit_report
    for key in ("rmse", "bias_rmse", "hyper", "fit_seconds", "n_heldout_ratings", "history"):
        assert key in rep
    assert rep["n_heldout_ratings"] == round(0.2 * len(make_log()))
    assert w.env_defaults["distance_threshold"] > 0 and w.env_defaults["window"] == 4
    env = ULRecEnv(world=w)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(int(np.argmax(w.ratings[int(obs["user"])])))
    assert info["feedback"] in ("continue", "leave")


def test_histories_are_earliest_liked_training_ratings(csv_files):
    r, i = csv_files
    w = from_ratings(r, i, cache=False, history_len=3)
    rows = make_log()
    train_pos, test_pos = split_ratings(len(rows), 0.2, 0)
    # The log has no duplicates, and its ids are 1-based and dense, so indices are id - 1.
    for u in range(N_USERS):
        mine = [rows[k] for k in train_pos if rows[k][0] == u + 1 and rows[k][2] >= 4]
        mine.sort(key=lambda row: row[3])
        assert w.histories[u].tolist() == [row[1] - 1 for row in mine[:3]]
        held_out = {(rows[k][1] - 1) for k in test_pos if rows[k][0] == u + 1}
        assert not held_out & set(w.histories[u].tolist())


def test_same_seed_same_world_other_seed_other_split(csv_files):
    r, i = csv_files
    a = from_ratings(r, i, cache=False)
    b = from_ratings(r, i, cache=False)
    c = from_ratings(r, i, cache=False, seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.test_users, b.test_users)
    assert not np.array_equal(a.test_users, c.test_users)


def test_without_items_file_and_custom_columns(tmp_path):
    rows = make_log()
    path = tmp_path / "log.tsv"
    path.write_text("who\twhat\tstars\n" + "".join(f"u{u}\tm{i}\t{r}\n" for u, i, r, _ in rows))
    w = from_ratings(path, user_col="who", item_col="what", rating_col="stars", cache=False)
    assert w.n_items == N_ITEMS and w.titles[0].startswith("Item m")
    assert all(g == () for g in w.genres)


def test_recbole_style_header_suffixes_are_matched(tmp_path):
    rows = make_log()
    path = tmp_path / "x.inter"
    path.write_text("user:token\titem:token\trating:float\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    assert from_ratings(path, cache=False).n_users == N_USERS


def test_duplicate_titles_get_their_id(tmp_path):
    r, _ = write_csv(tmp_path, with_items=False)
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"{i},Same\n" for i in range(1, N_ITEMS + 1)))
    w = from_ratings(r, items, cache=False)
    assert w.titles[0] == "Same" and w.titles[1] == "Same [item 2]"


def test_repeated_pair_keeps_latest_rating(tmp_path):
    rows = make_log() + [(1, 40, 1, 1), (1, 40, 5, 2_000_000_000)]
    r, i = write_csv(tmp_path, rows=rows)
    log = ratings_mod.parse_ratings(r.read_bytes(), str(r))
    k = np.flatnonzero((log.user_idx == 0) & (log.item_idx == 39))
    assert k.size == 1 and log.rating[k[0]] == 5.0
    assert log.duplicates_dropped >= 1


# ------------------------------------------------------------------------------------------ errors
def test_missing_files(tmp_path, csv_files):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        from_ratings(tmp_path / "nope.csv", cache=False)
    with pytest.raises(FileNotFoundError, match="items file"):
        from_ratings(csv_files[0], tmp_path / "noitems.csv", cache=False)


def test_missing_column_names_column_and_argument(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,score\n1,2,3\n")
    with pytest.raises(ValueError, match=r"no column 'rating'.*rating_col="):
        from_ratings(path, cache=False)


def test_bad_rows_reported_with_line_numbers(tmp_path):
    rows = make_log()
    text = "user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    lines = text.splitlines()
    lines[4] = "1,2,abc,5"  # file line 5
    lines[9] = "1,2"  # file line 10
    lines[11] = "3,4,4,never"  # file line 12
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        from_ratings(path, cache=False)
    msg = str(e.value)
    assert "r.csv" in msg and "3 bad row(s)" in msg
    assert "line 5: rating 'abc'" in msg and "line 10:" in msg and "line 12: timestamp 'never'" in msg
    assert "on_bad_rows='skip'" in msg
    with pytest.warns(UserWarning, match="dropped 3 bad row"):
        w = from_ratings(path, cache=False, on_bad_rows="skip")
    assert w.fit_report["n_ratings"] == len(rows) - 3


def test_rated_item_missing_from_items_file(tmp_path):
    r, _ = write_csv(tmp_path, with_items=False)
    items = tmp_path / "items.csv"
    items.write_text("item,title\n" + "".join(f"{i},T{i}\n" for i in range(1, N_ITEMS)))  # no item 40
    with pytest.raises(ValueError, match=r"items.csv: 1 rated item\(s\) are not listed: '40' \(ratings line \d+\)"):
        from_ratings(r, items, cache=False)


def test_bad_items_rows(tmp_path):
    r, _ = write_csv(tmp_path, with_items=False)
    items = tmp_path / "items.csv"
    body = "".join(f"{i},T{i},Drama\n" for i in range(1, N_ITEMS + 1))
    items.write_text("item,title,genres\n" + body + "3,again,Drama\n7,,Drama\n")
    with pytest.raises(ValueError, match=r"line 42: item '3' is listed again \(first on line 4\).*line 43: item '7' has an empty title"):
        from_ratings(r, items, cache=False)


def test_bad_arguments(csv_files):
    r, i = csv_files
    with pytest.raises(TypeError, match="history_lenn"):
        from_ratings(r, i, cache=False, history_lenn=3)
    with pytest.raises(ValueError, match="holdout_fraction"):
        from_ratings(r, i, cache=False, holdout_fraction=1.5)
    with pytest.raises(ValueError, match="outside rating_scale"):
        from_ratings(r, i, cache=False, rating_scale=(1, 4))
    with pytest.raises(ValueError, match="on_bad_rows"):
        from_ratings(r, i, cache=False, on_bad_rows="ignore")
    for bad in (1.0, "often", True):
        with pytest.raises(ValueError, match="`dislike_quantile` must be 'auto'"):
            from_ratings(r, i, cache=False, dislike_quantile=bad)


def test_dislike_quantile_is_the_logs_share_of_low_ratings(csv_files):
    """``auto``: the share of training ratings of 1 or 2 (of 5) becomes the world's ``dislike_quantile``; a number
    is taken as given; ``None`` leaves the absolute ``min_rating`` alone (no per-user threshold)."""
    r, i = csv_files
    log = make_log()
    w = from_ratings(r, i, cache=False)
    train_pos, _ = split_ratings(len(log), 0.2, 0)
    share = float(np.mean(np.array([row[2] for row in log], dtype=float)[train_pos] <= 2.0))
    assert 0 < share < 1
    assert w.env_defaults["dislike_quantile"] == pytest.approx(share, abs=1e-4)
    env = ULRecEnv(world=w)
    assert env.config.dislike_quantile == w.env_defaults["dislike_quantile"]
    assert np.array_equal(env.population.min_ratings,
                          np.maximum(np.quantile(w.ratings.astype(np.float64), env.config.dislike_quantile, axis=1), 2.0))
    assert from_ratings(r, i, cache=False, dislike_quantile=0.3).env_defaults["dislike_quantile"] == 0.3
    off = from_ratings(r, i, cache=False, dislike_quantile=None)
    assert "dislike_quantile" not in off.env_defaults
    assert ULRecEnv(world=off).config.dislike_quantile is None


# ------------------------------------------------------------------------------------------- cache
def test_cache_hit_skips_the_fit(csv_files, tmp_path, monkeypatch):
    r, i = csv_files
    cache = tmp_path / "cache"
    first = from_ratings(r, i, cache=cache)
    assert len(list(cache.glob("*.world"))) == 1

    def no_fit(*a, **k):
        raise AssertionError("the cached world should have been used")

    monkeypatch.setattr(ratings_mod, "build_world", no_fit)
    again = from_ratings(r, i, cache=cache)
    assert again.fingerprint() == first.fingerprint()
    assert again.titles == first.titles and again.genres == first.genres
    assert all(np.array_equal(a, b) for a, b in zip(again.histories, first.histories))
    assert np.array_equal(again.test_users, first.test_users)
    assert dict(again.fit_report) == dict(first.fit_report) and dict(again.env_defaults) == dict(first.env_defaults)


def test_cache_key_follows_data_and_parameters(csv_files, tmp_path):
    r, i = csv_files
    cache = tmp_path / "cache"
    from_ratings(r, i, cache=cache)
    from_ratings(r, i, cache=cache, history_len=5)
    from_ratings(r, i, cache=cache, mf_hyper={"factors": 4})
    r.write_text(r.read_text() + "1,40,3,5\n")
    from_ratings(r, i, cache=cache)
    assert len(list(cache.glob("*.world"))) == 4


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_cache_is_detected_and_rebuilt(csv_files, tmp_path, damage):
    r, i = csv_files
    cache = tmp_path / "cache"
    first = from_ratings(r, i, cache=cache)
    (path,) = cache.glob("*.world")
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 3]
    else:
        blob = bytearray(b"not a world")
    path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="corrupt world cache"):
        again = from_ratings(r, i, cache=cache)
    assert again.fingerprint() == first.fingerprint()
    # The rebuilt file is sound again: no warning the next time.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_ratings(r, i, cache=cache).fingerprint() == first.fingerprint()
