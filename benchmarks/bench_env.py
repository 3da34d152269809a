"""Environment speed: ULRec-v0 (single, through gym.make) and the native vector env against the seed's rule
written the way the authors run it (pure Python per step, titles), on the same data and actions, in one run.

    python benchmarks/bench_env.py [--steps 200000] [--num-envs 1024] [--json benchmarks/results/env_speed.json]

Prints a table of user-steps per second and the ratios to the reference; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the reference lives with the tests, outside the installed packages

import ulrec_env  # noqa: E402,F401  (registers ULRec-v0)
from tests.ulrec_env.billp_reference import BiLLPReference  # noqa: E402
from ulrec_env.worlds import synthetic  # noqa: E402
from train.provenance import cpu_model  # noqa: E402


def _actions(world, n: int, seed: int = 0) -> np.ndarray:
    # Uniformly random items: every implementation sees the same sequence of actions.
    rng = np.random.default_rng(seed)
    return rng.integers(0, world.n_items, size=n)


def bench_reference(world, users, actions, thr, window, faithful) -> tuple[float, int]:
    ref = BiLLPReference(world.titles, world.ratings, world.distance, window, thr, -np.inf, faithful=faithful)
    titles = world.titles
    t0 = time.perf_counter()
    k = 0
    ui = 0
    ref.reset(int(users[0]))
    for a in actions.tolist():
        _, leave = ref.step(titles[a])
        k += 1
        if leave or len(ref.item_list) >= 100:
            ui += 1
            ref.reset(int(users[ui % len(users)]))
    return k / (time.perf_counter() - t0), k


def bench_single(world, users, actions, rule_kw) -> tuple[float, int]:
    env = gym.make("ULRec-v0", world=world, **rule_kw)
    ui = 0
    env.reset(seed=0, options={"user": int(users[0])})
    t0 = time.perf_counter()
    for a in actions.tolist():
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            ui += 1
            env.reset(options={"user": int(users[ui % len(users)])})
    return len(actions) / (time.perf_counter() - t0), len(actions)


def bench_vector(world, num_envs, n_steps, rule_kw) -> tuple[float, int]:
    venv = gym.make_vec("ULRec-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", world=world, **rule_kw)
    venv.reset(seed=0)
    rng = np.random.default_rng(1)
    acts = rng.integers(0, world.n_items, size=(n_steps, num_envs))
    t0 = time.perf_counter()
    for t in range(n_steps):
        venv.step(acts[t])
    return n_steps * num_envs / (time.perf_counter() - t0), n_steps * num_envs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200_000, help="user-steps for the single env and the reference")
    p.add_argument("--num-envs", type=int, default=1024)
    p.add_argument("--vector-steps", type=int, default=500, help="batched steps of the vector env")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is reported")
    p.add_argument("--json", default="benchmarks/results/env_speed.json")
    args = p.parse_args(argv)

    world = synthetic()
    thr = float(world.env_defaults["distance_threshold"])
    users = world.test_users
    actions = _actions(world, args.steps)
    billp_kw = {"leave_rule": "billp", "min_rating": -np.inf}
    sat_kw = {"min_rating": -np.inf}
    runs = {
        ("reference: authors' code structure", "billp"): lambda: bench_reference(world, users, actions, thr, 4, True),
        ("reference: tight pure Python", "billp"): lambda: bench_reference(world, users, actions, thr, 4, False),
        ("gym.make('ULRec-v0') single env", "billp"): lambda: bench_single(world, users, actions, billp_kw),
        (f"native vector env, {args.num_envs} users", "billp"): lambda: bench_vector(world, args.num_envs, args.vector_steps, billp_kw),
        ("gym.make('ULRec-v0') single env", "satisfaction"): lambda: bench_single(world, users, actions, sat_kw),
        (f"native vector env, {args.num_envs} users", "satisfaction"): lambda: bench_vector(world, args.num_envs, args.vector_steps, sat_kw),
    }
    # Rounds interleave the implementations so that load on the machine hits all of them alike; each
    # implementation's best round is reported.
    best: dict = {}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            rate, k = fn()
            if rate > best.get(key, (0.0, 0))[0]:
                best[key] = (rate, k)
    rows = [(name, rule, rate, k) for (name, rule), (rate, k) in best.items()]
    ref_rate = rows[0][2]

    tight_rate = rows[1][2]
    print(f"{'implementation':42s} {'rule':13s} {'user-steps/s':>14s} {'x authors':>10s} {'x tight':>8s}")
    for name, rule, rate, _ in rows:
        print(f"{name:42s} {rule:13s} {rate:14,.0f} {rate / ref_rate:10.2f} {rate / tight_rate:8.2f}")
    result = {
        "world": world.name,
        "machine": {"processor": cpu_model(), "python": platform.python_version()},
        "settings": {"steps": args.steps, "rounds": args.rounds, "num_envs": args.num_envs, "vector_steps": args.vector_steps,
                     "distance_threshold": thr, "window": 4, "min_rating": "-inf (rating rule off so sessions last)"},
        "results": [{"implementation": n, "rule": r, "user_steps_per_s": rate, "ratio_to_reference": rate / ref_rate, "ratio_to_tight_reference": rate / tight_rate,
                     "user_steps": k} for n, r, rate, k in rows],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
