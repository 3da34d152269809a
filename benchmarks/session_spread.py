"""How far apart a rollout's sessions keep their picks: genre repeats and similarity by lag.

    python benchmarks/session_spread.py runs/gt768/iter1/rollout runs/gt768/iter1/rollout-own [--json OUT]

For each rollout folder (``steps.jsonl`` and ``summary.json``, as ``ulrec rollout`` and every loop iteration write
them) the table gives: the sessions, their mean number of steps (the leave step included) and how they end; for
each lag k up to the environment's redundancy ``window``, the share of steps whose pick shares a genre with the
pick k steps back, and with any of the last k picks; the distinct genres of a session per step; and the mean
similarity to the pick k steps back, whose sum over the window is the redundancy the environment charges
(``ulrec_env.user_model.similarity``). Genres are the world's genres of the recorded items, so the table reads
any completion form the same way.

The prompt-reading ``genre-cycle-words`` teacher never repeats a genre of the last two picks; whether a student
also spreads its picks over the longer window, or cycles through a few genres, shows in the lag-3 and lag-4
columns (session 32's question: a student that imitates the rule's tiers still ended in boredom twice as often).
For a loop iteration's folder (``RUN/iterK/...``) the world and the environment settings are the run's: its
``settings.json``'s world, and its ``env`` over the world's calibrated defaults. For another rollout folder, name
the world with ``--world SPEC`` (the world's calibrated defaults then); the world's fingerprint must match the
one the rollout recorded.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spread(sessions: Sequence[Sequence[Any]], genres: Sequence[Sequence[str]], distance: np.ndarray,
           distance_threshold: float, window: int) -> dict[str, Any]:
    """The table's row for ``sessions`` (each a list of step records with ``item`` and, on its last step,
    ``leave_reason``), the world's item ``genres`` and ``distance`` matrix, and the environment's redundancy
    ``distance_threshold`` and ``window``.

    Returns ``sessions``, ``steps_mean``, ``leave_reasons`` (% of sessions), and per lag k = 1..window (keys are
    the string ``str(k)``): ``same_genre_at_lag`` (% of steps with a pick k back that share a genre with it),
    ``same_genre_within`` (% of steps with k earlier picks that share a genre with one of them),
    ``similarity_at_lag`` (mean similarity to the pick k back); also ``distinct_genres_per_step`` (mean over
    sessions) and ``redundancy_mean`` (mean over steps after the first of the summed similarity to the window).
    """
    from ulrec_env.user_model import similarity

    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}.")
    lags = range(1, window + 1)
    counted = dict.fromkeys(lags, 0)  # steps with a pick k back (the same steps have k earlier picks)
    at_lag, within = dict.fromkeys(lags, 0), dict.fromkeys(lags, 0)  # of those, steps sharing a genre
    sim: dict[int, list[float]] = {k: [] for k in lags}
    redundancy, distinct, lengths = [], [], []
    reasons: Counter[str] = Counter()
    for steps in sessions:
        items = [int(s.item) for s in steps]
        gs = [frozenset(genres[i]) for i in items]
        lengths.append(len(items))
        reasons[steps[-1].leave_reason or ("horizon" if steps[-1].truncated else "none")] += 1
        distinct.append(len(frozenset().union(*gs)) / len(gs))
        for t in range(1, len(items)):
            earlier: frozenset[str] = frozenset()
            window_sims = []
            for k in range(1, min(t, window) + 1):
                earlier |= gs[t - k]
                counted[k] += 1
                at_lag[k] += bool(gs[t] & gs[t - k])
                within[k] += bool(gs[t] & earlier)
                window_sims.append(similarity(float(distance[items[t], items[t - k]]), distance_threshold))
                sim[k].append(window_sims[-1])
            redundancy.append(float(sum(window_sims)))  # the environment's redundancy: the window's summed similarity

    def share(hits: dict[int, int]) -> dict[str, float]:
        return {str(k): 100.0 * hits[k] / counted[k] if counted[k] else float("nan") for k in lags}

    n = len(sessions)
    return {
        "sessions": n,
        "steps_mean": float(np.mean(lengths)) if n else float("nan"),
        "leave_reasons": {r: 100.0 * c / n for r, c in sorted(reasons.items(), key=lambda kv: -kv[1])},
        "same_genre_at_lag": share(at_lag),
        "same_genre_within": share(within),
        "similarity_at_lag": {str(k): float(np.mean(v)) if v else float("nan") for k, v in sim.items()},
        "distinct_genres_per_step": float(np.mean(distinct)) if n else float("nan"),
        "redundancy_mean": float(np.mean(redundancy)) if redundancy else float("nan"),
    }


def rollout_spread(folder: Path, world_spec: str | None = None) -> dict[str, Any]:
    """:func:`spread` of the rollout in ``folder``: in its loop run's world and ``env`` for a loop iteration's
    folder, else in ``world_spec`` (a rollout's summary records the world's name and fingerprint, not its spec)
    with the world's calibrated environment defaults."""
    from train.labeling import group_episodes
    from train.loop import LoopSettings
    from train.rollout import load_rollout
    from ulrec_env.config import EnvConfig
    from ulrec_env.worlds.spec import world_from_spec

    if not (folder / "steps.jsonl").is_file() or not (folder / "summary.json").is_file():
        raise SystemExit(f"{folder}: no steps.jsonl and summary.json; name a folder `ulrec rollout` (or a loop "
                         f"iteration) wrote.")
    records, summary = load_rollout(folder)
    env: dict[str, Any] = {}
    run = folder.parent.parent
    if world_spec is None and folder.parent.name.startswith("iter") and (run / "settings.json").is_file():
        settings = LoopSettings.from_run(run)
        world_spec, env = settings.world, dict(settings.env)
    if world_spec is None:
        raise SystemExit(f"{folder}: not a loop iteration's folder; name its world with --world SPEC (the rollout "
                         f"was played in the world named {summary.get('world')!r}).")
    world = world_from_spec(world_spec)
    if summary.get("world_fingerprint") not in (None, world.fingerprint()):
        raise SystemExit(f"{folder}: played in world {summary.get('world')!r} (fingerprint "
                         f"{summary['world_fingerprint']}), not in {world_spec!r} ({world.fingerprint()}); "
                         f"pass the world it was played in with --world.")
    cfg = EnvConfig.resolve(world.env_defaults, **env)
    row = spread(group_episodes(records), world.genres, world.distance, cfg.distance_threshold, cfg.window)
    row.update(rollout=str(folder), policy=summary.get("policy"), adapter=summary.get("adapter"),
               world=world_spec, window=cfg.window, distance_threshold=cfg.distance_threshold)
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (genre shares and similarities by lag)."""
    window = max(r["window"] for r in rows)
    lags = [str(k) for k in range(1, window + 1)]
    head = (["rollout", "sessions", "steps", "leave reasons %"]
            + [f"same genre at lag {k} %" for k in lags] + [f"within last {k} %" for k in lags[1:]]
            + [f"similarity at lag {k}" for k in lags] + ["redundancy", "distinct genres / step"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["rollout"], str(r["sessions"]), f"{r['steps_mean']:.2f}",
                 ", ".join(f"{k} {v:.1f}" for k, v in r["leave_reasons"].items())]
        cells += [f"{r['same_genre_at_lag'].get(k, float('nan')):.1f}" for k in lags]
        cells += [f"{r['same_genre_within'].get(k, float('nan')):.1f}" for k in lags[1:]]
        cells += [f"{r['similarity_at_lag'].get(k, float('nan')):.3f}" for k in lags]
        cells += [f"{r['redundancy_mean']:.3f}", f"{r['distinct_genres_per_step']:.3f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rollouts", type=Path, nargs="+", help="rollout folders (steps.jsonl and summary.json)")
    ap.add_argument("--world", default=None,
                    help="the world spec the rollouts were played in (default: a loop iteration's run's world)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    rows = [rollout_spread(f, a.world) for f in a.rollouts]
    print(table(rows))
    if a.json is not None:
        from agents.benchmark import write_json
        write_json({"rows": rows}, a.json)
    return rows


if __name__ == "__main__":
    main()
