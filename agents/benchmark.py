"""`ulrec bench`: every policy on the same users and seeds, one table, JSON and a plot."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.baselines import GenreCyclePolicy, GreedyPolicy, MMRPolicy, PopularPolicy, RandomPolicy
from agents.evaluation import choose_users, run_policy, summarize
from agents.oracle import OraclePolicy
from agents.policy import Policy
from agents.progress import Progress
from ulrec_env import World
from ulrec_env.config import EnvConfig

__all__ = ["POLICY_NAMES", "make_policy", "benchmark", "format_table", "plot_results", "write_json"]


def _llm(**kw: Any) -> Policy:
    from agents.llm import LLMRecommender

    return LLMRecommender.from_pretrained(
        model=kw.get("llm_model"), adapter=kw.get("llm_adapter"), batch_size=kw.get("llm_batch_size") or 64,
        temperature=kw.get("temperature") or 0.0, top_p=kw.get("top_p") or 1.0, seed=kw.get("seed") or 0,
        trust_remote_code=bool(kw.get("trust_remote_code")), allow_unsafe_pickle=bool(kw.get("allow_unsafe_pickle")),
        dtype=kw.get("dtype") or "auto",
    )


def _genre_cycle(copy_words: bool, **kw: Any) -> Policy:
    opts = {k: kw[k] for k in ("max_history", "window") if kw.get(k) is not None}
    return GenreCyclePolicy(copy_words=copy_words, seed=kw.get("seed") or 0, **opts)


_FACTORIES: dict[str, Callable[..., Policy]] = {
    "random": lambda **kw: RandomPolicy(seed=0),
    "popular": lambda **kw: PopularPolicy(),
    "greedy": lambda **kw: GreedyPolicy(),
    "mmr": lambda **kw: MMRPolicy(),
    "genre-cycle": lambda **kw: _genre_cycle(False, **kw),
    "genre-cycle-words": lambda **kw: _genre_cycle(True, **kw),
    "oracle": lambda **kw: OraclePolicy(),
    "llm": _llm,
}
POLICY_NAMES = tuple(_FACTORIES)


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by name (``random``, ``popular``, ``greedy``, ``mmr``, ``genre-cycle``, ``genre-cycle-words``,
    ``oracle``, ``llm``).

    The ``genre-cycle`` rules take ``max_history`` (history items read), ``window`` and ``seed``; ``llm`` takes
    ``llm_model``, ``llm_adapter``, ``llm_batch_size``, ``temperature``, ``top_p``, ``seed``, ``dtype``,
    ``trust_remote_code`` and ``allow_unsafe_pickle`` (all optional).
    The other baselines ignore options.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}.")
    policy = _FACTORIES[name](**options)
    policy.name = name if name != "llm" else getattr(policy, "name", "llm")
    return policy


def benchmark(
    world: World,
    policies: Sequence[str] | Mapping[str, Policy],
    split: str = "test",
    episodes: int | str = 200,
    seeds: int | Sequence[int] = 3,
    env_settings: Mapping[str, Any] | None = None,
    max_episode_steps: int = 100,
    batch_size: int = 256,
    progress: bool = True,
    policy_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run each policy on the same users and seeds; returns the JSON document of ``ulrec bench``.

    Args:
        world: The world.
        policies: Policy names (see :func:`make_policy`) or ready ``{name: Policy}``.
        split: ``"train"``, ``"test"`` or ``"all"`` users.
        episodes: Sessions per seed, or ``"all"`` (every user of the split once per seed).
        seeds: Number of seeds (0, 1, ...) or the list of seeds. A seed picks the users and seeds the
            environment and the policy.
        env_settings: ``ULRec-v0`` settings (leave rule, window, ...).
        max_episode_steps: Horizon.
        batch_size: Sessions stepped together.
        progress: Show a progress bar.
        policy_options: Passed to :func:`make_policy` (``llm_model``, ``llm_adapter``).
    """
    settings = dict(env_settings or {})
    config = EnvConfig.resolve(world.env_defaults, **settings)  # validates before any work
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("`seeds` must name at least one seed.")
    if isinstance(policies, Mapping):
        named = dict(policies)
    else:
        if not policies:
            raise ValueError(f"no policies given; valid policies: {', '.join(POLICY_NAMES)}.")
        named = {p: make_policy(p, **dict(policy_options or {})) for p in policies}
    user_sets = {s: choose_users(world, split, episodes, s) for s in seed_list}
    total = len(named) * sum(u.size for u in user_sets.values())
    rows = []
    with Progress(total, "bench", unit="session", enabled=progress) as bar:
        for name, policy in named.items():
            bar.set_description(f"bench {name}")
            sessions = None
            for s in seed_list:
                result = run_policy(policy, world, user_sets[s], seed=s, env_settings=settings,
                                    max_episode_steps=max_episode_steps, batch_size=batch_size)
                sessions = result if sessions is None else sessions.extend(result)
                bar.update(user_sets[s].size)
            row = summarize(name, sessions, world, peeks=policy.peeks, max_episode_steps=max_episode_steps)
            if hasattr(policy, "dtype_name"):  # LLM rows say what they computed in
                row["dtype"] = policy.dtype_name
            rows.append(row)
    return {
        "world": world.name,
        "world_fingerprint": world.fingerprint(),
        "settings": {
            "split": split,
            "episodes": episodes,
            "seeds": seed_list,
            "max_episode_steps": max_episode_steps,
            "env": config.to_dict(),
        },
        "results": rows,
    }


