"""How closely the loop's policies follow the rule that taught them: at every step of their sessions on a run's test
users, which of the `genre-cycle-words` rule's tiers their pick falls in.

    python benchmarks/teacher_tiers.py RUN [--episodes N] [--rules random,greedy,genre-cycle-words] [--no-llm]
        [--llm base,ulrec-p@1] [--json benchmarks/results/teacher-tiers.json]

The rule (``agents.baselines.GenreCyclePolicy.tiers``) ranks every item not shown yet from what the prompt shows:
tier 3 "fresh, liked, shares a word" (no genre among the last recommended items, every genre in the read history, a
title word in common with it), tier 2 "fresh and liked", tier 1 "fresh", tier 0 anything else, which repeats a
genre of the last ``window`` recommendations (what boredom punishes). It picks at random in its highest tier, so a
policy that imitated it would always pick in the highest tier the step offers. For the base model and every adapter
of RUN (``iterK/ulrec-p``, ``iterK/ulrec``), evaluated as the loop evaluates them (greedy decoding, the run's
settings, users and seed), and for the rules named, the table gives Len and the share of steps whose pick was in
the rule's highest available tier, and in each tier. The agents' Len is the run's own evaluation, replayed (the
script checks it against the run's metrics.json where the run has one and says when they differ).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.policy import Policy  # noqa: E402
from ulrec_env.safe_io import read_text_bounded  # noqa: E402

TIER_NAMES = ("repeats a recent genre", "fresh", "fresh and liked", "fresh, liked, shares a word")


class TierProbe(Policy):
    """``inner``'s decisions, unchanged, counted against ``rule``'s tiers on the same observations."""

    def __init__(self, inner: Policy, rule: Any) -> None:
        super().__init__()
        self.inner, self.rule = inner, rule
        self.name, self.peeks = inner.name, inner.peeks
        self.picked = np.zeros(len(TIER_NAMES), dtype=np.int64)  # steps whose pick was in tier t
        self.best = np.zeros(len(TIER_NAMES), dtype=np.int64)  # steps whose highest available tier was t
        self.top = 0  # steps whose pick was in the highest available tier

    def bind(self, world, env=None) -> "TierProbe":
        super().bind(world, env)
        self.inner.bind(world, env)
        self.rule.bind(world)
        return self

    def reset(self, seed: int | None = None) -> None:
        self.inner.reset(seed)

    @property
    def invalid_actions(self) -> int:
        return int(getattr(self.inner, "invalid_actions", 0))

    def _decode_batch(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[Any] | None]:
        actions, records = self.inner.decode_batch(obs)
        tiers = self.rule.tiers(obs)
        picked = tiers[np.arange(len(actions)), actions]
        best = tiers.max(axis=1)
        # A pick of an item already shown (tier -1) counts in no tier and never as the highest.
        self.picked += np.bincount(picked[picked >= 0], minlength=len(TIER_NAMES))[: len(TIER_NAMES)]
        self.best += np.bincount(best[best >= 0], minlength=len(TIER_NAMES))[: len(TIER_NAMES)]
        self.top += int((picked == best).sum())
        return actions, records

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._decode_batch(obs)[0]

    def stats(self) -> dict[str, Any]:
        steps = int(self.best.sum())
        share = (lambda x: float(x) / steps if steps else None)
        return {"steps": steps, "top_share": share(self.top),
                "tier_share": {TIER_NAMES[t]: share(self.picked[t]) for t in range(len(TIER_NAMES))},
                "best_tier_share": {TIER_NAMES[t]: share(self.best[t]) for t in range(len(TIER_NAMES))}}


def run_adapters(run: Path) -> list[tuple[str, int, str]]:
    """``(policy, iteration, folder)`` of every adapter a loop run saved, in the order the loop made them."""
    found = []
    for it in sorted((p for p in run.glob("iter*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:])):
        for pol in ("ulrec-p", "ulrec"):
            if (it / pol / "adapter_config.json").is_file():
                found.append((pol, int(it.name[4:]), str(it / pol)))
    return found


def probe_row(probe: TierProbe, world, users: np.ndarray, settings, name: str, batch_size: int | None = None) -> dict[str, Any]:
    from train.pipeline import evaluate_policy

    kw = {} if batch_size is None else {"batch_size": batch_size}
    row = evaluate_policy(probe, world, users, seed=settings.seed, env_settings=settings.env,
                          max_episode_steps=settings.max_episode_steps, progress=True, name=name, **kw)
    return {"policy": name, "len_mean": row["len_mean"], "len_ci95": row["len_ci95"],
            "leave_reasons": row["leave_reasons"], **probe.stats()}


def pct(x: float | None) -> str:
    """A share as a table cell: a percentage with one decimal, blank for none."""
    return "" if x is None else f"{100 * x:.1f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ["policy", "Len (95% CI)", "steps", "in the rule's top tier %"] + [f"{n} %" for n in TIER_NAMES]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["policy"], f"{r['len_mean']:.2f} ± {r['len_ci95']:.2f}", str(r["steps"]), pct(r["top_share"])]
        cells += [pct(r["tier_share"][n]) for n in TIER_NAMES]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def report(table: str, notes: list[str], doc: dict[str, Any], json_path: str | None) -> None:
    """Print a tiers table and its notes, and write ``doc`` to ``json_path`` (if given) with
    :func:`agents.benchmark.write_json`; shared by this script and ``benchmarks/label_tiers.py``."""
    from agents.benchmark import write_json

    print(table)
    for n in notes:
        print("note:", n)
    if json_path:
        write_json(doc, json_path)


def _recorded_len(doc: Mapping[str, Any] | None, row: dict[str, Any]) -> float | None:
    """The Len the run's metrics.json recorded for a probed row (an LLM at its iteration, or a reference rule)."""
    from train.loop import policy_evals, reference_row

    if doc is None or "evals" not in doc:
        return None
    if row["iteration"] is None:
        ref = reference_row(doc, row["policy"])
        return None if ref is None else ref["len_mean"]
    same = policy_evals(doc, row["policy"], row["iteration"])
    return same[-1]["len_mean"] if same else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a `ulrec loop` run folder (its settings.json and adapters)")
    ap.add_argument("--episodes", type=int, default=None,
                    help="the first N of the run's test users (default: all the run evaluates on)")
    ap.add_argument("--rules", default="random,greedy,genre-cycle-words",
                    help="comma-separated rule policies to probe beside the LLM (empty: none)")
    ap.add_argument("--rule", default="genre-cycle-words", choices=("genre-cycle", "genre-cycle-words"),
                    help="the rule whose tiers are counted")
    ap.add_argument("--no-llm", action="store_true", help="probe the rules only (no model is loaded)")
    ap.add_argument("--llm", default=None,
                    help="comma-separated agents to probe, each `base` or POLICY@K (`ulrec-p@1`, `ulrec@3`; default: "
                         "the base model and every adapter of RUN)")
    ap.add_argument("--json", default=None, help="where to write the rows (JSON)")
    args = ap.parse_args(argv)

    from agents.benchmark import make_policy
    from train.loop import LoopSettings, eval_users, evaluation_agent
    from train.pipeline import rule_options
    from ulrec_env.worlds.spec import world_from_spec

    if not (args.run / "settings.json").is_file():
        raise SystemExit(f"{args.run}: no settings.json; name the folder of a `ulrec loop` run (its --out).")
    if args.episodes is not None and args.episodes < 1:
        raise SystemExit(f"--episodes must be a positive integer, got {args.episodes}.")
    settings = LoopSettings.from_run(args.run)
    world = world_from_spec(settings.world)
    users = eval_users(world, settings)
    if args.episodes is not None:
        users = users[: args.episodes]
    context = rule_options(settings.prompt_format)

    def rule() -> Any:
        return make_policy(args.rule, **context)

    agents = [("base", 0, None)] + run_adapters(args.run)
    if args.llm is not None:
        names = {f"{p}@{k}" if adapter else p: (p, k, adapter) for p, k, adapter in agents}
        asked = [n.strip() for n in args.llm.split(",") if n.strip()]
        missing = [n for n in asked if n not in names]
        if missing:
            raise SystemExit(f"--llm: {', '.join(missing)} not in {args.run} (it has {', '.join(names)}).")
        agents = [names[n] for n in asked]
    rows = []
    if not args.no_llm:
        for pol, k, adapter in agents:
            probe = TierProbe(evaluation_agent(settings, adapter, pol), rule())
            row = probe_row(probe, world, users, settings, pol, batch_size=settings.gen_batch_size)
            rows.append({**row, "iteration": k, "adapter": adapter})
            print(f"{pol} @{k}: Len {row['len_mean']:.2f}, top tier {100 * row['top_share']:.1f}%", flush=True)
    for name in [n for n in args.rules.split(",") if n]:
        rows.append({**probe_row(TierProbe(make_policy(name, **context), rule()), world, users, settings, name),
                     "iteration": None, "adapter": None})

    notes = []
    if args.episodes is None:
        path = args.run / "metrics.json"
        metrics = json.loads(read_text_bounded(path, "a run's metrics.json")) if path.is_file() else None
        for r in rows:
            recorded = _recorded_len(metrics, r)
            if recorded is not None and abs(recorded - r["len_mean"]) > 1e-9:
                name = r["policy"] if r["iteration"] is None else f"{r['policy']} @{r['iteration']}"
                notes.append(f"{name}: Len {r['len_mean']:.3f} here, "
                             f"{recorded:.3f} in the run's metrics.json")
    doc = {"run": str(args.run), "rule": args.rule, "rule_options": context, "users": int(len(users)),
           "seed": settings.seed, "rows": rows, "differs_from_run": notes}
    report(format_rows(rows), notes, doc, args.json)
    return doc


if __name__ == "__main__":
    main()
