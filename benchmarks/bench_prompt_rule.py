"""How far the information in the LLM's prompt can take a recommender: the `genre-cycle` rule against the base
references, at the learning run's horizon (20) and prompt history lengths, on more test users and seeds.

    python benchmarks/bench_prompt_rule.py [--world synthetic] [--episodes 200] [--seeds 3] [--horizon 20]
        [--json benchmarks/results/prompt_rule.json]

`genre-cycle` (and `genre-cycle-words`, which prefers titles sharing a word with the history) reads what the
prompt shows (the genres of the last ``max_history`` history items and of the last
``window`` recommended items) and nothing of the hidden user model; it picks at random among the unseen items
that fit. Its Len is therefore what a recommender that perfectly applies a simple genre rule to the prompt can
reach, a yardstick for the LLM's learning goal. Prints ``ulrec bench``'s table; writes its JSON format.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.baselines import GenreCyclePolicy, GreedyPolicy, MMRPolicy, RandomPolicy  # noqa: E402
from agents.benchmark import benchmark, format_table, write_json  # noqa: E402
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

    policies = {"random": RandomPolicy(seed=0), "greedy": GreedyPolicy(), "mmr": MMRPolicy()}
    for h in (int(x) for x in args.histories.split(",")):
        for w in (int(x) for x in args.windows.split(",")):
            policies[f"genre-cycle h={h} w={w}"] = GenreCyclePolicy(max_history=h, window=w)
            policies[f"genre-cycle-words h={h} w={w}"] = GenreCyclePolicy(max_history=h, window=w, copy_words=True)
    # ulrec bench's runner: the same test users per seed for every policy, each reseeded by the seed.
    doc = benchmark(world, policies, split="test", episodes=args.episodes, seeds=args.seeds,
                    max_episode_steps=args.horizon, progress=False)
    doc["machine"] = platform.platform()
    print(format_table(doc))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