def _fmt_ci(mean: float, ci: float, digits: int = 2) -> str:
    if math.isnan(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def format_table(doc: Mapping[str, Any]) -> str:
    """The printed table of ``ulrec bench``."""
    header = ["policy", "Len (95% CI)", "Traj Reward (95% CI)", "R/step", "leave reasons %", "ILD", "cover", "invalid", "steps/s", "s"]
    lines = []
    for r in doc["results"]:
        reasons = " ".join(f"{k}:{v:.0f}" if v >= 1 else f"{k}:{v:.1f}"
                           for k, v in sorted(r["leave_reasons"].items(), key=lambda kv: -kv[1]))
        lines.append([
            r["policy"] + (" *" if r.get("peeks") else ""),
            _fmt_ci(r["len_mean"], r["len_ci95"]),
            _fmt_ci(r["return_mean"], r["return_ci95"], 1),
            f"{r['reward_per_step']:.2f}",
            reasons,
            f"{r['intra_list_distance']:.2f}",
            f"{r['coverage']:.2f}",
            str(r["invalid_actions"]),
            f"{r['user_steps_per_s']:,.0f}",
            f"{r['seconds']:.1f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    s = doc["settings"]
    out.append(
        f"world {doc['world']}, split {s['split']}, {s['episodes']} episodes x seeds {s['seeds']}, "
        f"leave rule {s['env']['leave_rule']}, horizon {s['max_episode_steps']}. * peeks at the hidden user model. "
        "ILD: intra-session distance relative to random pairs."
    )
    return "\n".join(out)


def write_json(doc: Mapping[str, Any], path: str | os.PathLike) -> None:
    from ulrec_env.storage import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2, default=float))


def plot_results(doc: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> None:
    """Bars (Len and Traj Reward with 95% intervals) and the distribution of session lengths per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'ulrec[plot]' (or pip install matplotlib).") from None
    rows = doc["results"]
    names = [r["policy"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(rows))
    for ax, key, label in ((axes[0], "len", "Len (continued steps)"), (axes[1], "return", "Traj Reward")):
        means = [r[f"{key}_mean"] for r in rows]
        cis = [0.0 if math.isnan(r[f"{key}_ci95"]) else r[f"{key}_ci95"] for r in rows]
        ax.bar(x, means, yerr=cis, capsize=4, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(label + " (mean, 95% CI)")
    ax = axes[2]
    for i, r in enumerate(rows):
        h = np.asarray(r["length_histogram"], dtype=float)
        cdf = np.cumsum(h) / max(h.sum(), 1.0)
        ax.step(np.arange(h.size), cdf, where="post", label=r["policy"], color=f"C{i}")
    ax.set_xlabel("session length (continued steps)")
    ax.set_ylabel("share of sessions <= length")
    ax.set_title("Distribution of session lengths")
    ax.legend(fontsize=8)
    fig.suptitle(title or f"ulrec bench: {doc['world']} ({doc['settings']['split']} users)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
