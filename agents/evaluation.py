"""Running any policy on many users through the native vector env, and summarising the sessions."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.policy import Policy, slice_obs
from ulrec_env import World
from ulrec_env.storage import atomic_write_text
from ulrec_env.vector_env import ULRecVectorEnv

__all__ = ["Sessions", "run_policy", "summarize", "choose_users", "mean_ci95", "paired_difference"]


@dataclass
class Sessions:
    """What happened in a set of sessions: one entry per episode."""

    users: np.ndarray
    seeds: np.ndarray  # the seed of the run_policy call (its batch i > 0 was played with a seed derived from it)
    lengths: np.ndarray  # continued steps
    returns: np.ndarray  # summed rewards
    leave_reasons: list[str]  # a LEAVE_REASON, or "horizon" for truncated sessions
    items: list[np.ndarray]  # every recommended item, leaving one included
    seconds: float = 0.0
    invalid_actions: int = 0
    records: list[Any] = field(default_factory=list)

    def extend(self, other: "Sessions") -> "Sessions":
        return Sessions(
            users=np.concatenate([self.users, other.users]),
            seeds=np.concatenate([self.seeds, other.seeds]),
            lengths=np.concatenate([self.lengths, other.lengths]),
            returns=np.concatenate([self.returns, other.returns]),
            leave_reasons=self.leave_reasons + other.leave_reasons,
            items=self.items + other.items,
            seconds=self.seconds + other.seconds,
            invalid_actions=self.invalid_actions + other.invalid_actions,
            records=self.records + other.records,
        )

    @property
    def user_steps(self) -> int:
        return int(sum(len(i) for i in self.items))


def choose_users(world: World, split: str, episodes: int | str, seed: int) -> np.ndarray:
    """The users of one seed: every user of ``split`` (``episodes="all"``) or ``episodes`` of them drawn with
    ``seed`` (without replacement while the split is large enough)."""
    pool = world.users(split)
    if pool.size == 0:
        raise ValueError(f"world {world.name!r} has no {split!r} users; choose another split.")
    if episodes == "all":
        return pool.copy()
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"`episodes` must be a positive integer or 'all', got {episodes!r}.")
    rng = np.random.default_rng(seed)
    if int(episodes) > pool.size:
        warnings.warn(f"{episodes} episodes asked of the {pool.size} {split!r} users of world {world.name!r}: users "
                      f"repeat (sessions of one user under one seed are copies when the policy does not sample); "
                      f"intervals count each user once. Ask for episodes='all' or at most {pool.size}, and more seeds.",
                      UserWarning, stacklevel=2)
    return rng.choice(pool, size=int(episodes), replace=int(episodes) > pool.size)


def run_policy(
    policy: Policy,
    world: World,
    users: Sequence[int],
    seed: int = 0,
    env_settings: Mapping[str, Any] | None = None,
    max_episode_steps: int = 100,
    batch_size: int = 256,
    keep_records: bool = False,
    on_step: Callable[[int], None] | None = None,
    env: ULRecVectorEnv | None = None,
    journal: str | os.PathLike | None = None,
    journal_tag: Any = None,
) -> Sessions:
    """Run ``policy`` for one session of each user in ``users`` and return what happened.

    Sessions run in batches of ``batch_size`` on :class:`ULRecVectorEnv` with autoreset disabled, so each
    user's session is played exactly once. The policy sees only the sessions that are still running.

    Args:
        policy: Any :class:`Policy`; it is bound to ``world`` and the environment here.
        world: The world to simulate.
        users: World rows, one session each.
        seed: Seeds the environment (stochastic users) and the policy (``policy.reset(seed)``).
        env_settings: Settings of ``ULRec-v0`` (leave rule, window, ...).
        max_episode_steps: Horizon.
        batch_size: Sessions stepped together.
        keep_records: Keep what the policy returns beside its actions (the LLM agent's records) in
            ``Sessions.records``: one dict per step with ``episode`` (index into ``users``), ``user``, ``step``,
            ``record``, ``item``, ``feedback``, ``leave_reason``, ``rating``, ``reward``, ``truncated``.
        on_step: Called with the number of user-steps taken after every batched step (progress bars).
        env: Reuse this environment (its number of envs must equal ``batch_size``).
        journal: A JSON-lines file that keeps each finished batch of sessions (fsynced as it ends). When it
            already holds batches of the same call (same users, seed and batch size), they are read back instead of
            played again, so an interrupted run resumes without redoing or duplicating a session. Records are
            read back as dicts of their fields. The journal is used only when it was written by a call with the
            same users, seed, batch size, world, policy name, environment settings, horizon, ``keep_records``
            and ``journal_tag`` (callers put what else identifies the policy there, e.g. its adapter).

    Sessions are played in batches of ``batch_size``; batch ``i`` seeds the environment and the policy with
    ``seed`` (``i = 0``) or a seed derived from ``(seed, i)``, so that each batch is reproducible on its own.
    """
    users = world.subset_users(users)
    if users.size == 0:
        raise ValueError("`users` is empty; give at least one world row.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    n_env = min(batch_size, users.size)
    if env is None or env.num_envs != n_env:
        env = ULRecVectorEnv(num_envs=n_env, world=world, max_episode_steps=max_episode_steps,
                             autoreset_mode="disabled", **dict(env_settings or {}))
    policy.bind(world, env)
    policy.reset(seed)
    lengths = np.zeros(users.size, np.int64)
    returns = np.zeros(users.size)
    reasons: list[str] = [""] * users.size
    items: list[list[int]] = [[] for _ in range(users.size)]
    records: list[Any] = []
    t0 = time.perf_counter()
    book = None
    if journal is not None:
        context = {"world": world.fingerprint(), "policy": policy.name, "env": dict(env_settings or {}),
                   "max_episode_steps": int(max_episode_steps), "keep_records": bool(keep_records),
                   "tag": journal_tag}
        book = _Journal(journal, users, seed, n_env, context)

    for ci, start in enumerate(range(0, users.size, n_env)):
        chunk = users[start : start + n_env]
        k = chunk.size
        if book is not None and ci in book.done:
            book.restore(ci, start, lengths, returns, reasons, items, records if keep_records else None)
            if on_step is not None:
                on_step(sum(len(items[start + r]) for r in range(k)))
            continue
        n_records = len(records)
        chunk_seed = seed if ci == 0 else _chunk_seed(seed, ci)
        if ci > 0:
            policy.reset(chunk_seed)
        padded = np.concatenate([chunk, np.full(n_env - k, chunk[0])]) if k < n_env else chunk
        obs, _ = env.reset(seed=chunk_seed, options={"users": padded})
        live = np.zeros(n_env, dtype=bool)
        live[:k] = True
        while live.any():
            rows = np.flatnonzero(live)
            actions = np.zeros(n_env, np.int64)
            acts, recs = policy.decode_batch(slice_obs(obs, rows))
            actions[rows] = acts
            steps_before = np.asarray(obs["step"]).reshape(-1)[rows]
            obs, rew, term, trunc, info = env.step(actions)
            for j, r in enumerate(rows.tolist()):
                e = start + r
                items[e].append(int(actions[r]))
                if info["feedback"][r] == "continue":
                    lengths[e] += 1
                returns[e] += rew[r]
                if keep_records and recs is not None:
                    records.append({
                        "episode": e, "user": int(chunk[r]), "step": int(steps_before[j]), "record": recs[j],
                        "item": int(actions[r]), "feedback": info["feedback"][r], "leave_reason": info["leave_reason"][r],
                        "rating": float(info["rating"][r]), "reward": float(rew[r]), "truncated": bool(trunc[r]),
                    })
                if term[r] or trunc[r]:
                    reasons[e] = info["leave_reason"][r] if term[r] else "horizon"
                    live[r] = False
            if on_step is not None:
                on_step(rows.size)
        if book is not None:
            book.write(ci, start, k, lengths, returns, reasons, items, records[n_records:])
    return Sessions(
        users=users,
        seeds=np.full(users.size, seed),  # the run's seed (batch i > 0 played with _chunk_seed(seed, i))
        lengths=lengths,
        returns=returns,
        leave_reasons=reasons,
        items=[np.asarray(i, np.int64) for i in items],
        seconds=time.perf_counter() - t0,
        invalid_actions=int(getattr(policy, "invalid_actions", 0)),
        records=records,
    )


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1)[0])


def _plain(record: Any) -> Any:
    """A JSON-able form of a policy's decode record (dataclasses become dicts of their fields)."""
    import dataclasses

    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return record


class _Journal:
    """Finished batches of one :func:`run_policy` call, appended to a JSON-lines file, fsynced."""

    def __init__(self, path: str | os.PathLike, users: np.ndarray, seed: int, n_env: int,
                 context: Mapping[str, Any]) -> None:
        from ulrec_env.safe_io import iter_lines_bounded

        self.path = Path(path)
        self.key = json.loads(json.dumps({"users": [int(u) for u in users], "seed": int(seed), "batch": int(n_env),
                                          **context}, default=str))
        self.done: dict[int, dict[str, Any]] = {}
        lines, good_bytes = [], 0
        if self.path.is_file():
            for _, line in iter_lines_bounded(self.path, max_line_bytes=1 << 30):
                if not line.endswith("\n"):
                    break  # a line cut by a crash
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good_bytes += len(line.encode("utf-8"))
        if lines and lines[0].get("key") == self.key:
            self.done = {int(c["chunk"]): c for c in lines[1:] if "chunk" in c}
            with open(self.path, "r+b") as f:  # drop a cut last line, so that the next entry starts a line
                f.truncate(good_bytes)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"key": self.key}) + "\n")

    def write(self, ci, start, k, lengths, returns, reasons, items, records) -> None:
        entry = {
            "chunk": ci, "lengths": lengths[start : start + k].tolist(), "returns": returns[start : start + k].tolist(),
            "reasons": reasons[start : start + k], "items": [list(map(int, i)) for i in items[start : start + k]],
            "records": [{**r, "record": _plain(r["record"])} for r in records],
        }
        data = (json.dumps(entry) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[ci] = entry

    def restore(self, ci, start, lengths, returns, reasons, items, records) -> None:
        e = self.done[ci]
        k = len(e["lengths"])
        lengths[start : start + k] = e["lengths"]
        returns[start : start + k] = e["returns"]
        reasons[start : start + k] = e["reasons"]
        for j in range(k):
            items[start + j] = list(e["items"][j])
        if records is not None:
            records.extend(e["records"])


def mean_ci95(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def user_mean_ci95(users: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Mean and 95% interval with the user as the unit: each distinct user's sessions are averaged first, so that
    a user's repeated sessions (other seeds, or the same user drawn twice: copies when nothing samples) narrow
    nothing. With each user once it is :func:`mean_ci95` of ``x``."""
    users = np.asarray(users)
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    return _mean_ci95_of_users(x, *per_user_means(users, x))


def _mean_ci95_of_users(x: np.ndarray, uniq: np.ndarray, per_user: np.ndarray) -> tuple[float, float]:
    """:func:`user_mean_ci95` from the per-user means already computed (``uniq``, ``per_user``)."""
    # each user once: the same values, kept in the sessions' order so that sums round as they always have
    return mean_ci95(x if uniq.size == np.size(x) else per_user)


def per_user_means(users: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct users (sorted) and the mean of ``x`` over each one's sessions."""
    uniq, inverse = np.unique(np.asarray(users), return_inverse=True)
    x = np.asarray(x, dtype=np.float64)
    return uniq, np.bincount(inverse, weights=x, minlength=uniq.size) / np.bincount(inverse, minlength=uniq.size)


def paired_difference(before: Mapping[str, Any], after: Mapping[str, Any], key: str = "len") -> dict[str, Any]:
    """How much ``after`` beats ``before`` on the same users: the mean over users of ``after``'s per-user mean
    minus ``before``'s, with its 95% Student-t interval (:func:`mean_ci95` of the differences).

    When both rows hold the same users, each once, and all are paired, this interval is never wider than the sum
    of the two rows' own half-widths (what "intervals apart" asks the difference of means to exceed), and narrower
    still where a user who stays long with one policy tends to stay long with the other.

    Args:
        before, after: rows of :func:`summarize` (``ulrec bench`` / ``ulrec loop`` evaluations) that carry
            ``per_user``; users are matched by index, and only the users both rows hold are paired.
        key: ``"len"`` (continued steps) or ``"return"`` (Traj Reward).

    Returns:
        ``{"mean": ..., "ci95": ..., "users": n}``; ``mean - ci95 > 0`` says ``after`` is ahead at 95%.

    Raises:
        ValueError: a row without ``per_user`` (written before ulrec kept it), one whose ``per_user`` is malformed
            (a user twice, or not one value per user), an unknown ``key``, or no user in common.

    Examples:
        >>> from agents.evaluation import paired_difference
        >>> a = {"policy": "a", "per_user": {"users": [0, 1, 2], "len": [3.0, 5.0, 4.0], "return": [1, 2, 1]}}
        >>> b = {"policy": "b", "per_user": {"users": [0, 1, 2], "len": [4.0, 7.0, 4.0], "return": [1, 2, 2]}}
        >>> d = paired_difference(a, b)
        >>> d["mean"], d["users"]
        (1.0, 3)
    """
    if key not in ("len", "return"):
        raise ValueError(f"key={key!r}: use 'len' or 'return'.")
    sides = []
    for row in (before, after):
        pu = row.get("per_user")
        if not isinstance(pu, Mapping) or key not in pu or "users" not in pu:
            raise ValueError(f"row {row.get('policy')!r} has no per_user {key!r}: it was written before ulrec kept "
                             "per-user means; evaluate the policy again to pair it (for a loop run: "
                             "python benchmarks/paired_evals.py RUN).")
        users = np.asarray(pu["users"], dtype=np.int64)
        values = np.asarray(pu[key], dtype=np.float64)
        if users.shape != values.shape:
            raise ValueError(f"row {row.get('policy')!r}: per_user holds {users.size} users and {values.size} "
                             f"{key!r} values; give one value per user.")
        if np.unique(users).size != users.size:
            raise ValueError(f"row {row.get('policy')!r}: per_user names a user more than once; give each user's mean "
                             "once (summarize does).")
        sides.append(dict(zip(users.tolist(), values.tolist())))
    common = sorted(set(sides[0]) & set(sides[1]))
    if not common:
        raise ValueError(f"rows {before.get('policy')!r} and {after.get('policy')!r} share no user: evaluate both on "
                         "the same users.")
    diff = np.array([sides[1][u] - sides[0][u] for u in common])
    mean, ci = mean_ci95(diff)
    return {"mean": mean, "ci95": ci, "users": len(common)}


def summarize(name: str, sessions: Sessions, world: World, peeks: bool = False,
              max_episode_steps: int = 100) -> dict[str, Any]:
    """The row of the benchmark table (and of the JSON) for one policy; ``length_histogram`` counts sessions
    by length ``0..max_episode_steps``. Means and intervals take the user as the unit (:func:`user_mean_ci95`);
    ``users`` is the number of distinct users, and ``per_user`` their indices in the world (sorted) with each
    one's mean Len and Traj Reward, which :func:`paired_difference` pairs across policies."""
    users_u, len_u = per_user_means(sessions.users, sessions.lengths)
    _, ret_u = per_user_means(sessions.users, sessions.returns)
    len_mean, len_ci = _mean_ci95_of_users(sessions.lengths, users_u, len_u)
    ret_mean, ret_ci = _mean_ci95_of_users(sessions.returns, users_u, ret_u)
    steps = int(sessions.lengths.sum())
    reasons: dict[str, float] = {}
    for r in sessions.leave_reasons:
        reasons[r] = reasons.get(r, 0) + 1
    n = len(sessions.leave_reasons)
    # Intra-list distance relative to random pairs: 1 means as diverse as random items.
    dist = world.distance
    scale = float(dist.mean()) * world.n_items / max(world.n_items - 1, 1)
    ild = [float(dist[np.ix_(i, i)].sum() / (i.size * (i.size - 1))) / scale for i in sessions.items if i.size > 1]
    shown = np.unique(np.concatenate(sessions.items)) if sessions.items else np.zeros(0)
    user_steps = sessions.user_steps
    return {
        "policy": name,
        "peeks": bool(peeks),
        "episodes": n,
        "users": int(users_u.size),
        "len_mean": len_mean,
        "len_ci95": len_ci,
        "return_mean": ret_mean,
        "return_ci95": ret_ci,
        "reward_per_step": float(sessions.returns.sum() / steps) if steps else 0.0,
        "leave_reasons": {k: 100.0 * v / n for k, v in sorted(reasons.items())},
        "intra_list_distance": float(np.mean(ild)) if ild else float("nan"),
        "coverage": float(shown.size / world.n_items),
        "invalid_actions": int(sessions.invalid_actions),
        "user_steps": user_steps,
        "seconds": sessions.seconds,
        "user_steps_per_s": user_steps / sessions.seconds if sessions.seconds > 0 else float("nan"),
        "length_histogram": np.bincount(sessions.lengths, minlength=max_episode_steps + 1).tolist(),
        "per_user": {"users": users_u.tolist(), "len": len_u.tolist(), "return": ret_u.tolist()},
        "per_seed": {
            str(int(s)): {"len_mean": float(sessions.lengths[sessions.seeds == s].mean()),
                          "return_mean": float(sessions.returns[sessions.seeds == s].mean())}
            for s in np.unique(sessions.seeds)
        },
    }
