"""What a loop run's labels say about its picks: for the labelled steps of every rollout of a run (the teacher's
sessions and the LLM's own), which of the `genre-cycle-words` rule's tiers the pick fell in, desirable steps apart
from undesirable ones.

    python benchmarks/label_tiers.py RUN [--rule genre-cycle-words] [--json benchmarks/results/label-tiers.json]

Each rollout folder of RUN (``iterK/rollout`` with its labels ``iterK/labels``, and ``iterK/rollout-own`` with
``iterK/labels-own``) is replayed through the run's environment: every session starts for its recorded user and
takes its recorded items, and at every step the rule's tiers (``agents.baselines.GenreCyclePolicy.tiers``) are
read from the observation the policy saw (see ``benchmarks/teacher_tiers.py`` for the tiers). The table gives, for
each rollout and label, the labelled steps, the share whose pick repeats a genre of the recent recommendations
(tier 0, what boredom punishes), the share in each fresh tier, and the share in the highest tier the step offered.
A KTO stage can learn from a label only what separates it: where the undesirable steps repeat a recent genre far
more often than the desirable ones, the leave signal points at something the prompt shows. The replay checks each
step's feedback and leave reason against the recorded ones and says how many differ (a world with stochastic
users, or a changed world, would).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.teacher_tiers import TIER_NAMES, pct, report  # noqa: E402

#: The rollout folders of a loop iteration and the labels made from each.
ROLLOUT_LABELS = (("rollout", "labels"), ("rollout-own", "labels-own"))


def replay_tiers(records: Sequence[Any], world, rule, *, env_settings: dict[str, Any] | None = None,
                 max_episode_steps: int = 100) -> tuple[dict[tuple[int, int], tuple[int, int]], int]:
    """Replay a rollout's sessions (recorded users and items) and read the rule's tiers at every step.

    Returns:
        ``{(episode, step): (tier of the pick, highest tier offered)}`` (tier -1: an item already shown), and how
        many steps the replay answered with another feedback or leave reason than the recorded one.
    """
    from train.labeling import group_episodes
    from ulrec_env.vector_env import ULRecVectorEnv

    sessions = group_episodes(records)  # the labelling's own grouping: by episode, each sorted by step
    episodes = [s[0].episode for s in sessions]
    for e, steps in zip(episodes, sessions):
        if [r.step for r in steps] != list(range(len(steps))):
            raise ValueError(f"episode {e}: its steps are not 0..{len(steps) - 1}; is the rollout complete?")
    rule.bind(world)
    env = ULRecVectorEnv(num_envs=len(sessions), world=world, max_episode_steps=max_episode_steps,
                         autoreset_mode="disabled", **dict(env_settings or {}))
    obs, _ = env.reset(seed=0, options={"users": np.array([s[0].user for s in sessions], np.int64)})
    tiers: dict[tuple[int, int], tuple[int, int]] = {}
    differ = 0
    for t in range(max(len(s) for s in sessions)):
        live = np.array([len(s) > t for s in sessions])
        actions = np.array([s[t].item if len(s) > t else 0 for s in sessions], np.int64)
        table = rule.tiers(obs)
        best = table.max(axis=1)
        obs, _, _, _, info = env.step(actions)
        for i in np.flatnonzero(live):
            rec = sessions[i][t]
            tiers[(episodes[i], t)] = (int(table[i, rec.item]), int(best[i]))
            if info["feedback"][i] != rec.feedback or (rec.feedback == "leave"
                                                       and info["leave_reason"][i] != rec.leave_reason):
                differ += 1
    return tiers, differ


def label_rows(examples: Sequence[dict[str, Any]], tiers: dict[tuple[int, int], tuple[int, int]]) -> dict[bool, dict]:
    """Tier shares of the labelled examples, by label (``True`` desirable, ``False`` undesirable)."""
    out = {}
    for label in (True, False):
        picked = [tiers[(int(x["episode"]), int(x["step"]))] for x in examples if bool(x["label"]) == label]
        n = len(picked)
        share = (lambda c: c / n if n else None)
        out[label] = {"rows": n,
                      "tier_share": {TIER_NAMES[k]: share(sum(p == k for p, _ in picked)) for k in range(len(TIER_NAMES))},
                      "shown_share": share(sum(p < 0 for p, _ in picked)),
                      "top_share": share(sum(p == b and p >= 0 for p, b in picked))}
    return out


def source_name(summary: dict[str, Any]) -> str:
    """``teacher genre-cycle-words`` for a rule's rollout, else the LLM's adapter (``ulrec-p@1``, ``ulrec@2``)."""
    adapter = summary.get("adapter")
    if summary.get("policy") != "llm":
        return f"teacher {summary.get('policy')}"
    if not adapter:
        return "base model"
    p = Path(adapter)
    return f"{p.name}@{p.parent.name[4:]}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ["rollout", "sessions of", "label", "rows"] + [f"{n} %" for n in TIER_NAMES] + ["in the top tier %"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["rollout"], r["source"], "desirable" if r["label"] else "undesirable", str(r["rows"])]
        cells += [pct(r["tier_share"][n]) for n in TIER_NAMES] + [pct(r["top_share"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a `ulrec loop` run folder (its settings.json, rollouts and labels)")
    ap.add_argument("--rule", default="genre-cycle-words", choices=("genre-cycle", "genre-cycle-words"),
                    help="the rule whose tiers are counted")
    ap.add_argument("--json", default=None, help="where to write the rows (JSON)")
    args = ap.parse_args(argv)

    from agents.benchmark import make_policy
    from train.labeling import load_examples
    from train.loop import LoopSettings
    from train.pipeline import rule_options
    from train.rollout import load_rollout
    from ulrec_env.worlds.spec import world_from_spec

    if not (args.run / "settings.json").is_file():
        raise SystemExit(f"{args.run}: no settings.json; name the folder of a `ulrec loop` run (its --out).")
    settings = LoopSettings.from_run(args.run)
    world = world_from_spec(settings.world)
    rule = make_policy(args.rule, **rule_options(settings.prompt_format))
    rows, notes = [], []
    iters = sorted((p for p in args.run.glob("iter*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    for it in iters:
        for roll, lab in ROLLOUT_LABELS:
            if not (it / roll / "summary.json").is_file() or not (it / lab / "meta.json").is_file():
                continue
            records, summary = load_rollout(it / roll)
            tiers, differ = replay_tiers(records, world, rule, env_settings=settings.env,
                                         max_episode_steps=settings.max_episode_steps)
            name = f"{it.name}/{roll}"
            if differ:
                notes.append(f"{name}: {differ} of {len(records)} replayed steps ended otherwise than recorded")
            for label, row in label_rows(load_examples(it / lab).examples, tiers).items():
                rows.append({"rollout": name, "source": source_name(summary), "label": label, **row})
    if not rows:
        raise SystemExit(f"{args.run}: no labelled rollout (iterK/rollout with iterK/labels) yet.")
    doc = {"run": str(args.run), "rule": args.rule, "rows": rows, "replay_differs": notes}
    report(format_rows(rows), notes, doc, args.json)
    return doc


if __name__ == "__main__":
    main()
