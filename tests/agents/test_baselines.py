"""Baselines, the oracle, and the evaluation runner."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.baselines import (
    GenreCyclePolicy,
    GreedyPolicy,
    MMRPolicy,
    PopularPolicy,
    RandomPolicy,
    recent_history,
    shown_mask,
    title_words,
    window_items,
)
from agents.evaluation import choose_users, mean_ci95, run_policy, summarize
from agents.oracle import OraclePolicy
from agents.policy import Policy
from ulrec_env import ULRecVectorEnv


def test_helpers_read_the_observation():
    rec = np.array([[3, 1, -1, -1], [0, 1, 2, 3]])
    assert shown_mask(rec, 5).tolist() == [[False, True, False, True, False], [True] * 4 + [False]]
    assert window_items(rec, np.array([2, 4]), 3).tolist() == [[-1, 3, 1], [1, 2, 3]]
    hist = np.array([[5, 6, 7, -1], [-1, -1, 8, 9], [4, -1, -1, -1]])
    assert recent_history(hist, 2).tolist() == [
        [False, True, True, False], [False, False, True, True], [True, False, False, False]]


@pytest.mark.parametrize("cls", [RandomPolicy, PopularPolicy, GreedyPolicy, MMRPolicy, GenreCyclePolicy])
def test_baselines_never_repeat_and_act_on_single_envs(small_world, cls):
    env = gym.make("ULRec-v0", world=small_world, min_rating=-np.inf, leave_rule="billp", distance_threshold=1e-9)
    policy = cls().bind(small_world, env.unwrapped)
    obs, info = env.reset(seed=0)
    shown = []
    for _ in range(30):
        a = policy.act(obs, info)
        assert a not in shown and 0 <= a < small_world.n_items
        shown.append(a)
        obs, _, term, trunc, info = env.step(a)
        assert not term


def test_greedy_takes_the_best_rated_unseen_item(small_world):
    p = GreedyPolicy().bind(small_world)
    u = 7
    # stable: tied ratings (several items at the 5.0 cap) in index order, the order argmax breaks ties in
    # (the default sort orders ties differently in numpy 1.x and 2.x)
    best = np.argsort(-small_world.ratings[u], kind="stable")
    obs = {"user": np.array([u]), "recommended": np.array([[best[0], -1, -1]]), "step": np.array([1])}
    assert p.act_batch(obs)[0] == best[1]


def test_mmr_penalises_items_near_the_window(small_world):
    u = 2
    r = small_world.ratings[u]
    top = int(np.argmax(r))
    obs = {"user": np.array([u]), "recommended": np.array([[top, -1]]), "step": np.array([1])}
    assert MMRPolicy(penalty=0.0).bind(small_world).act_batch(obs)[0] == GreedyPolicy().bind(small_world).act_batch(obs)[0]
    a = MMRPolicy(penalty=5.0).bind(small_world).act_batch(obs)[0]
    near = small_world.distance[top] < np.median(small_world.distance[top])
    assert not near[a]


def test_random_policy_is_seeded(small_world):
    obs = {"user": np.zeros(5, int), "recommended": -np.ones((5, 3), int), "step": np.zeros(5, int)}
    a = RandomPolicy(seed=1).bind(small_world).act_batch(obs)
    b = RandomPolicy(seed=1).bind(small_world).act_batch(obs)
    assert np.array_equal(a, b)


def test_unbound_policy_and_bad_outputs_are_reported(small_world):
    with pytest.raises(RuntimeError, match="not bound"):
        GreedyPolicy().act_batch({"user": np.array([0]), "recommended": -np.ones((1, 2), int), "step": np.array([0])})

    class Broken(Policy):
        name = "broken"

        def _act_batch(self, obs):
            return np.array([1, 2, 3])

    with pytest.raises(RuntimeError, match="returned \\(3,\\) actions for 1 sessions"):
        Broken().bind(small_world).act_batch({"user": np.array([0]), "recommended": -np.ones((1, 2), int), "step": np.array([0])})


@pytest.mark.parametrize("settings", [{}, {"leave_rule": "billp"}])
def test_oracle_is_never_beaten_on_the_same_users(small_world, settings):
    users = small_world.users("all")[:24]
    results = {}
    for p in (RandomPolicy(), PopularPolicy(), GreedyPolicy(), MMRPolicy(), OraclePolicy(beam_width=6)):
        results[p.name] = run_policy(p, small_world, users, seed=0, env_settings=settings, max_episode_steps=40)
    oracle = results.pop("oracle").returns
    for name, s in results.items():
        assert (oracle >= s.returns - 1e-6).all(), name
    assert oracle.mean() > results["greedy"].returns.mean()


def test_oracle_follows_its_plan_exactly(small_world):
    venv = ULRecVectorEnv(num_envs=1, world=small_world, autoreset_mode="disabled", max_episode_steps=30)
    oracle = OraclePolicy(beam_width=4).bind(small_world, venv)
    plan = oracle.plan(5)
    obs, _ = venv.reset(options={"users": [5]})
    ret = 0.0
    for t in range(len(plan)):
        a = oracle.act_batch(obs)
        assert a[0] == plan[t]
        obs, r, term, trunc, _ = venv.step(a)
        ret += r[0]
        if term[0] or trunc[0]:
            break
    # The session ends exactly where the plan does (a leave on its last item, or the horizon), and earns the
    # ratings of the items the user stayed for (plus the leave penalty if the plan ends in a leave).
    assert t == len(plan) - 1 and (term[0] or trunc[0])
    stayed = plan if trunc[0] else plan[:-1]
    penalty = 0.0 if trunc[0] else venv.config.leave_penalty
    assert ret == pytest.approx(small_world.ratings[5, stayed].sum() + penalty)


def test_echo_chamber_on_the_default_world(default_world):
    users = default_world.test_users[:20]
    greedy = run_policy(GreedyPolicy(), default_world, users)
    oracle = run_policy(OraclePolicy(beam_width=4), default_world, users)
    mmr = run_policy(MMRPolicy(), default_world, users)
    assert greedy.lengths.mean() < 0.4 * oracle.lengths.mean()
    assert mmr.lengths.mean() > greedy.lengths.mean()


def test_run_policy_plays_each_user_once_and_summarises(small_world):
    users = np.array([1, 2, 3, 1, 5])
    s = run_policy(GreedyPolicy(), small_world, users, batch_size=2)
    assert s.users.tolist() == users.tolist() and len(s.items) == 5
    assert all(len(i) == l + (r != "horizon") for i, l, r in zip(s.items, s.lengths, s.leave_reasons))
    # Same user, deterministic policy and user: same session.
    assert np.array_equal(s.items[0], s.items[3])
    row = summarize("greedy", s, small_world, peeks=True)
    # the user is the unit: user 1's two sessions (copies) count once
    per_user = [s.lengths[s.users == u].mean() for u in (1, 2, 3, 5)]
    assert row["episodes"] == 5 and row["users"] == 4 and row["len_mean"] == pytest.approx(np.mean(per_user))
    assert sum(row["leave_reasons"].values()) == pytest.approx(100.0)


def test_choose_users_and_ci(small_world):
    assert np.array_equal(choose_users(small_world, "test", "all", 0), small_world.test_users)
    a = choose_users(small_world, "train", 10, seed=1)
    assert a.size == 10 and len(set(a.tolist())) == 10 and np.array_equal(a, choose_users(small_world, "train", 10, 1))
    with pytest.raises(ValueError, match="episodes"):
        choose_users(small_world, "test", 0, 0)
    m, h = mean_ci95(np.array([1.0, 2.0, 3.0]))
    assert m == 2.0 and h == pytest.approx(2.4841, rel=1e-3)


def _genre_sets(world, items):
    return [set(world.genres[int(i)]) for i in items if i >= 0]


@pytest.mark.parametrize("copy_words", [False, True])
def test_genre_cycle_reads_only_the_prompt_and_follows_its_rule(default_world, copy_words):
    """Each pick avoids the genres of the last ``window`` shown items and stays inside the read history's genres;
    with ``copy_words`` it also shares a title word with a read history item whenever such an item qualifies."""
    world = default_world
    policy = GenreCyclePolicy(max_history=6, window=2, seed=1, copy_words=copy_words)
    assert not policy.peeks
    # Users who never leave (no rating floor, no distance rule) so that the check covers late steps too.
    env = ULRecVectorEnv(num_envs=16, world=world, max_episode_steps=12, autoreset_mode="disabled",
                         min_rating=-np.inf, leave_rule="billp", distance_threshold=1e-9)
    policy.bind(world, env)
    obs, _ = env.reset(seed=0, options={"users": world.test_users[:16]})
    checked = copied = 0
    for _ in range(8):
        tiers = policy.tiers(obs)
        actions = policy.act_batch(obs)
        for r, a in enumerate(actions):
            history = obs["history"][r][obs["history"][r] >= 0][-6:]
            liked = set().union(*_genre_sets(world, history))
            step = int(obs["step"][r, 0])
            recent = set().union(set(), *_genre_sets(world, obs["recommended"][r][max(0, step - 2):step]))
            shown = set(obs["recommended"][r][:step].tolist())
            assert a not in shown
            qualifying = [i for i in range(world.n_items) if i not in shown and set(world.genres[i]) <= liked
                          and not set(world.genres[i]) & recent]
            if qualifying:
                assert set(world.genres[a]) <= liked and not set(world.genres[a]) & recent
                checked += 1
            words = set().union(*(title_words(world.titles[h]) for h in history))
            if copy_words and any(title_words(world.titles[i]) & words for i in qualifying):
                assert title_words(world.titles[a]) & words
                copied += 1
            # tiers() says the same, item by item, and the pick is always in the highest tier
            fresh = [i for i in range(world.n_items) if i not in shown and not set(world.genres[i]) & recent]
            expect = np.zeros(world.n_items, dtype=int)
            expect[fresh] = 1
            expect[qualifying] = 2
            if copy_words:
                expect[[i for i in qualifying if title_words(world.titles[i]) & words]] = 3
            expect[sorted(shown)] = -1
            assert (tiers[r] == expect).all() and tiers[r, a] == tiers[r].max()
        obs, _, term, _, _ = env.step(actions)
        assert not term.any()
    assert checked > 16
    assert copied > 16 or not copy_words


def test_genre_cycle_falls_back_when_nothing_qualifies(small_world):
    # History holds one item; the window holds an item of the same genres, so no unseen item qualifies fully.
    item = 0
    same = [i for i in range(small_world.n_items) if small_world.genres[i] == small_world.genres[item] and i != item][0]
    obs = {"history": np.array([[item, -1]]), "recommended": np.array([[same, -1]]), "step": np.array([1]),
           "user": np.array([0])}
    for seed in range(20):
        policy = GenreCyclePolicy(max_history=1, window=1, seed=seed).bind(small_world)
        a = int(policy.act_batch(obs)[0])
        assert a != same and not set(small_world.genres[a]) & set(small_world.genres[same])
    assert policy.tiers(obs).max() == 1  # "fresh" is the highest tier this step offers
    with pytest.raises(RuntimeError, match="bind"):
        GenreCyclePolicy().tiers(obs)


def test_genre_cycle_last_tier_and_items_without_genres(small_world):
    # Every unseen item shares a genre with the window: the rule still answers, with an unseen item.
    genres = {g for gs in small_world.genres for g in gs}
    window = []
    for g in sorted(genres):
        window.append(next(i for i in range(small_world.n_items) if g in small_world.genres[i] and i not in window))
    obs = {"history": np.array([window[:2]]), "recommended": np.array([window]), "step": np.array([len(window)]),
           "user": np.array([0])}
    a = int(GenreCyclePolicy(max_history=2, window=len(window)).bind(small_world).act_batch(obs)[0])
    assert a not in window and 0 <= a < small_world.n_items
    # With no genres at all, no item is "liked"; the rule falls back to the window tier (all fresh) and picks unseen.
    from dataclasses import replace

    bare = replace(small_world, genres=tuple(() for _ in range(small_world.n_items)))
    policy = GenreCyclePolicy(max_history=0, window=0).bind(bare)
    assert not policy._has_genre.any()
    assert int(policy.act_batch(obs)[0]) not in window


def test_genre_cycle_avoids_genres_rated_low_in_the_read_session(default_world):
    """With ``avoid_rated_below`` an item sharing a genre with one of the last ``max_session`` shown items rated
    below the threshold (as the prompt rounds it) drops to tier 0, and the pick avoids it whenever another item
    is above tier 0; items rated low before the read steps, or not low enough, change nothing."""
    world = default_world
    env = ULRecVectorEnv(num_envs=16, world=world, max_episode_steps=12, autoreset_mode="disabled",
                         min_rating=-np.inf, leave_rule="billp", distance_threshold=1e-9)
    plain = GenreCyclePolicy(max_history=6, window=2, seed=1).bind(world, env)
    rated = GenreCyclePolicy(max_history=6, window=2, seed=1, avoid_rated_below=4.0, max_session=4).bind(world, env)
    obs, _ = env.reset(seed=0, options={"users": world.test_users[:16]})
    demoted = 0
    for _ in range(8):
        base, tiers, actions = plain.tiers(obs), rated.tiers(obs), rated.act_batch(obs)
        for r, a in enumerate(actions):
            step = int(obs["step"][r, 0])
            read = range(max(0, step - 4), step)
            low = set().union(set(), *(world.genres[obs["recommended"][r][k]] for k in read
                                       if round(float(obs["rewards"][r][k]), 1) < 4.0))
            hit = np.array([bool(set(world.genres[i]) & low) for i in range(world.n_items)]) & (base[r] >= 0)
            expect = np.where(hit, 0, base[r])
            assert (tiers[r] == expect).all()
            demoted += int((hit & (base[r] > 0)).sum())
            if tiers[r].max() > 0:
                assert not hit[a]
        obs, _, _, _, _ = env.step(actions)
    assert demoted > 0
    # A threshold no rating falls under leaves the tiers as they were.
    never = GenreCyclePolicy(max_history=6, window=2, avoid_rated_below=-1.0, max_session=2).bind(world)
    assert (never.tiers(obs) == plain.tiers(obs)).all()
    for bad in ({"avoid_rated_below": float("nan")}, {"avoid_rated_below": "3"}, {"max_session": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenreCyclePolicy(**bad)
    from agents.benchmark import make_policy

    spec = make_policy("genre-cycle-words:avoid_rated_below=3.0", max_history=6, window=2, max_session=4)
    assert (spec.avoid_rated_below, spec.max_session, spec.copy_words) == (3.0, 4, True)


def test_genre_cycle_is_seeded_and_validates(small_world):
    env = ULRecVectorEnv(num_envs=4, world=small_world, max_episode_steps=5, autoreset_mode="disabled")
    policy = GenreCyclePolicy(seed=0)  # one object: run_policy's reset(seed) alone must make runs repeat
    runs = [run_policy(policy, small_world, small_world.test_users[:4], seed=s, env=env).items for s in (3, 3, 4)]
    assert all((a == b).all() for a, b in zip(runs[0], runs[1]))
    assert any((a != b).any() for a, b in zip(runs[0], runs[2]) if a.size == b.size) or any(
        a.size != b.size for a, b in zip(runs[0], runs[2]))
    for bad in ({"max_history": -1}, {"window": True}, {"window": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenreCyclePolicy(**bad)


def test_title_words():
    assert title_words("The Lost Temple 2") == {"lost", "temple"}
    assert title_words("Star Wars (1977)") == {"star", "wars"}
    assert title_words("Up") == frozenset()


def test_make_policy_passes_the_history_length():
    from agents.benchmark import make_policy

    p = make_policy("genre-cycle", max_history=6, seed=2)
    assert isinstance(p, GenreCyclePolicy) and p.max_history == 6 and p.name == "genre-cycle"
    assert not p.copy_words and make_policy("genre-cycle-words").copy_words
    q = make_policy("genre-cycle", max_history=0, window=1)
    assert (q.max_history, q.window) == (0, 1)


def test_every_policy_honours_the_one_interface(small_world):
    """act_batch returns int64 ids; decode_batch returns them with records (None for policies without);
    reset(None) goes back to the constructor's seed, so the same decisions follow."""
    from agents.registry import make

    env = ULRecVectorEnv(num_envs=4, world=small_world, max_episode_steps=5)
    obs, _ = env.reset(seed=0, options={"users": small_world.test_users[:4]})
    for name in ("random", "popular", "greedy", "mmr", "genre-cycle", "genre-cycle-words", "oracle"):
        policy = make(name).bind(small_world, env)
        actions = policy.act_batch(obs)
        assert isinstance(actions, np.ndarray) and actions.dtype == np.int64 and actions.shape == (4,), name
        again, records = policy.decode_batch(obs)
        assert records is None, name
        policy.reset(None)
        first = policy.act_batch(obs)
        policy.reset(None)
        assert np.array_equal(first, policy.act_batch(obs)), name
        assert isinstance(policy.act({k: v[0] for k, v in obs.items()}), int), name


