"""Paired differences between a loop run's evaluations: each ULRec against the model it was tuned from and against
ULRec-P, user by user on the run's test users (``train.loop.paired_steps``).

    python benchmarks/paired_evals.py RUN [RUN ...] [--json benchmarks/results/paired-evals.json] [--no-progress]

A run's ``metrics.json`` holds each user's mean Len and Traj Reward (``per_user``) from the version of ulrec that
added them; for a run written before, this script evaluates the base model and each adapter again exactly as the
loop did (``train.loop.evaluate_llm`` with the run's settings, test users, greedy decoding and seed) and says
whether the Len it gets is the one the run recorded. An adapter that several runs share (a fork's copied
iterations) is evaluated once. A row is evaluated with the settings of the run whose ``metrics.json`` holds it,
so a fork that changed an evaluation setting would evaluate its parent's rows otherwise than the parent did; the
note on any Len not reproduced would show it. On
the same users, each once, the interval of the mean per-user difference is never wider than the sum of the two
rows' own half-widths, which is what "intervals apart" asks the difference to exceed, and narrower still where a
user who stays long with one model tends to stay long with the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ulrec_env.safe_io import read_text_bounded  # noqa: E402

Evaluate = Callable[[Path, Mapping[str, Any]], dict[str, Any]]


def reevaluate(run: Path, row: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """``row``'s model (the base model, or its ``adapter``) evaluated again as run ``run``'s loop evaluated it
    (``benchmarks/eval_adapter.py``'s ``evaluate``)."""
    from benchmarks.eval_adapter import evaluate

    adapter = row.get("adapter")
    if adapter is not None and not Path(adapter).is_dir():
        raise SystemExit(f"{run}: the adapter of {row['policy']} @{row.get('iteration')} ({adapter}) is not there; "
                         "run this script from the folder the loop ran in.")
    return evaluate(run, None if adapter is None else Path(adapter), row["policy"], progress=progress)


def evaluation_settings(run: Path) -> dict[str, Any]:
    """What decides a loop run's evaluation besides the adapter: its world, model, seed, test users, environment,
    prompt format, dtype, engine and generation batch."""
    from train.loop import LoopSettings

    s = LoopSettings.from_run(run)
    return {"world": s.world, "model": s.model, "seed": s.seed, "eval_episodes": s.eval_episodes, "env": s.env,
            "max_episode_steps": s.max_episode_steps, "prompt": s.prompt_format.to_dict(), "dtype": s.dtype,
            "engine": s.engine, "gen_batch_size": s.gen_batch_size}


def run_pairs(run: Path, evaluate: Evaluate, memo: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paired differences of one run, with each evaluation's per-user means from the run's ``metrics.json``
    or, where it has none, from ``evaluate`` (``memo`` keeps those by settings and adapter across runs)."""
    from train.loop import paired_steps

    path = run / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no such metrics.json; name the folder of a finished `ulrec loop` run.")
    doc = json.loads(read_text_bounded(path, "a run's metrics.json"))
    settings = evaluation_settings(run)
    evals, replayed = [], []
    for e in doc["evals"]:
        if isinstance(e.get("per_user"), Mapping):
            evals.append(e)
            continue
        key = json.dumps([settings, e.get("adapter")], sort_keys=True, default=str)
        if key not in memo:
            memo[key] = evaluate(run, e)
        again = memo[key]
        replayed.append({"policy": e["policy"], "iteration": e.get("iteration"), "adapter": e.get("adapter"),
                         "len_recorded": e["len_mean"], "len_again": again["len_mean"],
                         "same": abs(again["len_mean"] - e["len_mean"]) < 1e-9, "per_user": again["per_user"]})
        evals.append({**e, "per_user": again["per_user"]})
    return {"run": str(run), "evals": [{k: e[k] for k in ("policy", "iteration", "len_mean", "len_ci95")}
                                       for e in evals],
            "replayed": replayed, "paired": paired_steps(evals)}


def format_rows(results: list[dict[str, Any]]) -> str:
    """A markdown table: one row per paired difference."""
    lines = ["| run | ULRec | against | Len difference (95% CI) | Traj Reward difference (95% CI) | apart |",
             "|---|---|---|---:|---:|---|"]
    for r in results:
        for p in r["paired"]:
            d, t = p["len"], p["return"]
            apart = "higher" if d["mean"] - d["ci95"] > 0 else "lower" if d["mean"] + d["ci95"] < 0 else "no"
            lines.append(f"| {Path(r['run']).name} | {p['policy']} | {p['against']} | {d['mean']:+.2f} ± {d['ci95']:.2f} "
                         f"| {t['mean']:+.1f} ± {t['ci95']:.1f} | {apart} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, evaluate: Evaluate | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="folders of finished `ulrec loop` runs")
    ap.add_argument("--json", default=None, help="also write the pairs here, with the rows evaluated again and "
                    "their per-user means (so the pairs can be formed again without evaluating)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if evaluate is None:
        def evaluate(run: Path, row: Mapping[str, Any]) -> dict[str, Any]:
            return reevaluate(run, row, progress=not a.no_progress)
    memo: dict[str, dict[str, Any]] = {}
    results = [run_pairs(run, evaluate, memo) for run in a.runs]
    notes = [f"{Path(r['run']).name}: {x['policy']} @{x['iteration']} evaluated again gives Len {x['len_again']:.3f}, "
             f"the run recorded {x['len_recorded']:.3f}" for r in results for x in r["replayed"] if not x["same"]]
    again = sum(len(r["replayed"]) for r in results)
    if again:
        notes.append(f"{again} rows had no per-user means: {len(memo)} evaluations run again, "
                     f"{again - len(notes)} rows with the recorded Len exactly")
    from benchmarks.teacher_tiers import report

    doc = {"results": results}
    report(format_rows(results), notes, doc, a.json)
    return doc


if __name__ == "__main__":
    main()
