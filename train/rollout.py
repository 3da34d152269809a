"""Rollouts: any policy on the train users, every step kept as a structured :class:`StepRecord`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.evaluation import choose_users, run_policy
from agents.policy import Policy
from agents.progress import Progress
from train.records import StepRecord
from ulrec_env import World
from ulrec_env.safe_io import iter_lines_bounded, read_text_bounded
from ulrec_env.storage import atomic_write_text

__all__ = ["collect_rollouts", "summarize_rollout", "save_rollout", "load_rollout", "ROLLOUT_FILE"]

ROLLOUT_FILE = "steps.jsonl"
SUMMARY_FILE = "summary.json"


def _field(record: Any, name: str, default: Any = None) -> Any:
    if record is None:
        return default
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def collect_rollouts(
    policy: Policy,
    world: World,
    episodes: int | str,
    split: str = "train",
    seed: int = 0,
    env_settings: Mapping[str, Any] | None = None,
    max_episode_steps: int = 100,
    batch_size: int = 64,
    prompt_builder: Callable[[World, Mapping[str, np.ndarray]], str] | None = None,
    completion_builder: Callable[[World, int], str] | None = None,
    progress: bool = True,
    episode_offset: int = 0,
    journal: str | os.PathLike | None = None,
    journal_tag: Any = None,
    sessions_per_user: int = 1,
) -> list[StepRecord]:
    """Run ``policy`` for ``episodes`` sessions of ``split`` users (each ``sessions_per_user`` times) and return
    one record per step.

    The LLM agent returns, with its actions, the exact prompt and completion of every decision; those go
    into the records. Other policies (greedy, the oracle, ...) act on ids: give ``prompt_builder`` /
    ``completion_builder`` to write the prompt and completion an LLM would have seen for their actions, so
    their sessions can be used as training data (the paper tuned on a stronger model's trajectories).

    Args:
        policy: Any :class:`Policy`.
        world: The world.
        episodes: Number of sessions, or ``"all"`` users of the split once.
        split: Users to draw from (``"train"`` for training data).
        seed: Picks the users, seeds the environment and the policy's sampling.
        env_settings: ``ULRec-v0`` settings.
        max_episode_steps: Horizon.
        batch_size: Sessions stepped together.
        prompt_builder: ``(world, one_session_obs) -> prompt`` for policies without records.
        completion_builder: ``(world, item) -> completion`` for policies without records
            (``agents.prompting.item_completion`` in the prompt format of the model that will train on them).
        progress: Show a progress bar.
        episode_offset: Added to episode ids (so several rollouts can be concatenated).
        journal, journal_tag: Keep finished batches of sessions in this file and resume from it (see
            :func:`agents.evaluation.run_policy`).
        sessions_per_user: Sessions of each chosen user, one after another in the user order (a sampling policy
            makes them differ; a deterministic one repeats itself): ``episodes * sessions_per_user`` in all.

    Raises:
        ValueError: ``sessions_per_user`` is not a positive integer.
    """
    if isinstance(sessions_per_user, bool) or not isinstance(sessions_per_user, (int, np.integer)) \
            or sessions_per_user < 1:
        raise ValueError(f"`sessions_per_user` must be a positive integer (1: one session per user), got "
                         f"{sessions_per_user!r}.")
    users = np.repeat(choose_users(world, split, episodes, seed), int(sessions_per_user))
    wrapped = _PromptingPolicy(policy, world, prompt_builder) if prompt_builder is not None else policy
    with Progress(None, f"rollout {policy.name}", unit="user-step", enabled=progress) as bar:  # its final line
        sessions = run_policy(wrapped, world, users, seed=seed, env_settings=env_settings,
                              max_episode_steps=max_episode_steps, batch_size=batch_size, keep_records=True,
                              on_step=bar.update, journal=journal, journal_tag=journal_tag)
    out: list[StepRecord] = []
    for r in sessions.records:
        e = r["episode"]
        title = world.titles[r["item"]]
        rec = r["record"]
        prompt = _field(rec, "prompt")
        completion = _field(rec, "completion")
        if completion is None:
            completion = completion_builder(world, r["item"]) if completion_builder is not None else title
        out.append(StepRecord(
            episode=episode_offset + e,
            user=r["user"],
            step=r["step"],
            prompt=prompt or "",
            completion=completion,
            item=r["item"],
            title=title,
            rating=r["rating"],
            reward=r["reward"],
            feedback=r["feedback"],
            leave_reason=r["leave_reason"],
            truncated=r["truncated"],
            session_len=int(sessions.lengths[e]),
            session_return=float(sessions.returns[e]),
            logprob=_field(rec, "logprob"),
        ))
    out.sort(key=lambda s: (s.episode, s.step))
    return out


class _PromptingPolicy(Policy):
    """Writes, for each decision of a policy without text, the prompt an LLM would have seen."""

    def __init__(self, inner: Policy, world: World, prompt_builder: Callable) -> None:
        super().__init__()
        self.inner, self.prompt_builder = inner, prompt_builder
        self.name, self.peeks = inner.name, inner.peeks

    def bind(self, world, env=None):
        self.inner.bind(world, env)
        return super().bind(world, env)

    def reset(self, seed=None):
        self.inner.reset(seed)

    def _act_batch(self, obs):
        return self.inner.act_batch(obs)

    def _decode_batch(self, obs):
        actions = self.inner.act_batch(obs)
        prompts = [{"prompt": self.prompt_builder(self.world, {k: v[i] for k, v in obs.items()})}
                   for i in range(len(actions))]
        return actions, prompts


def summarize_rollout(records: Sequence[StepRecord]) -> dict[str, Any]:
    """Episodes, steps, leave reasons (%), mean Len and return of a rollout."""
    episodes: dict[int, StepRecord] = {}
    for r in records:
        episodes[r.episode] = r  # the last step of each episode (records are sorted)
    n = len(episodes)
    reasons: dict[str, float] = {}
    for r in episodes.values():
        key = r.leave_reason or ("horizon" if r.truncated else "unfinished")
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "episodes": n,
        "steps": len(records),
        "continued_steps": sum(r.feedback == "continue" for r in records),
        "len_mean": float(np.mean([r.session_len for r in episodes.values()])) if n else 0.0,
        "return_mean": float(np.mean([r.session_return for r in episodes.values()])) if n else 0.0,
        "leave_reasons": {k: 100.0 * v / n for k, v in sorted(reasons.items())},
    }


def save_rollout(records: Sequence[StepRecord], out_dir: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> dict:
    """Write ``steps.jsonl`` and ``summary.json`` (with ``meta``) into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ROLLOUT_FILE, "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    summary = {**summarize_rollout(records), **dict(meta or {})}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=float))
    return summary


def load_rollout(directory: str | os.PathLike) -> tuple[list[StepRecord], dict[str, Any]]:
    """Read a folder written by :func:`save_rollout`; errors name the file and line."""
    d = Path(directory)
    path = d / ROLLOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rollout here; write one with `ulrec rollout --out {d}`.")
    records = []
    for lineno, line in iter_lines_bounded(path):
        if not line.strip():
            continue
        try:
            records.append(StepRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}, line {lineno}: not a step record ({e}).") from None
    summary = d / SUMMARY_FILE
    meta = json.loads(read_text_bounded(summary, "a rollout summary")) if summary.is_file() else {}
    return records, meta
