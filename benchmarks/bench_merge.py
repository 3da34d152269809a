"""What folding an adapter into the model's weights (``merge_adapter``, ``ulrec loop --merge-adapters``) saves,
and what it changes: one adapter of a loop run evaluated as that run evaluates its own (same world, test users,
prompt format, dtype, greedy decoding, seed), unmerged and merged, each timed.

    python benchmarks/bench_merge.py runs/gts4-fast runs/gts4-fast/iter3/ulrec [--users N] [--json OUT]

Prints a table (seconds of sessions and with loading, user-steps per second, Len and Traj Reward with 95% intervals)
and the merged row's paired difference from the unmerged one, with how many users' sessions kept the same length;
``--json`` writes it all. Merging rounds each merged weight once to the run's dtype, so greedy picks can differ
where two items' scores nearly tie: the paired difference says whether that moves Len. Time it on a quiet
machine; ``--order`` picks which evaluation runs first.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_adapter import run_evaluation_setup  # noqa: E402
from train.loop import evaluate_llm  # noqa: E402


def measure(run: Path, adapter: Path, users: int | None = None, order: str = "unmerged-first",
            progress: bool = False) -> dict[str, Any]:
    """Evaluate ``adapter`` on ``run``'s test users (the first ``users`` of them, or all) unmerged and merged.
    Each row is the evaluation's own (its ``"seconds"`` and ``"user_steps_per_s"`` time the sessions) with
    ``"wall_s"``, which also counts loading and merging the model."""
    from agents.evaluation import paired_difference

    settings, world, test = run_evaluation_setup(run, adapter)
    if settings.engine != "transformers":
        raise SystemExit(f"{run} decodes with the {settings.engine} engine; merging is for the transformers one.")
    if users is not None:
        test = test[:users]
    rows: dict[str, dict[str, Any]] = {}
    modes = ["unmerged", "merged"] if order == "unmerged-first" else ["merged", "unmerged"]
    for mode in modes:
        s = dataclasses.replace(settings, merge_adapters=(mode == "merged"))
        start = time.perf_counter()
        row = evaluate_llm(world, s, test, str(adapter), mode, progress=progress)
        row["wall_s"] = time.perf_counter() - start  # loading (and merging) the model included
        rows[mode] = row
    un, me = rows["unmerged"], rows["merged"]
    same = sum(a == b for a, b in zip(un["per_user"]["len"], me["per_user"]["len"]))
    return {"run": str(run), "adapter": str(adapter), "users": len(test), "order": modes,
            "dtype": rows["merged"]["dtype"], "rows": rows,
            "paired_len": paired_difference(un, me, "len"), "paired_return": paired_difference(un, me, "return"),
            "same_len_users": same, "speedup": un["seconds"] / me["seconds"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the loop run whose settings and test users to use")
    ap.add_argument("adapter", type=Path, help="the adapter folder to evaluate")
    ap.add_argument("--users", type=int, default=None, help="only the first N test users (default: all)")
    ap.add_argument("--order", choices=("unmerged-first", "merged-first"), default="unmerged-first")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.users is not None and a.users < 1:
        ap.error(f"--users must be a positive integer, got {a.users}.")
    out = measure(a.run, a.adapter, users=a.users, order=a.order, progress=not a.no_progress)
    print(f"{out['adapter']} on {out['users']} test users of {out['run']} (dtype {out['dtype']}, greedy)\n")
    print("| adapter | sessions (s) | with loading (s) | user-steps/s | Len (95% CI) | Traj Reward (95% CI) |")
    print("|---|---:|---:|---:|---|---|")
    for mode in out["order"]:
        r = out["rows"][mode]
        print(f"| {mode} | {r['seconds']:.1f} | {r['wall_s']:.1f} | {r['user_steps_per_s']:.2f} | "
              f"{r['len_mean']:.3f} ± {r['len_ci95']:.2f} "
              f"| {r['return_mean']:.2f} ± {r['return_ci95']:.1f} |")
    pl, pr = out["paired_len"], out["paired_return"]
    print(f"\nmerged - unmerged, paired: Len {pl['mean']:+.3f} ± {pl['ci95']:.3f}, Traj Reward {pr['mean']:+.2f} ± "
          f"{pr['ci95']:.2f}; same Len for {out['same_len_users']} of {out['users']} users; "
          f"unmerged/merged time {out['speedup']:.2f}x")
    if a.json is not None:
        from agents.benchmark import write_json

        write_json(out, a.json)
    return out


if __name__ == "__main__":
    main()
