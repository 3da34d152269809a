"""What an evaluation of the loop costs in each dtype on this machine: the base model's greedy sessions on the
first test users, timed per dtype, with the machine record of ``train.provenance``.

    python benchmarks/bench_eval_dtype.py [--users 64] [--dtypes float32,bfloat16] [--completion genres-title]
        [--json benchmarks/results/eval_dtype.json]

Each dtype runs ``train.loop.evaluate_llm`` (the loop's own evaluation: the headline preset's prompts, horizon and
batch size) once on the same users, after a short warm-up of 8 users; the model is loaded inside the timed call,
as in the loop. ``dtype="auto"`` picks bfloat16 only on CPUs with AMX or AVX512-BF16 (and on GPUs that support
it); this script shows what the other choice would cost. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.models import DTYPE_CHOICES, dtype_name, resolve_device, resolve_dtype  # noqa: E402
from agents.prompting import COMPLETION_STYLES  # noqa: E402
from train.loop import PRESETS, eval_users, evaluate_llm  # noqa: E402
from train.provenance import machine_record  # noqa: E402
from ulrec_env.storage import atomic_write_text  # noqa: E402
from ulrec_env.worlds.spec import world_from_spec  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=64, help="test users (the first of the preset's evaluation users)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated, of {', '.join(DTYPE_CHOICES)}")
    ap.add_argument("--completion", default="genres-title", choices=COMPLETION_STYLES)
    ap.add_argument("--json", default="benchmarks/results/eval_dtype.json")
    args = ap.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPE_CHOICES]
    if bad or not dtypes:
        raise SystemExit(f"--dtypes: {bad or 'none given'}; choose of {', '.join(DTYPE_CHOICES)}")
    if args.users < 1:
        raise SystemExit("--users must be >= 1")

    base = dataclasses.replace(PRESETS["headline"], completion=args.completion)
    world = world_from_spec(base.world)
    users = eval_users(world, base)[: args.users]
    rows = []
    for dt in dtypes:
        s = dataclasses.replace(base, dtype=dt)
        evaluate_llm(world, s, users[:8], None, "base", progress=False)  # warm-up: conversion cache, allocator
        t0 = time.perf_counter()
        r = evaluate_llm(world, s, users, None, "base", progress=False)
        sec = time.perf_counter() - t0
        rows.append({"dtype": dt, "ran_as": r.get("dtype"), "seconds": sec, "users": len(users),
                     "len_mean": r["len_mean"]})
    auto = dtype_name(resolve_dtype("auto", resolve_device("auto")))
    print(f"{len(users)} test users, {args.completion} completions; dtype auto here: {auto}")
    print("| dtype | seconds | Len |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['ran_as']} | {r['seconds']:.1f} | {r['len_mean']:.3f} |")
    doc = {"completion": args.completion, "auto_dtype": auto, "rows": rows, "machine": machine_record()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
