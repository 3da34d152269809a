"""`ulrec bench`: every policy on the same users and seeds, one table, JSON and a plot."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.evaluation import choose_users, run_policy, summarize
from agents.policy import Policy
from agents.progress import Progress
from agents.registry import make, registered
from ulrec_env import World
from ulrec_env.config import EnvConfig

__all__ = ["POLICY_NAMES", "make_policy", "benchmark", "policy_row", "bench_document", "format_table", "format_rate", "plot_results", "write_json",
           "session_records"]


#: The built-in policy names (``registered()`` adds plug-ins).
POLICY_NAMES = ("random", "popular", "greedy", "mmr", "genre-cycle", "genre-cycle-words", "oracle", "llm")


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by spec (see :mod:`agents.registry`): a registered name (``random``, ``popular``, ``greedy``,
    ``mmr``, ``genre-cycle``, ``genre-cycle-words``, ``oracle``, ``llm``, or a plug-in's), ``package.module:Class``
    or ``path/to/file.py:Class``, with optional ``:key=value`` options.

    ``options`` are the command's context, given to the built-ins: the ``genre-cycle`` rules read ``max_history``,
    ``window`` and ``seed``; ``llm`` reads ``llm_model``, ``llm_adapter``, ``llm_batch_size``, ``temperature``,
    ``top_p``, ``seed``, ``dtype``, ``prompt_format`` (see :func:`agents.llm.resolve_prompt_format`),
    ``trust_remote_code`` and ``allow_unsafe_pickle`` (all optional); the other
    baselines ignore them. Plug-in classes get only their spec's options.
    """
    return make(name, context=options)


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
    per_session: bool = False,
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
        per_session: Each row also lists its sessions (``sessions``: user row, seed, length, return, leave reason,
            items), with the raw user and item ids of the data when the world has them (``user_id``,
            ``item_ids``), so results can be joined back to the source.
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
            raise ValueError(f"no policies given; registered policies: {', '.join(registered())}.")
        made = [make_policy(p, **dict(policy_options or {})) for p in policies]
        named = {pol.name: pol for pol in made}
        if len(named) < len(made):
            dup = sorted({pol.name for pol in made if sum(q.name == pol.name for q in made) > 1})
            raise ValueError(f"two policies would share the row name {', '.join(dup)}; name LLM rows llm:NAME=ADAPTER.")
    user_sets = {s: choose_users(world, split, episodes, s) for s in seed_list}
    rows = []
    for name, policy in named.items():
        sessions = None
        with Progress(None, f"bench {name}", unit="user-step", enabled=progress) as bar:  # moves with every step
            for s in seed_list:
                result = run_policy(policy, world, user_sets[s], seed=s, env_settings=settings,
                                    max_episode_steps=max_episode_steps, batch_size=batch_size, on_step=bar.update)
                sessions = result if sessions is None else sessions.extend(result)
        rows.append(policy_row(name, policy, sessions, world, max_episode_steps=max_episode_steps,
                               per_session=per_session))
    return bench_document(world, rows, split=split, episodes=episodes, seeds=seed_list,
                          max_episode_steps=max_episode_steps, env=config)


def policy_row(name: str, policy: Policy, sessions: Any, world: World, max_episode_steps: int = 100,
               per_session: bool = False) -> dict[str, Any]:
    """A policy's row of the table (see :func:`agents.evaluation.summarize`); an LLM's row also says what model,
    adapter, dtype, prompt format and engine it ran (``model``, ``adapter``, ``dtype``, ``prompt``, ``engine``),
    and with ``per_session`` the row lists its sessions (:func:`session_records`)."""
    row = summarize(name, sessions, world, peeks=policy.peeks, max_episode_steps=max_episode_steps)
    if hasattr(policy, "dtype_name"):
        row["dtype"] = policy.dtype_name
        row["model"] = getattr(policy, "model_id", None)
        row["adapter"] = getattr(policy, "adapter_path", None)
        row["prompt"] = policy.prompt_format.to_dict()
        row["engine"] = getattr(policy, "engine", "transformers")
    if per_session:
        row["sessions"] = session_records(sessions, world)
    return row