def test_genre_cycle_spread_prefers_genres_absent_from_the_wider_window(small_world):
    """With ``spread`` the rule's tiers are unchanged, and each pick lies in the highest tier and, within it, has
    the fewest overlaps with the last ``spread`` recommended items; without it, the overlap count is not consulted."""
    env = ULRecVectorEnv(num_envs=8, world=small_world, max_episode_steps=6, autoreset_mode="disabled")
    plain = GenreCyclePolicy(max_history=6, window=2, seed=0).bind(small_world)
    wide = GenreCyclePolicy(max_history=6, window=2, seed=0, spread=4, max_session=4).bind(small_world)
    obs, _ = env.reset(seed=0, options={"users": small_world.test_users[:8]})
    preferred = 0
    for _ in range(5):
        tier, count = wide.tiers(obs), wide.overlaps(obs)
        assert (tier == plain.tiers(obs)).all()
        actions = wide.act_batch(obs)
        for i, a in enumerate(actions):
            top = tier[i] == tier[i].max()
            assert tier[i, a] == tier[i].max() and count[i, a] == count[i][top].min()
            preferred += count[i][top].min() < count[i][top].max()
        obs, _, terminated, truncated, _ = env.step(actions)
        if (terminated | truncated).all():
            break
    assert preferred > 0  # the preference decided some picks: some top tiers held items with more overlaps
    assert (GenreCyclePolicy().bind(small_world).overlaps(obs) == 0).all()
    with pytest.raises(ValueError, match="spread"):
        GenreCyclePolicy(spread=5, max_session=4)
    with pytest.raises(ValueError, match="spread"):
        GenreCyclePolicy(spread=-1)
    from agents.benchmark import make_policy

    spec = make_policy("genre-cycle-words:spread=4", max_history=6, window=2, max_session=4)
    assert (spec.spread, spec.copy_words, spec.max_session) == (4, True, 4)
