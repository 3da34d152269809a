"""Reward model and MovieLens-100k world: held-out RMSE against the bias baseline, fit and cache-hit load times,
and the echo chamber (greedy-by-rating session length against a planner's) under the world's calibrated
settings.

    python benchmarks/bench_reward_model.py [--path ML100K_FOLDER] [--split-seeds 0 1 2] [--users 189]
        [--sweep 0.15 0.25 0.35] [--json benchmarks/results/reward_model.json]

Needs MovieLens-100k (a GroupLens/RecBole folder via --path, or ``pip install --no-deps recbole``). Uses a
private cache folder so the cold build and the cache hit are both measured. The planner is
``agents.oracle.OraclePolicy`` when importable, else the simple planner below.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ulrec_env import ULRecEnv
from ulrec_env.reward_model import evaluate_split
from ulrec_env.user_model import redundancy
from ulrec_env.worlds.movielens import _parse, find_movielens_100k, movielens_100k
from train.provenance import cpu_model


def greedy_action(env: ULRecEnv) -> int:
    """The short-term recommender: the highest predicted rating not yet shown."""
    score = env.world.ratings[env.user].astype(np.float64)
    score[list(env.shown)] = -np.inf
    return int(score.argmax())


def simple_planner_action(env: ULRecEnv) -> int:
    """The best-rated unshown item whose redundancy with the recent window is lowest-but-tolerable:
    among items rated at or above the user's dislike threshold with redundancy <= 0.5, the best-rated; else the least redundant."""
    w, cfg = env.world, env.config
    rating = w.ratings[env.user].astype(np.float64)
    win = list(env.shown[-cfg.window:])
    red = redundancy(w.distance[:, win].astype(np.float64), cfg.distance_threshold) if win else np.zeros(w.n_items)
    ok = rating >= env.population.min_rating_of(env.user)
    ok[list(env.shown)] = False
    score = np.where(ok & (red <= 0.5), rating, -np.inf)
    if np.isfinite(score).any():
        return int(score.argmax())
    return int(np.where(ok, -red, -np.inf).argmax())


def session_lengths(world, users: np.ndarray, policy: Callable[[ULRecEnv], Callable[[dict], int]], max_steps: int = 100,
                    **settings) -> np.ndarray:
    """Continued steps per session (one deterministic session per user), capped at ``max_steps``.

    ``policy(env)`` returns the acting function ``act(obs) -> item`` for that environment.
    """
    env = ULRecEnv(world=world, **settings)
    act = policy(env)
    out = []
    for u in users.tolist():
        obs, _ = env.reset(seed=0, options={"user": u})
        n = 0
        for _ in range(max_steps):
            obs, _, terminated, _, _ = env.step(act(obs))
            if terminated:
                break
            n += 1
        out.append(n)
    return np.asarray(out)


def greedy(env: ULRecEnv) -> Callable[[dict], int]:
    return lambda obs: greedy_action(env)


def simple_planner(env: ULRecEnv) -> Callable[[dict], int]:
    return lambda obs: simple_planner_action(env)