def bench_document(world: World, rows: Sequence[Mapping[str, Any]], *, split: str, episodes: int | str,
                   seeds: Sequence[int], max_episode_steps: int, env: EnvConfig,
                   **settings: Any) -> dict[str, Any]:
    """The ``ulrec bench`` JSON document of ``rows`` (``settings`` adds entries to its ``settings``)."""
    return {
        "world": world.name,
        "world_fingerprint": world.fingerprint(),
        "settings": {"split": split, "episodes": episodes, "seeds": list(seeds), "max_episode_steps": max_episode_steps,
                     "env": env.to_dict(), **settings},
        "results": [dict(r) for r in rows],
    }


def session_records(sessions: Any, world: World) -> list[dict[str, Any]]:
    """One JSON-ready dict per session, with the world's raw user and item ids where it has them."""
    out = []
    for k in range(len(sessions.lengths)):
        u = int(sessions.users[k])
        items = [int(i) for i in sessions.items[k]]
        rec = {"user": u, "seed": int(sessions.seeds[k]), "length": int(sessions.lengths[k]),
               "return": float(sessions.returns[k]), "leave_reason": sessions.leave_reasons[k], "items": items}
        if world.user_ids is not None:
            rec["user_id"] = world.user_ids[u]
        if world.item_ids is not None:
            rec["item_ids"] = [world.item_ids[i] for i in items]
        out.append(rec)
    return out


def format_rate(x: float) -> str:
    """A rate for a table: whole numbers from 100 on (``1,234``), else two significant digits (``0.11``, ``3.2``).

    Examples:
        >>> from agents.benchmark import format_rate
        >>> format_rate(1234.5), format_rate(3.21), format_rate(0.114), format_rate(float("nan"))
        ('1,234', '3.2', '0.11', '-')
    """
    if x is None or not math.isfinite(x):
        return "-"
    if abs(float(f"{x:.2g}")) >= 100:
        return f"{x:,.0f}"
    return f"{x:#.2g}".rstrip(".")


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
            format_rate(r["user_steps_per_s"]),
            f"{r['seconds']:.1f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    s = doc["settings"]
    users = {r.get("users") for r in doc["results"]} - {None}
    sessions = {r["episodes"] for r in doc["results"]}
    distinct = ""
    if len(users) == 1 and len(sessions) == 1 and users != sessions:
        distinct = f" ({users.pop()} distinct users; intervals over users)"
    out.append(
        f"world {doc['world']}, split {s['split']}, {s['episodes']} episodes x seeds {s['seeds']}{distinct}, "
        f"leave rule {s['env']['leave_rule']}, horizon {s['max_episode_steps']}. * peeks at the hidden user model. "
        "ILD: intra-session distance relative to random pairs."
    )
    return "\n".join(out)


def write_json(doc: Mapping[str, Any], path: str | os.PathLike) -> None:
    from ulrec_env.storage import atomic_write_text, json_text

    atomic_write_text(path, json_text(doc, default=float))


def policy_colours(n: int) -> list[Any]:
    """``n`` distinct colours, one per policy of a plot: matplotlib's default cycle (``C0`` ...) up to its 10, else
    ``tab20`` (up to 20), else evenly spaced ``turbo`` colours, so that no two policies of a plot share a colour."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    import matplotlib

    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


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
    colours = policy_colours(len(rows))
    for ax, key, label in ((axes[0], "len", "Len (continued steps)"), (axes[1], "return", "Traj Reward")):
        means = [r[f"{key}_mean"] for r in rows]
        cis = [0.0 if math.isnan(r[f"{key}_ci95"]) else r[f"{key}_ci95"] for r in rows]
        ax.bar(x, means, yerr=cis, capsize=4, color=colours)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(label + " (mean, 95% CI)")
    ax = axes[2]
    for i, r in enumerate(rows):
        h = np.asarray(r["length_histogram"], dtype=float)
        cdf = np.cumsum(h) / max(h.sum(), 1.0)
        ax.step(np.arange(h.size), cdf, where="post", label=r["policy"], color=colours[i])
    ax.set_xlabel("session length (continued steps)")
    ax.set_ylabel("share of sessions <= length")
    ax.set_title("Distribution of session lengths")
    ax.legend(fontsize=8)
    fig.suptitle(title or f"ulrec bench: {doc['world']} ({doc['settings']['split']} users)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
