"""The `ulrec` command line: bench, rollout, label, tune, loop, compare, demo."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


def _episodes(value: str) -> int | str:
    if value == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--episodes takes a positive integer or 'all', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--episodes must be >= 1, got {n}")
    return n


def _add_env_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("environment (ULRec-v0 settings; defaults come from the world)")
    g.add_argument("--world", default="synthetic", help="synthetic | synthetic:SEED | ml-100k | ml-100k:PATH | billp:PATH:DATASET:SPLIT")
    g.add_argument("--leave-rule", choices=["satisfaction", "billp"], help="user model (default: satisfaction)")
    g.add_argument("--window", type=int, help="recent items compared for redundancy")
    g.add_argument("--distance-threshold", type=float, help="distance of half similarity / billp cut-off")
    g.add_argument("--min-rating", type=float, help="leave at once below this rating")
    g.add_argument("--leave-penalty", type=float, help="reward of the leaving step")
    g.add_argument("--stochastic", action="store_true", default=None, help="users leave through a smooth hazard")
    g.add_argument("--satisfaction-floor", type=float, help="satisfaction below which users leave")
    g.add_argument("--max-episode-steps", type=int, default=100, help="horizon (default 100)")


def _env_settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("leave_rule", "window", "distance_threshold", "min_rating", "leave_penalty", "stochastic", "satisfaction_floor")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ulrec", description="Long-term LLM recommendation: simulate, benchmark, tune.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bench", help="benchmark policies in the environment; prints a table, writes JSON and a plot")
    _add_env_options(b)
    b.add_argument("--split", default="test", choices=["train", "test", "all"])
    b.add_argument("--policies", default="random,popular,greedy,mmr,oracle",
                   help="comma-separated: random, popular, greedy, mmr, oracle, llm")
    b.add_argument("--episodes", type=_episodes, default=200, help="sessions per seed, or 'all' users of the split")
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    b.add_argument("--batch-size", type=int, default=256, help="sessions stepped together")
    b.add_argument("--llm-model", default=None, help="model of the llm policy (default SmolLM2-135M-Instruct)")
    b.add_argument("--llm-adapter", default=None, help="LoRA adapter folder for the llm policy")
    b.add_argument("--json", default=None, help="write the results here")
    b.add_argument("--plot", default=None, help="write a PNG plot here")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_bench)
    return parser


def _cmd_bench(args: argparse.Namespace) -> int:
    from agents.benchmark import POLICY_NAMES, benchmark, format_table, plot_results, write_json
    from ulrec_env.worlds.spec import world_from_spec

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICY_NAMES]
    if bad or not names:
        raise SystemExit(f"ulrec bench: unknown policy {', '.join(bad) or '(none)'}; valid: {', '.join(POLICY_NAMES)}")
    if args.seeds < 1:
        raise SystemExit("ulrec bench: --seeds must be >= 1")
    world = world_from_spec(args.world)
    doc = benchmark(world, names, split=args.split, episodes=args.episodes, seeds=args.seeds,
                    env_settings=_env_settings(args), max_episode_steps=args.max_episode_steps,
                    batch_size=args.batch_size, progress=not args.no_progress,
                    policy_options={"llm_model": args.llm_model, "llm_adapter": args.llm_adapter})
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_results(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"ulrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
