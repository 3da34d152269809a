"""ULRec-v0: registration, the Gymnasium contract, determinism, the leave rules, bad input."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ulrec_env
from ulrec_env import ULRecEnv
from tests.conftest import make_tiny_world
from tests.ulrec_env.billp_reference import BiLLPReference

SETTINGS = [
    {},
    {"leave_rule": "billp"},
    {"stochastic": True},
    {"leave_rule": "billp", "window": 2, "min_rating": 3.0, "leave_penalty": -1.0},
    {"dislike_quantile": 0.2},
]


def test_import_registers_once_and_needs_no_torch():
    code = (
        "import sys, ulrec_env, gymnasium as gym; ulrec_env.register_envs(); ulrec_env.register_envs();"
        "assert 'ULRec-v0' in gym.registry; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_make_without_arguments_uses_the_default_world(default_world):
    env = gym.make("ULRec-v0")
    assert env.unwrapped.world is default_world
    assert env.spec.max_episode_steps == 100
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    assert int(obs["user"]) in set(default_world.test_users.tolist())


@pytest.mark.parametrize("settings", SETTINGS)
def test_passes_env_checker_without_warnings(settings):
    env = gym.make("ULRec-v0", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def _rollout(env, seed, n_steps=60):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        out.append((obs, r, term, trunc, info["feedback"], info["leave_reason"], info["satisfaction"]))
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("settings", SETTINGS)
def test_same_seed_same_rollout(settings):
    a = _rollout(gym.make("ULRec-v0", **settings), seed=7)
    b = _rollout(gym.make("ULRec-v0", **settings), seed=7)
    assert _same(a, b)
    c = _rollout(gym.make("ULRec-v0", **settings), seed=8)
    assert not _same(a, c)


def test_pickled_env_continues_identically():
    env = gym.make("ULRec-v0", stochastic=True, min_rating=-math.inf, hazard_temperature=0.3)
    env.reset(seed=3)
    env.step(5)
    clone = pickle.loads(pickle.dumps(env))
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = int(rng.integers(1500))
        r1, r2 = env.step(a), clone.step(a)
        assert _same(r1[0], r2[0]) and r1[1:4] == r2[1:4]
        if r1[2] or r1[3]:
            break


def test_reset_with_user_option_and_split():
    env = gym.make("ULRec-v0", split="train")
    w = env.unwrapped.world
    obs, info = env.reset(seed=0, options={"user": 5})
    assert int(obs["user"]) == 5 and info["user"] == 5
    h = w.histories[5]
    assert np.array_equal(obs["history"][: len(h)], h) and (obs["history"][len(h):] == -1).all()
    drawn = {int(env.reset()[0]["user"]) for _ in range(50)}
    assert drawn <= set(w.train_users.tolist())
    with pytest.raises(ValueError, match="options\\['user'\\]=5000"):
        env.reset(options={"user": 5000})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"usr": 1})


@pytest.mark.parametrize("bad", [1.5, "3", None, True, np.array([1, 2])])
def test_invalid_action_types(bad):
    env = gym.make("ULRec-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be an integer item id"):
        env.step(bad)


def test_invalid_action_range_and_finished_session():
    env = ULRecEnv(world=make_tiny_world())
    env.reset(seed=0, options={"user": 0})
    with pytest.raises(ValueError, match="valid ids are 0..5"):
        env.step(6)
    with pytest.raises(ValueError, match="valid ids"):
        env.step(np.int64(-1))
    env.step(np.int32(3))
    _, _, term, _, info = env.step(3)  # a repeat
    assert term and info["leave_reason"] == "repeat"
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": -1}, "`window` must be >= 1"),
        ({"window": 2.5}, "`window` must be an integer"),
        ({"distance_threshold": float("nan")}, "`distance_threshold` is NaN"),
        ({"distance_threshold": 0.0}, "`distance_threshold` must be a finite number > 0"),
        ({"leave_rule": "bored"}, "`leave_rule` must be one of"),
        ({"exposure_decay": 1.0}, "`exposure_decay` must be in"),
        ({"patience": (0.0, 1.0)}, "`patience` must be > 0"),
        ({"tolerance": (2.0, 1.0)}, "`tolerance` must satisfy"),
        ({"split": "dev"}, "`split` must be"),
        ({"dislike_quantile": 1.0}, r"`dislike_quantile` must be in \[0, 1\)"),
        ({"dislike_quantile": -0.1}, r"`dislike_quantile` must be in \[0, 1\)"),
        ({"dislike_quantile": "low"}, "`dislike_quantile` must be a number"),
        ({"windw": 3}, "unknown ULRec-v0 setting"),
    ],
)
def test_invalid_settings_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        gym.make("ULRec-v0", **kwargs)


def test_horizon_truncates():
    env = gym.make("ULRec-v0", max_episode_steps=3, min_rating=-math.inf, leave_rule="billp", distance_threshold=1e-6)
    env.reset(seed=0)
    results = [env.step(a) for a in (1, 2, 3)]
    assert [r[2] for r in results] == [False, False, False]
    assert [r[3] for r in results] == [False, False, True]


# ---------------------------------------------------------------------- billp rule
def test_billp_rule_each_reason():
    w = make_tiny_world()
    ratings = np.array(w.ratings)
    env = ULRecEnv(world=w, leave_rule="billp", window=2, distance_threshold=15.0, min_rating=2.0)
    # Low rating leaves on the very first step (the seed's bug, fixed).
    low = ratings.copy()
    low[0, 4] = 1.0
    env_low = ULRecEnv(world=_with_ratings(w, low), leave_rule="billp", window=2, distance_threshold=15.0)
    env_low.reset(options={"user": 0})
    _, r, term, _, info = env_low.step(4)
    assert term and info["leave_reason"] == "low_rating" and r == 0.0
    # Items 10 apart: 0 then 1 is closer than 15 -> redundant.
    env.reset(options={"user": 0})
    _, r, term, _, info = env.step(0)
    assert not term and info["feedback"] == "continue" and r == pytest.approx(ratings[0, 0])
    _, _, term, _, info = env.step(1)
    assert term and info["leave_reason"] == "redundant" and info["feedback"] == "leave"
    # 0, 2, 4, then 1 is 10 from 0 (outside the window of 2) and 10 from 2 (inside): redundant.
    env.reset(options={"user": 0})
    for a in (0, 2, 4):
        assert not env.step(a)[2]
    assert env.step(1)[4]["leave_reason"] == "redundant"
    # 0, 2, 4, then 0 is far from 2 and 4 but a repeat.
    env.reset(options={"user": 0})
    for a in (0, 2, 4):
        env.step(a)
    assert env.step(0)[4]["leave_reason"] == "repeat"


def _with_ratings(w, ratings):
    return ulrec_env.World(
        name=w.name, titles=w.titles, genres=w.genres, ratings=ratings, distance=w.distance,
        histories=w.histories, train_users=w.train_users, test_users=w.test_users,
    )


def test_billp_matches_the_authors_rule_step_for_step(small_world):
    thr = float(np.percentile(small_world.distance, 10))
    env = ULRecEnv(world=small_world, leave_rule="billp", window=4, distance_threshold=thr, min_rating=2.0)
    refs = [BiLLPReference(small_world.titles, small_world.ratings, small_world.distance, 4, thr, 2.0, faithful=f)
            for f in (True, False)]
    rng = np.random.default_rng(0)
    checked, reasons = 0, set()
    for episode in range(300):
        u = int(rng.integers(small_world.n_users))
        env.reset(options={"user": u})
        for ref in refs:
            ref.reset(u)
        # Bias towards repeats and near items so that every reason occurs.
        pool = rng.choice(small_world.n_items, size=12, replace=False)
        for _ in range(20):
            a = int(rng.choice(pool))
            (r_ref, leave_ref), tight = refs[0].step(small_world.titles[a]), refs[1].step(small_world.titles[a])
            assert tight == (r_ref, leave_ref)
            _, r, term, _, info = env.step(a)
            assert term == leave_ref and r == pytest.approx(r_ref)
            checked += 1
            if term:
                reasons.add(info["leave_reason"])
                break
    assert checked > 500 and reasons == {"repeat", "low_rating", "redundant"}


# ---------------------------------------------------------------------- satisfaction rule
def test_satisfaction_follows_the_documented_formula():
    """Seven steps worked by hand from the formula in ULRecEnv's docstring (not with the functions the env calls).

    Items lie on a line 10 apart, d0 = 10, so sim = 2 ** -(d / 10) ** 2: 1/2 at d = 10, 1/16 at d = 20, and
    below 2 ** -25 (about 3e-8) from d = 50 on. Every rating is 4 on the 1..5 scale: q = 3/4. W = 2,
    lambda = 1/2, tau = 1/2, pi = 2, rho = 0.4, floor = 1/2. Step by step (r, E = E/2 + r,
    gain = 0.4 * max(0, 1 - r) * 0.75 * (1 - s), loss = max(0, E - 0.5) / 2, s + gain - loss):

    1. item 0, empty window: r = 0, E = 0, s = 1.
    2. item 1 (10 from 0): r = 0.5, E = 0.5, gain = 0 (s = 1), loss = 0: s = 1.
    3. item 2 (20, 10 from 0, 1): r = 0.5625, E = 0.25 + 0.5625 = 0.8125, loss = 0.3125 / 2 = 0.15625:
       s = 0.84375.
    4. item 3 (20, 10 from 1, 2): r = 0.5625, E = 0.40625 + 0.5625 = 0.96875,
       gain = 0.4 * 0.4375 * 0.75 * 0.15625 = 0.0205078125, loss = 0.46875 / 2 = 0.234375: s = 0.6298828125.
    5. item 9 (70, 60 from 2, 3): r ~ 0, E = 0.484375 (below tau: no loss),
       gain = 0.3 * 0.3701171875 = 0.11103515625: s = 0.74091796875.
    6. item 8 (50, 10 from 3, 9): r ~ 0.5, E = 0.2421875 + 0.5 = 0.7421875,
       gain = 0.15 * 0.25908203125 = 0.0388623046875, loss = 0.2421875 / 2 = 0.12109375: s = 0.6586865234375.
    7. item 7 (20, 10 from 9, 8): r = 0.5625, E = 0.37109375 + 0.5625 = 0.93359375,
       gain = 0.13125 * 0.3413134765625 = 0.044797393798828125, loss = 0.43359375 / 2 = 0.216796875:
       s = 0.486687042236328125 < 1/2: the user leaves, bored, and the step earns the leave penalty 0.
    """
    w = make_tiny_world(n_items=10)
    ratings = np.array(w.ratings)
    ratings[0] = 4.0
    env = ULRecEnv(world=_with_ratings(w, ratings), distance_threshold=10.0, window=2, exposure_decay=0.5,
                   tolerance=(0.5, 0.5), patience=(2.0, 2.0), recovery=(0.4, 0.4), satisfaction_floor=0.5)
    env.reset(options={"user": 0})
    expected = [  # (item, redundancy, exposure, satisfaction)
        (0, 0.0, 0.0, 1.0),
        (1, 0.5, 0.5, 1.0),
        (2, 0.5625, 0.8125, 0.84375),
        (3, 0.5625, 0.96875, 0.6298828125),
        (9, 0.0, 0.484375, 0.74091796875),
        (8, 0.5, 0.7421875, 0.6586865234375),
        (7, 0.5625, 0.93359375, 0.486687042236328125),
    ]
    for t, (item, red, exposure, satisfaction) in enumerate(expected):
        _, r, term, _, info = env.step(item)
        assert info["redundancy"] == pytest.approx(red, abs=1e-7)
        assert info["exposure"] == pytest.approx(exposure)
        assert info["satisfaction"] == pytest.approx(satisfaction)
        last = t == len(expected) - 1
        assert term == last and info["leave_reason"] == ("bored" if last else None)
        assert r == (0.0 if last else 4.0)


@pytest.mark.parametrize("leave_rule", ["satisfaction", "billp"])
def test_per_user_dislike_threshold_leaves_below_the_users_own_quantile(leave_rule):
    """With ``dislike_quantile``, a user leaves at once ("low_rating") on an item below that quantile of their own
    ratings, and stays on one above it, although both are above ``min_rating``; without it, on neither."""
    w = make_tiny_world(n_items=40)
    ratings = np.array(w.ratings)
    ratings[0] = np.linspace(3.0, 5.0, 40)  # user 0 rates everything 3 or more
    w = _with_ratings(w, ratings)
    per_user = ULRecEnv(world=w, leave_rule=leave_rule, min_rating=2.0, dislike_quantile=0.25)
    threshold = float(np.quantile(ratings[0], 0.25))
    assert per_user.population.min_rating_of(0) == pytest.approx(threshold)
    below = int(np.flatnonzero(ratings[0] < threshold)[-1])
    above = int(np.flatnonzero(ratings[0] >= threshold)[-1])
    for item, leaves in ((below, True), (above, False)):
        per_user.reset(options={"user": 0})
        _, _, term, _, info = per_user.step(item)
        assert term == leaves and info["leave_reason"] == ("low_rating" if leaves else None)
        assert per_user.user_state()["min_rating"] == pytest.approx(threshold)
    absolute = ULRecEnv(world=w, leave_rule=leave_rule, min_rating=2.0)
    absolute.reset(options={"user": 0})
    assert absolute.step(below)[2] is False


def test_redundant_exposure_lowers_satisfaction_and_fresh_items_restore_it():
    w = make_tiny_world(n_items=40)
    env = ULRecEnv(world=w, distance_threshold=15.0, min_rating=-math.inf, tolerance=(0.5, 0.5), patience=(2.0, 2.0),
                   recovery=(0.5, 0.5), satisfaction_floor=0.0)
    env.reset(options={"user": 0})
    sats = [env.step(a)[4]["satisfaction"] for a in (10, 11, 12, 13)]  # neighbours on the line
    assert sats[-1] < sats[0] and all(b <= a for a, b in zip(sats, sats[1:]))
    later = [env.step(a)[4]["satisfaction"] for a in (30, 0, 38, 22, 5)]  # far apart
    assert later[-1] > sats[-1]


def test_traits_are_fixed_per_user_not_per_episode():
    a = ULRecEnv(trait_seed=1)
    b = ULRecEnv(trait_seed=1)
    c = ULRecEnv(trait_seed=2)
    assert np.array_equal(a.traits.tolerance, b.traits.tolerance)
    assert not np.array_equal(a.traits.tolerance, c.traits.tolerance)


def test_render_ansi_lists_the_session():
    env = gym.make("ULRec-v0", render_mode="ansi")
    env.reset(seed=0)
    env.step(0)
    text = env.render()
    assert env.unwrapped.world.titles[0] in text
