"""The steps of the pipeline, written once: rollout to a folder, label a rollout, tuning arguments, evaluate.

``ulrec rollout`` / ``label`` / ``tune`` (:mod:`train.cli`) and the loop (:mod:`train.loop`) both call these, so
a rollout's metadata, the labels' metadata and a stage's trainer arguments are the same whichever ran them.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from agents.evaluation import run_policy
from agents.policy import Policy
from agents.progress import Progress
from agents.prompting import PROMPT_FORMAT_VERSION, PromptFormat, item_completion, prompt_of_observation
from ulrec_env import World

__all__ = ["rollout_to_folder", "label_folder", "stage_trainer_args", "evaluate_policy", "writes_own_prompts",
           "rule_options"]


def writes_own_prompts(policy: Policy) -> bool:
    """Whether a policy's decisions come with the prompt it read (the LLM recommender); for the others a rollout
    writes the prompt the LLM would have been shown."""
    return isinstance(getattr(policy, "prompt_format", None), PromptFormat) and hasattr(policy, "tokenizer")


def rule_options(prompt_format: PromptFormat) -> dict[str, Any]:
    """The context for the prompt-reading rules (``genre-cycle``, ``genre-cycle-words``) that makes them read no more
    history and session than prompts in ``prompt_format`` show (``max_history``, a ``window`` of at most 2, and
    ``max_session``: the shown steps whose ratings a rule with ``avoid_rated_below`` reads)."""
    window = 2 if prompt_format.max_session is None else min(2, prompt_format.max_session)
    return {"max_history": prompt_format.max_history, "window": window, "max_session": prompt_format.max_session}


def rollout_to_folder(
    policy: Policy,
    world: World,
    out: str | os.PathLike,
    *,
    prompt_format: PromptFormat | None = None,
    tokenizer: Any = None,
    meta: Mapping[str, Any] | None = None,
    **run: Any,
) -> dict[str, Any]:
    """Sessions of ``policy``, saved to ``out`` (``steps.jsonl``, ``summary.json``).

    The LLM recommender records its own prompts (in its own :class:`~agents.prompting.PromptFormat`). Any other
    policy's steps get the prompt the LLM would have been shown, written with ``tokenizer`` in ``prompt_format``
    (both needed then). The summary records the world, its fingerprint, the sessions of each user, the prompt
    format and its version, the dtype of an LLM, and ``meta``.

    Args:
        policy, world: What to run, where.
        out: The folder to write.
        prompt_format, tokenizer: How prompts are written for a policy that writes none.
        meta: More entries of the summary (the policy's spec, adapter, iteration, ...).
        **run: :func:`train.rollout.collect_rollouts`' arguments (``episodes``, ``split``, ``seed``,
            ``env_settings``, ``max_episode_steps``, ``batch_size``, ``progress``, ``journal``, ``journal_tag``).

    Returns:
        The summary written to ``summary.json``.
    """
    from train.rollout import collect_rollouts, save_rollout

    if writes_own_prompts(policy):
        fmt, builder = policy.prompt_format, None  # type: ignore[attr-defined]
    else:
        if tokenizer is None:
            raise ValueError(f"policy {policy.name!r} writes no prompts: pass the `tokenizer` of the model that will "
                             f"train on its steps (and its `prompt_format`).")
        fmt = PromptFormat.coerce(prompt_format)

        def builder(w: World, obs: Mapping[str, Any]) -> str:
            return prompt_of_observation(w, obs, tokenizer, fmt)

    def completion(w: World, item: int) -> str:
        return item_completion(w, item, fmt)

    records = collect_rollouts(policy, world, prompt_builder=builder, completion_builder=completion, **run)
    return save_rollout(records, out, {
        "world": world.name, "world_fingerprint": world.fingerprint(), **dict(meta or {}),
        "sessions_per_user": int(run.get("sessions_per_user", 1)),
        "prompt_format_version": PROMPT_FORMAT_VERSION, "prompt": fmt.to_dict(),
        "dtype": getattr(policy, "dtype_name", None),
        **({"engine": policy.engine} if isinstance(getattr(policy, "engine", None), str) else {}),
    })


def label_folder(rollout: str | os.PathLike, out: str | os.PathLike, options: Any = None,
                 meta: Mapping[str, Any] | None = None) -> Any:
    """Label the rollout in folder ``rollout`` (continue = desirable, leave = undesirable) and save the examples
    to ``out``, carrying the rollout's world fingerprint, prompt format and its version, and ``meta``.

    Returns:
        The :class:`train.labeling.LabelReport`.
    """
    from train.labeling import label_steps, save_examples
    from train.rollout import load_rollout

    records, rollout_meta = load_rollout(rollout)
    examples, report = label_steps(records, options)
    save_examples(examples, out, world_fingerprint=rollout_meta.get("world_fingerprint"), report=report,
                  options=options, extra_meta={
                      "rollout": str(rollout), "world": rollout_meta.get("world"),
                      "prompt_format_version": rollout_meta.get("prompt_format_version"),
                      "prompt": rollout_meta.get("prompt"), **dict(meta or {})})
    return report


def stage_trainer_args(stage: str, out: str | os.PathLike, *, seed: int = 0, dtype: Any = "auto", progress: bool = True,
                       lora: bool = True, **given: Any) -> Any:
    """The trainer arguments of one tuning stage writing ``out``: :func:`train.tune.default_trainer_args` with the
    given fields (``None`` values are left to the defaults), outputs staged in ``out + ".staging"``, tqdm off
    without ``progress``."""
    from train.tune import default_trainer_args

    fields = {k: v for k, v in given.items() if v is not None}
    fields["disable_tqdm"] = not progress
    return default_trainer_args(stage, os.fspath(out) + ".staging", lora=lora, seed=seed, dtype=dtype, **fields)


def evaluate_policy(policy: Policy, world: World, users: np.ndarray, *, seed: int = 0,
                    env_settings: Mapping[str, Any] | None = None, max_episode_steps: int = 100,
                    batch_size: int = 256, progress: bool = False, journal: str | os.PathLike | None = None,
                    journal_tag: Mapping[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """One row of the ``ulrec bench`` table for ``policy`` on ``users`` (see :func:`agents.benchmark.policy_row`)."""
    from agents.benchmark import policy_row

    name = name or policy.name
    with Progress(None, f"eval {name}", unit="user-step", enabled=progress) as bar:
        sessions = run_policy(policy, world, users, seed=seed, env_settings=env_settings,
                              max_episode_steps=max_episode_steps, batch_size=batch_size, on_step=bar.update,
                              journal=journal, journal_tag=journal_tag)
    return policy_row(name, policy, sessions, world, max_episode_steps=max_episode_steps)
