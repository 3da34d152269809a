"""The reward model: biased MF by ALS, the bias baseline, held-out evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from ulrec_env.reward_model import (
    MF_DEFAULTS,
    evaluate_split,
    fit_bias_baseline,
    fit_biased_mf,
    fit_matrix_factorization,
    rmse,
    split_ratings,
)


def low_rank_ratings(seed: int = 0, n_users: int = 120, n_items: int = 80, density: float = 0.3):
    """Ratings with biases and a rank-3 interaction, observed at random."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    full = 3.2 + rng.normal(0, 0.3, (n_users, 1)) + rng.normal(0, 0.5, (1, n_items)) + 0.5 * p @ q.T
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    r = np.clip(full[u, i] + rng.normal(0, 0.2, u.size), 1, 5)
    return u, i, r, n_users, n_items


def test_dense_matrix_shape_scale_and_determinism():
    u, i, r, nu, ni = low_rank_ratings()
    a = fit_matrix_factorization(u, i, r, nu, ni, seed=0, rating_scale=(1, 5))
    b = fit_matrix_factorization(u, i, r, nu, ni, seed=0, rating_scale=(1, 5))
    assert a.shape == (nu, ni) and a.dtype == np.float32
    assert a.min() >= 1.0 and a.max() <= 5.0
    assert np.array_equal(a, b)
    # Without a scale, predictions stay inside the observed range.
    c = fit_matrix_factorization(u, i, r, nu, ni, seed=0)
    assert c.min() >= r.min() - 1e-6 and c.max() <= r.max() + 1e-6


def test_beats_bias_baseline_on_low_rank_data():
    u, i, r, nu, ni = low_rank_ratings()
    rep = evaluate_split(u, i, r, nu, ni, seed=0, rating_scale=(1, 5), factors=8)
    assert rep["rmse"] < rep["bias_rmse"] - 0.05
    assert rep["n_train"] + rep["n_test"] == r.size
    assert rep["hyper"]["factors"] == 8


def test_fits_training_data_and_predict_matches_dense():
    u, i, r, nu, ni = low_rank_ratings(density=0.5)
    model = fit_biased_mf(u, i, r, nu, ni, rating_scale=(1, 5), factors=6)
    dense = model.dense()
    assert np.allclose(model.predict(u, i), dense[u, i], atol=1e-5)
    assert rmse(model.predict(u, i), r) < 0.35
    assert model.item_factors.shape == (ni, 6) and model.hyper["reg"] == MF_DEFAULTS["reg"]


def test_bias_baseline():
    u, i, r, nu, ni = low_rank_ratings()
    b = fit_bias_baseline(u, i, r, nu, ni, rating_scale=(1, 5))
    assert abs(b.mu - r.mean()) < 1e-12
    assert rmse(b.predict(u, i), r) < rmse(np.full(r.size, r.mean()), r)


def test_users_and_items_without_ratings_get_finite_predictions():
    u, i, r, nu, ni = low_rank_ratings()
    m = fit_matrix_factorization(u, i, r, nu + 3, ni + 2, rating_scale=(1, 5))
    assert np.isfinite(m).all() and m.shape == (nu + 3, ni + 2)


def test_split_ratings():
    tr, te = split_ratings(100, 0.2, seed=1)
    assert te.size == 20 and np.union1d(tr, te).size == 100
    assert np.array_equal(te, split_ratings(100, 0.2, seed=1)[1])
    with pytest.raises(ValueError, match="test_fraction"):
        split_ratings(100, 1.0)


def test_errors_name_the_argument():
    u, i, r, nu, ni = low_rank_ratings()
    with pytest.raises(TypeError, match="factor.*valid"):
        fit_matrix_factorization(u, i, r, nu, ni, factor=3)
    with pytest.raises(ValueError, match="same length|one length"):
        fit_matrix_factorization(u[:-1], i, r, nu, ni)
    with pytest.raises(ValueError, match="item_idx.*n_items"):
        fit_matrix_factorization(u, i, r, nu, ni - 5)
    bad = r.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"ratings\[3\]"):
        fit_matrix_factorization(u, i, bad, nu, ni)
    with pytest.raises(TypeError, match="user_idx"):
        fit_matrix_factorization(u.astype(float), i, r, nu, ni)
    with pytest.raises(ValueError, match="reg"):
        fit_matrix_factorization(u, i, r, nu, ni, reg=0)
    with pytest.raises(ValueError, match="factors"):
        fit_matrix_factorization(u, i, r, nu, ni, factors=0)
    with pytest.raises(ValueError, match="rating_scale"):
        fit_matrix_factorization(u, i, r, nu, ni, rating_scale=(5, 1))
