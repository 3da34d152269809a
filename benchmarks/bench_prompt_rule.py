"""How far the information in the LLM's prompt can take a recommender: the `genre-cycle` rule against the base
references, at the learning run's horizon (20) and prompt history lengths, on more test users and seeds.

    python benchmarks/bench_prompt_rule.py [--world synthetic] [--episodes 200] [--seeds 3] [--horizon 20]
        [--json benchmarks/results/prompt_rule.json]

`genre-cycle` (and `genre-cycle-words`, which prefers titles sharing a word with the history) reads what the
prompt shows (the genres of the last ``max_history`` history items and of the last
``window`` recommended items) and nothing of the hidden user model; it picks at random among the unseen items
that fit. Its Len is therefore what a recommender that perfectly applies a simple genre rule to the prompt can
reach, a yardstick for the LLM's learning goal. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.baselines import GenreCyclePolicy, GreedyPolicy, MMRPolicy, RandomPolicy  # noqa: E402
from agents.evaluation import choose_users, mean_ci95, run_policy  # noqa: E402
from ulrec_env.worlds.spec import world_from_spec  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="synthetic", help="a world spec, as in ulrec bench (synthetic, ml-100k, ...)")
    ap.add_argument("--episodes", type=int, default=200, help="test users per seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--histories", default="6,15", help="comma-separated max_history values")
    ap.add_argument("--windows", default="2,3,4", help="comma-separated window values")
    ap.add_argument("--json", default="benchmarks/results/prompt_rule.json")
    args = ap.parse_args(argv)
    world = world_from_spec(args.world)

    policies = {"random": lambda: RandomPolicy(seed=0), "greedy *": GreedyPolicy, "mmr *": MMRPolicy}
    for h in (int(x) for x in args.histories.split(",")):
        for w in (int(x) for x in args.windows.split(",")):
            policies[f"genre-cycle h={h} w={w}"] = lambda h=h, w=w: GenreCyclePolicy(max_history=h, window=w)
            policies[f"genre-cycle-words h={h} w={w}"] = lambda h=h, w=w: GenreCyclePolicy(
                max_history=h, window=w, copy_words=True)

    rows = []
    print(f"{args.world}: {args.episodes} test users x {args.seeds} seeds, horizon {args.horizon}")
    print(f"{'policy':<30} {'Len (95% CI)':>16} {'Traj Reward':>16}  leave reasons %")
    for name, make in policies.items():
        lengths, returns, reasons = [], [], []
        for seed in range(args.seeds):
            users = choose_users(world, "test", args.episodes, seed)
            s = run_policy(make(), world, users, seed=seed, max_episode_steps=args.horizon)
            lengths.append(s.lengths)
            returns.append(s.returns)
            reasons.extend(s.leave_reasons)
        lengths, returns = np.concatenate(lengths), np.concatenate(returns)
        (lm, lc), (rm, rc) = mean_ci95(lengths), mean_ci95(returns)
        kinds, counts = np.unique(reasons, return_counts=True)
        shares = {str(k): round(100.0 * c / len(reasons), 1) for k, c in sorted(zip(kinds, counts), key=lambda t: -t[1])}
        rows.append({"policy": name, "len_mean": lm, "len_ci95": lc, "return_mean": rm, "return_ci95": rc,
                     "leave_reasons": shares, "sessions": int(lengths.size)})
        why = ", ".join(f"{k} {v:g}" for k, v in shares.items())
        print(f"{name:<30} {lm:>8.2f} ± {lc:<5.2f} {rm:>8.1f} ± {rc:<5.1f}  {why}")
    doc = {"world": args.world, "episodes": args.episodes, "seeds": args.seeds, "horizon": args.horizon,
           "machine": platform.platform(), "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