def oracle_or_simple(beam_width: int) -> tuple[str, Callable[[ULRecEnv], Callable[[dict], int]]]:
    """The lead's oracle planner when ``agents`` is importable, else :func:`simple_planner`."""
    try:
        from agents.oracle import OraclePolicy
    except ImportError:
        return "simple planner", simple_planner

    def make(env: ULRecEnv) -> Callable[[dict], int]:
        policy = OraclePolicy(beam_width=beam_width, horizon=100).bind(env.world, env)
        return policy.act

    return f"oracle (beam {beam_width})", make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default=None, help="MovieLens-100k folder or zip (default: recbole's copy)")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--users", type=int, default=0, help="test users per policy (0: all)")
    ap.add_argument("--beam", type=int, default=4, help="beam width of the oracle planner")
    ap.add_argument("--simple-planner", action="store_true", help="use the simple planner even if agents imports")
    ap.add_argument("--sweep", type=float, nargs="*", default=[], help="also try these threshold quantiles")
    ap.add_argument("--json", default="benchmarks/results/reward_model.json")
    args = ap.parse_args()

    fmt, files, source = find_movielens_100k(args.path)
    log, _, _ = _parse(fmt, files, source)
    n_users, n_items = len(log.user_ids), len(log.item_ids)

    rows = []
    for s in args.split_seeds:
        rep = evaluate_split(log.user_idx, log.item_idx, log.rating, n_users, n_items, seed=s, rating_scale=(1.0, 5.0))
        rows.append(rep)
    print("Reward model on MovieLens-100k, random 80/20 rating splits")
    print(f"{'split seed':>10} | {'MF RMSE':>8} | {'bias RMSE':>9} | {'fit s':>6}")
    for r in rows:
        print(f"{r['split_seed']:>10} | {r['rmse']:8.4f} | {r['bias_rmse']:9.4f} | {r['fit_seconds']:6.2f}")
    mean_rmse = float(np.mean([r["rmse"] for r in rows]))
    mean_bias = float(np.mean([r["bias_rmse"] for r in rows]))
    print(f"{'mean':>10} | {mean_rmse:8.4f} | {mean_bias:9.4f} |")
    print(f"hyperparameters: {rows[0]['hyper']}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        world = movielens_100k(args.path, cache=tmp)
        cold = time.perf_counter() - t0
        hits = []
        for _ in range(3):
            t0 = time.perf_counter()
            again = movielens_100k(args.path, cache=tmp)
            hits.append(time.perf_counter() - t0)
        assert again.fingerprint() == world.fingerprint()
    print(f"\nworld build (cold, fit + distance + cache write): {cold:.2f} s; cache hit: {min(hits):.3f} s "
          f"(best of 3; {', '.join(f'{h:.3f}' for h in hits)})")
    print(f"world.fit_report: rmse {world.fit_report['rmse']}, bias_rmse {world.fit_report['bias_rmse']}, "
          f"fit_seconds {world.fit_report['fit_seconds']}")
    print(f"env_defaults: {world.env_defaults}")

    users = world.test_users if args.users <= 0 else world.test_users[: args.users]
    quantiles = [None] + list(args.sweep)
    sessions = []
    print(f"\nSession length (continued steps, max 100) over {users.size} test users, satisfaction rule")
    print(f"{'threshold':>10} | {'greedy':>7} | {'planner':>8} | {'ratio':>6} | planner used")
    for q in quantiles:
        settings = {}
        if q is not None:
            off = world.distance[np.triu_indices(world.n_items, 1)]
            settings["distance_threshold"] = float(np.quantile(off, q))
        thr = settings.get("distance_threshold", world.env_defaults["distance_threshold"])
        g = session_lengths(world, users, greedy, **settings)
        name, make = ("simple planner", simple_planner) if args.simple_planner else oracle_or_simple(args.beam)
        t0 = time.perf_counter()
        p = session_lengths(world, users, make, **settings)
        secs = time.perf_counter() - t0
        ratio = g.mean() / max(p.mean(), 1e-9)
        label = "default" if q is None else f"q={q:g}"
        print(f"{thr:>10.2f} | {g.mean():7.2f} | {p.mean():8.2f} | {ratio:6.1%} | {name} ({label}, {secs:.0f} s)")
        sessions.append({"quantile": q, "distance_threshold": thr, "greedy_len": float(g.mean()),
                         "planner_len": float(p.mean()), "ratio": float(ratio), "planner": name,
                         "greedy_len_ci95": float(1.96 * g.std(ddof=1) / np.sqrt(g.size)),
                         "planner_len_ci95": float(1.96 * p.std(ddof=1) / np.sqrt(p.size))})

    out = {
        "data": {"format": fmt, "source": source, "n_users": n_users, "n_items": n_items, "n_ratings": int(log.rating.size)},
        "splits": rows,
        "mean_rmse": mean_rmse,
        "mean_bias_rmse": mean_bias,
        "world_fit_report": dict(world.fit_report),
        "world_build_seconds": cold,
        "cache_hit_seconds": min(hits),
        "env_defaults": dict(world.env_defaults),
        "sessions": sessions,
        "machine": {"python": platform.python_version(), "processor": cpu_model()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
