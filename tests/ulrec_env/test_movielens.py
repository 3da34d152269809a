"""MovieLens-100k: the three layouts, the errors, ULRec-ML100K-v1 (and v0), and the real data from recbole's copy (which CI
installs: without it those tests fail, they do not skip)."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import ulrec_env
from ulrec_env.worlds import movielens as ml
from ulrec_env.worlds import movielens_100k
from ulrec_env.worlds import ratings as ratings_mod

from .rating_fixtures import N_ITEMS, N_USERS, make_log, write_grouplens, write_grouplens_zip, write_recbole


@pytest.mark.parametrize("layout", ["grouplens", "grouplens-parent", "zip", "recbole"])
def test_layouts_give_the_same_world(tmp_path, layout):
    if layout == "grouplens":
        path = write_grouplens(tmp_path / "gl")
    elif layout == "grouplens-parent":
        write_grouplens(tmp_path / "parent" / "ml-100k")
        path = tmp_path / "parent"
    elif layout == "zip":
        path = write_grouplens_zip(tmp_path / "ml-100k.zip")
    else:
        path = write_recbole(tmp_path / "rb")
    w = movielens_100k(path, cache=False)
    assert (w.n_users, w.n_items) == (N_USERS, N_ITEMS)
    assert w.titles[0] == "Movie 1 (1981)" and w.genres[0] == ("Adventure",)
    assert w.genres[2] == ("Children's", "Thriller")
    assert w.fit_report["n_ratings"] == len(make_log())
    # Same ratings whichever layout: the fitted matrix does not depend on the file format.
    ref = movielens_100k(write_grouplens(tmp_path / "ref"), cache=False)
    assert np.array_equal(w.ratings, ref.ratings)


def test_wrong_path_names_every_way(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        movielens_100k(tmp_path, cache=False)
    msg = str(e.value)
    for needle in (str(tmp_path), "u.data", "u.item", "ml-100k.zip", "ml-100k.inter", "ml-100k.item", "recbole"):
        assert needle in msg
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        movielens_100k(tmp_path / "missing", cache=False)
    bad_zip = tmp_path / "x.zip"
    import zipfile

    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(FileNotFoundError, match="zip holds no u.data"):
        movielens_100k(bad_zip, cache=False)


def test_no_path_and_no_recbole(monkeypatch):
    monkeypatch.setattr(ml, "_recbole_copy", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"no `path` given.*\(1\).*u\.data.*\(2\).*ml-100k\.inter.*\(3\).*pip install --no-deps recbole"):
        movielens_100k(cache=False)


def test_bad_grouplens_rows(tmp_path):
    folder = write_grouplens(tmp_path / "gl")
    lines = (folder / "u.data").read_text().splitlines()
    lines[6] = "1\t2\tfive\t100"
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"u\.data: 1 bad row\(s\): line 7: rating 'five'"):
        movielens_100k(folder, cache=False)


def test_gym_make_with_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("ULREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_grouplens(tmp_path / "gl")
    env = gym.make("ULRec-ML100K-v1", path=folder)
    assert env.spec.max_episode_steps == 100
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(0)
    assert info["feedback"] in ("continue", "leave")
    assert env.unwrapped.world.name == "ml-100k"
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make("ULRec-ML100K-v1", path=folder).unwrapped, skip_render_check=True)
    venv = gym.make_vec("ULRec-ML100K-v1", num_envs=3, vectorization_mode="vector_entry_point", path=folder)
    obs, _ = venv.reset(seed=0)
    assert obs["user"].shape == (3,)
    venv.close()
    env.close()


def test_gym_make_without_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ml, "_recbole_copy", lambda: None)
    with pytest.raises(FileNotFoundError, match="MovieLens-100k can come three ways"):
        gym.make("ULRec-ML100K-v1")
    with pytest.raises(FileNotFoundError, match="no such file"):
        gym.make("ULRec-ML100K-v1", path=tmp_path / "missing")


def test_register_envs_is_idempotent():
    ulrec_env.register_envs()
    ulrec_env.register_envs()
    assert {"ULRec-v0", "ULRec-ML100K-v1", "ULRec-ML100K-v0"} <= set(gym.registry)


def test_import_is_light():
    code = "import sys, ulrec_env; print(sorted(m for m in ('torch', 'pandas', 'recbole', 'scipy.sparse') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# --------------------------------------------------------------------------------- the real data
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    if ml._recbole_copy() is None:  # CI installs it (.ci/setup): fail rather than skip, like the SmolLM2 tests
        pytest.fail("the real-data tests need recbole's copy of MovieLens-100k: pip install --no-deps recbole")
    root = tmp_path_factory.mktemp("ulrec_cache")
    world = movielens_100k(cache=root / "worlds")
    return root, world


def test_real_world_shape_and_fit(real_cache):
    _, w = real_cache
    assert (w.n_users, w.n_items) == (943, 1682)
    assert len(w.genre_names) == 19
    assert w.titles[0] == "Toy Story (1995)"
    rep = w.fit_report
    assert rep["n_ratings"] == 100_000 and rep["n_heldout_ratings"] == 20_000
    assert rep["rmse"] <= 0.915
    assert rep["rmse"] < rep["bias_rmse"]
    assert w.test_users.size == 189 and w.train_users.size == 754
    assert max(len(h) for h in w.histories) == 15
    assert 0 < w.env_defaults["distance_threshold"] < 100


def test_real_gym_make_uses_the_cache(real_cache, monkeypatch):
    root, w = real_cache
    monkeypatch.setenv("ULREC_CACHE_DIR", str(root))

    def no_fit(*a, **k):
        raise AssertionError("the cached MovieLens world should have been used")

    monkeypatch.setattr(ratings_mod, "build_world", no_fit)
    monkeypatch.setattr(ml, "build_world", no_fit)
    env = gym.make("ULRec-ML100K-v1")
    assert env.unwrapped.world.fingerprint() == w.fingerprint()
    obs, _ = env.reset(seed=0)
    assert obs["history"].shape == (15,)
    env.close()


def test_real_echo_chamber_greedy_ends_sooner(real_cache):
    _, w = real_cache
    env = ulrec_env.ULRecEnv(world=w)
    lengths = []
    for u in w.test_users[:10].tolist():
        env.reset(seed=0, options={"user": u})
        n = 0
        for _ in range(100):
            score = w.ratings[u].astype(np.float64)
            score[list(env.shown)] = -np.inf
            _, _, terminated, _, _ = env.step(int(score.argmax()))
            if terminated:
                break
            n += 1
        lengths.append(n)
    assert np.mean(lengths) < 40


def test_real_v1_dislike_threshold_shortens_random_sessions(real_cache, monkeypatch):
    """v1's calibration: each user rejects the share of the catalogue that MovieLens users rated 1 or 2 (17.5%),
    so random films no longer make long sessions; v0 keeps the absolute threshold of 2, which rarely fires."""
    root, w = real_cache
    monkeypatch.setenv("ULREC_CACHE_DIR", str(root))
    assert w.env_defaults["dislike_quantile"] == pytest.approx(0.175, abs=0.01)
    v1, v0 = gym.make("ULRec-ML100K-v1").unwrapped, gym.make("ULRec-ML100K-v0").unwrapped
    assert v1.config.dislike_quantile == w.env_defaults["dislike_quantile"] and v0.config.dislike_quantile is None
    assert np.all(v0.population.min_ratings == 2.0) and np.median(v1.population.min_ratings) > 2.5

    def random_len(env, users):
        rng, total = np.random.default_rng(0), 0
        for u in users:
            env.reset(seed=0, options={"user": int(u)})
            for _ in range(20):
                _, _, term, _, _ = env.step(int(rng.integers(w.n_items)))
                if term:
                    break
                total += 1
        return total / len(users)

    users = w.test_users[:60]
    assert random_len(v1, users) < 0.6 * random_len(v0, users)
