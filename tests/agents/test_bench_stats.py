"""Honest statistics: users as the unit of the intervals, a warning when users repeat, LLM rows that say what ran,
rates with two significant digits, sessions joined back to the data's raw ids."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from agents.benchmark import benchmark, format_rate, format_table
from agents.evaluation import choose_users, mean_ci95, user_mean_ci95
from ulrec_env.worlds.spec import world_from_spec


def test_repeated_users_warn_and_count_once():
    from agents.baselines import GreedyPolicy
    from agents.evaluation import run_policy, summarize

    world = world_from_spec("synthetic:3")
    n_test = world.test_users.size
    with pytest.warns(UserWarning, match=f"{5 * n_test} episodes asked of the {n_test} 'test' users"):
        users = choose_users(world, "test", 5 * n_test, 0)
    row = summarize("greedy", run_policy(GreedyPolicy(), world, users, max_episode_steps=20), world, max_episode_steps=20)
    distinct = np.unique(users)
    assert row["episodes"] == 5 * n_test and row["users"] == distinct.size
    # greedy's sessions of one user are copies: the interval is that of the distinct users' sessions
    once = run_policy(GreedyPolicy(), world, distinct, max_episode_steps=20)
    assert row["len_ci95"] == pytest.approx(mean_ci95(once.lengths)[1])
    with pytest.warns(UserWarning):
        doc = benchmark(world, ["greedy"], episodes=5 * n_test, seeds=1, progress=False, max_episode_steps=20)
    assert f"({doc['results'][0]['users']} distinct users; intervals over users)" in format_table(doc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_users(world, "test", n_test, 0)  # as many as there are: no warning


def test_user_interval_is_the_plain_one_without_repeats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    assert user_mean_ci95(np.arange(30), x) == mean_ci95(x)
    users = np.repeat(np.arange(10), 3)
    per_user = np.array([x[users == u].mean() for u in range(10)])
    assert user_mean_ci95(users, x) == pytest.approx(mean_ci95(per_user))


@pytest.mark.parametrize("x, text", [(0.11, "0.11"), (0.1149, "0.11"), (3.24, "3.2"), (45.6, "46"), (99.7, "100"),
                                     (1234.4, "1,234"), (float("nan"), "-"), (10.0, "10")])
def test_rates_print_with_two_significant_digits(x, text):
    assert format_rate(x) == text


def test_per_session_rows_carry_raw_ids(tmp_path):
    ratings = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    lines = ["uid,iid,stars"] + [f"user-{u},film-{i},{rng.integers(1, 6)}" for u in range(24)
                                 for i in rng.choice(30, 12, replace=False)]
    ratings.write_text("\n".join(lines) + "\n")
    world = world_from_spec(f"ratings:{ratings}:user_col=uid:item_col=iid:rating_col=stars:timestamp_col=none:cache=false")
    assert world.name == "log" and world.user_ids[0].startswith("user-") and world.item_ids[0].startswith("film-")
    doc = benchmark(world, ["greedy"], episodes="all", seeds=1, progress=False, max_episode_steps=5, per_session=True)
    sessions = doc["results"][0]["sessions"]
    assert len(sessions) == world.test_users.size
    for s in sessions:
        assert s["user_id"] == world.user_ids[s["user"]]
        assert s["item_ids"] == [world.item_ids[i] for i in s["items"]]
    json.dumps(doc)  # JSON-ready


def test_paired_difference_pairs_rows_user_by_user():
    from agents.baselines import GreedyPolicy, RandomPolicy
    from agents.evaluation import paired_difference, run_policy, summarize

    world = world_from_spec("synthetic:3")
    users = world.test_users
    rows = [summarize(n, run_policy(p, world, users, seed=0, max_episode_steps=20), world, max_episode_steps=20)
            for n, p in (("random", RandomPolicy()), ("greedy", GreedyPolicy()))]
    # per_user holds each distinct user's mean, sorted by id, and averages back to the row's mean
    pu = rows[1]["per_user"]
    assert pu["users"] == sorted(np.unique(users).tolist()) and len(pu["len"]) == len(pu["return"]) == len(pu["users"])
    assert np.mean(pu["len"]) == pytest.approx(rows[1]["len_mean"])
    assert np.mean(pu["return"]) == pytest.approx(rows[1]["return_mean"])
    d = paired_difference(rows[0], rows[1])
    diff = np.asarray(rows[1]["per_user"]["len"]) - np.asarray(rows[0]["per_user"]["len"])
    assert d["users"] == len(pu["users"]) and (d["mean"], d["ci95"]) == pytest.approx(mean_ci95(diff))
    assert d["mean"] == pytest.approx(rows[1]["len_mean"] - rows[0]["len_mean"])
    assert paired_difference(rows[1], rows[0], "return")["mean"] == pytest.approx(
        rows[0]["return_mean"] - rows[1]["return_mean"])
    # users are matched by index, not by position: a shuffled, partial row pairs only the users it holds
    keep = np.random.default_rng(1).permutation(len(pu["users"]))[: len(pu["users"]) // 2]
    partial = {"policy": "part", "per_user": {k: [v[i] for i in keep] for k, v in rows[1]["per_user"].items()}}
    d_part = paired_difference(rows[0], partial)
    assert d_part["users"] == keep.size and (d_part["mean"], d_part["ci95"]) == pytest.approx(mean_ci95(diff[keep]))
    # a user's repeated sessions are averaged first
    twice = np.repeat(users, 2)
    sessions = run_policy(RandomPolicy(), world, twice, seed=3, max_episode_steps=20)
    rep = summarize("random", sessions, world, max_episode_steps=20)["per_user"]
    by_hand = [sessions.lengths[sessions.users == u].mean() for u in rep["users"]]
    assert rep["users"] == sorted(np.unique(users).tolist()) and rep["len"] == pytest.approx(by_hand)
    assert any(np.ptp(sessions.lengths[sessions.users == u]) > 0 for u in rep["users"])  # the two sessions differ


def test_paired_difference_refuses_rows_it_cannot_pair():
    from agents.evaluation import paired_difference

    a = {"policy": "a", "per_user": {"users": [0, 1], "len": [1.0, 2.0], "return": [1.0, 2.0]}}
    with pytest.raises(ValueError, match="row 'old' has no per_user 'len'.*evaluate the policy again"):
        paired_difference({"policy": "old", "len_mean": 3.0}, a)
    with pytest.raises(ValueError, match="share no user"):
        paired_difference(a, {"policy": "b", "per_user": {"users": [5], "len": [1.0], "return": [0.0]}})
    with pytest.raises(ValueError, match="key='reward': use 'len' or 'return'"):
        paired_difference(a, a, key="reward")
    with pytest.raises(ValueError, match="names a user more than once"):
        paired_difference(a, {"policy": "d", "per_user": {"users": [0, 0], "len": [1.0, 2.0], "return": [0.0, 1.0]}})
    with pytest.raises(ValueError, match="2 users and 1 'len' values; give one value per user"):
        paired_difference(a, {"policy": "c", "per_user": {"users": [0, 1], "len": [1.0], "return": [0.0, 1.0]}})
