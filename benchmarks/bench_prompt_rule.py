"""How far the information in the LLM's prompt can take a recommender: the `genre-cycle` rule against the base
references, at the learning run's horizon (20) and prompt history lengths, on more test users and seeds.

    python benchmarks/bench_prompt_rule.py [--world synthetic] [--episodes 200] [--seeds 3] [--horizon 20]
        [--rated-below 2.5,3.0,3.5] [--spreads 3,4] [--max-session 4] [--json benchmarks/results/prompt_rule.json]

`genre-cycle` (and `genre-cycle-words`, which prefers titles sharing a word with the history) reads what the
prompt shows (the genres of the last ``max_history`` history items and of the last
``window`` recommended items) and nothing of the hidden user model; it picks at random among the unseen items
that fit. Its Len is therefore what a recommender that perfectly applies a simple genre rule to the prompt can
reach, a yardstick for the LLM's learning goal. The rows named ``rated<T`` also read the ratings the prompt shows
(the last ``--max-session`` steps): they avoid the genres of those rated below T (``avoid_rated_below``). The rows
named ``spread=S`` prefer, within each tier, the items sharing a genre with the fewest of the last S recommended
items (``spread``, at most ``--max-session``). Prints ``ulrec bench``'s table; writes its JSON format.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.baselines import GenreCyclePolicy, GreedyPolicy, MMRPolicy, RandomPolicy  # noqa: E402
from agents.benchmark import benchmark, format_table, write_json  # noqa: E402
from agents.oracle import OraclePolicy  # noqa: E402
from ulrec_env.worlds.spec import world_from_spec  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="synthetic", help="a world spec, as in ulrec bench (synthetic, ml-100k, ...)")
    ap.add_argument("--episodes", type=int, default=200, help="test users per seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--histories", default="6,15", help="comma-separated max_history values")
    ap.add_argument("--windows", default="2,3,4", help="comma-separated window values")
    ap.add_argument("--rated-below", default="2.5,3.0,3.5",
                    help="comma-separated thresholds for the rating-reading rows (window 2; empty: none)")
    ap.add_argument("--spreads", default="3,4",
                    help="comma-separated spread values for genre-cycle-words rows (window 2; empty: none)")
    ap.add_argument("--max-session", type=int, default=4, help="session steps the prompt shows (their ratings)")
    ap.add_argument("--json", default="benchmarks/results/prompt_rule.json")
    args = ap.parse_args(argv)
    world = world_from_spec(args.world)

    policies = {"random": RandomPolicy(seed=0), "greedy": GreedyPolicy(), "mmr": MMRPolicy(), "oracle": OraclePolicy()}
    for h in (int(x) for x in args.histories.split(",")):
        for w in (int(x) for x in args.windows.split(",")):
            policies[f"genre-cycle h={h} w={w}"] = GenreCyclePolicy(max_history=h, window=w)
            policies[f"genre-cycle-words h={h} w={w}"] = GenreCyclePolicy(max_history=h, window=w, copy_words=True)
        for t in (float(x) for x in args.rated_below.split(",") if x.strip()):
            policies[f"genre-cycle-words h={h} w=2 rated<{t:g}"] = GenreCyclePolicy(
                max_history=h, window=2, copy_words=True, avoid_rated_below=t, max_session=args.max_session)
        for sp in (int(x) for x in args.spreads.split(",") if x.strip()):
            policies[f"genre-cycle-words h={h} w=2 spread={sp}"] = GenreCyclePolicy(
                max_history=h, window=2, copy_words=True, spread=sp, max_session=args.max_session)
    # ulrec bench's runner: the same test users per seed for every policy, each reseeded by the seed.
    doc = benchmark(world, policies, split="test", episodes=args.episodes, seeds=args.seeds,
                    max_episode_steps=args.horizon, progress=False)
    doc["machine"] = platform.platform()
    # Each policy's Traj Reward as a share of the oracle's, on the same users and seeds (the loop's oracle share).
    oracle = next(r["return_mean"] for r in doc["results"] if r["policy"] == "oracle")
    doc["oracle_share"] = {r["policy"]: r["return_mean"] / oracle for r in doc["results"]}
    print(format_table(doc))
    best = max((r for r in doc["results"] if not r["peeks"]), key=lambda r: r["return_mean"])
    print(f"share of the oracle's Traj Reward ({oracle:.1f}), best prompt-reading rule: {best['policy']} "
          f"{doc['oracle_share'][best['policy']]:.1%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
