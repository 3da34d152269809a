"""From rollout steps to unpaired KTO examples: the labelling rules, their report, and the data folder format.

The rules are pure functions of the step records (no model, no randomness):

* a step where the user **continued** is *desirable* (``label=True``);
* the step that made the user **leave** is *undesirable* (``label=False``);
* a session cut by the horizon (``truncated``) has no leave step, hence no undesirable example.

Everything beyond that is an option of :class:`LabelOptions`, each off or at the seed system's value by default.

A labelled data set is stored as a folder (:func:`save_examples` / :func:`load_examples`) holding
``examples.jsonl`` (one example a line) and ``meta.json`` (format version, label counts, options, and the world
fingerprint of the catalog the rollouts came from), both written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from train.records import StepRecord
from ulrec_env.safe_io import iter_lines_bounded, read_text_bounded
from ulrec_env.storage import atomic_write_text

__all__ = [
    "LabelOptions",
    "LabelReport",
    "LabelledData",
    "label_steps",
    "group_episodes",
    "label_counts",
    "kto_label_counts",
    "loss_terms_of",
    "recommend_weights",
    "subsample_to_band",
    "weighted_ratio",
    "save_examples",
    "load_examples",
    "EXAMPLES_FORMAT_VERSION",
    "TRL_WEIGHT_BAND",
    "BALANCE_BY",
    "LOSS_TERMS",
]

EXAMPLES_FORMAT_VERSION = 1
"""Version of the ``examples.jsonl`` / ``meta.json`` layout written by :func:`save_examples`."""

#: How a KTO stage balances its labels: loss weights (:func:`recommend_weights`) or a subset
#: (:func:`subsample_to_band`); ``train.tune.TuneConfig.balance_by``.
BALANCE_BY = ("weights", "subsample")

#: Which terms of ULRec's KTO-stage loss an example enters (its optional ``loss_terms`` key; ``"both"`` when absent):
#: both, the KTO term only, or the SFT term only (desirable examples only). The SFT stage ignores the key.
LOSS_TERMS = ("both", "kto", "sft")

TRL_WEIGHT_BAND = (1.0, 4.0 / 3.0)
"""TRL's recommended band (from Eq. 8 of the KTO paper) for
``(desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)``."""

_EXAMPLES_FILE = "examples.jsonl"
_META_FILE = "meta.json"


@dataclass(frozen=True)
class LabelOptions:
    """Options of :func:`label_steps`.

    Attributes:
        min_positives: Episodes with fewer than this many desirable steps contribute no desirable example (their
            leave step is still an undesirable example). Seed value: 2 (the paper keeps episodes with at least 2
            positives). ``0`` or ``1`` turns the filter off.
        extra_negatives: For a leave whose reason is in ``extra_negative_reasons``, the ``k`` continued steps right
            before the leave are relabelled undesirable (they built up the redundancy or boredom that made the user
            leave). Default 0 (off, as in the seed). Applied before ``min_positives`` counts the positives.
        extra_negative_reasons: Leave reasons that trigger ``extra_negatives``. Default ``("redundant", "bored")``.
        length_weighting: Whether to attach a ``weight`` to each example proportional to its session's length
            (``session_len + 1``), normalised to mean 1 within each label, so steps of long sessions count more.
            Default False (off, as in the seed): every example weighs 1.
        keep_best: Of each user's episodes in the steps, only the ``keep_best`` longest give desirable examples
            (ties: the higher return, then the lower episode id); the others keep only their undesirable ones.
            With several sampled sessions per user this is rejection sampling: the continued steps of a user's
            best sessions are the ones imitated. Default 0 (off): every episode gives its desirable examples.
            The ranking is by outcome: a best session whose positives ``min_positives`` dropped (after
            ``extra_negatives``) still takes its place, and the user's shorter sessions give none.
    """

    min_positives: int = 2
    extra_negatives: int = 0
    extra_negative_reasons: tuple[str, ...] = ("redundant", "bored")
    length_weighting: bool = False
    keep_best: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.min_positives, int) or self.min_positives < 0:
            raise ValueError(f"`min_positives` must be an int >= 0, got {self.min_positives!r}; use 0 to turn it off.")
        if not isinstance(self.extra_negatives, int) or self.extra_negatives < 0:
            raise ValueError(
                f"`extra_negatives` must be an int >= 0, got {self.extra_negatives!r}; use 0 to turn it off."
            )
        if isinstance(self.keep_best, bool) or not isinstance(self.keep_best, int) or self.keep_best < 0:
            raise ValueError(f"`keep_best` must be a non-negative integer (0: every session gives its desirable "
                             f"steps), got {self.keep_best!r}.")
        if isinstance(self.extra_negative_reasons, str):
            raise TypeError(
                "`extra_negative_reasons` must be a tuple of reasons, got the string "
                f"{self.extra_negative_reasons!r}; write ({self.extra_negative_reasons!r},)."
            )
        object.__setattr__(self, "extra_negative_reasons", tuple(self.extra_negative_reasons))


@dataclass(frozen=True)
class LabelReport:
    """Counts of one labelling run.

    Attributes:
        episodes: Episodes seen.
        steps: Steps seen.
        desirable: Desirable examples written.
        undesirable: Undesirable examples written (leave steps plus extra negatives).
        extra_negatives: Continued steps relabelled undesirable by ``extra_negatives``.
        truncated_episodes: Episodes cut by the horizon (no negative).
        filtered_episodes: Episodes whose positives were dropped by ``min_positives``.
        filtered_positives: Desirable steps dropped by ``min_positives``.
        below_best_episodes: Episodes whose positives were dropped by ``keep_best`` (not among their user's best).
        below_best_positives: Desirable steps dropped by ``keep_best``.
        leave_reasons: Number of undesirable leave steps per leave reason.
    """

    episodes: int = 0
    steps: int = 0
    desirable: int = 0
    undesirable: int = 0
    extra_negatives: int = 0
    truncated_episodes: int = 0
    filtered_episodes: int = 0
    filtered_positives: int = 0
    below_best_episodes: int = 0
    below_best_positives: int = 0
    leave_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.desirable + self.undesirable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.leave_reasons.items())) or "none"
        return (
            f"{self.episodes} episodes, {self.steps} steps -> {self.desirable} desirable / {self.undesirable} "
            f"undesirable ({self.extra_negatives} extra negatives); {self.truncated_episodes} truncated episodes; "
            f"{self.filtered_episodes} episodes ({self.filtered_positives} positives) below min_positives; "
            + (f"{self.below_best_episodes} episodes ({self.below_best_positives} positives) below keep_best; "
               if self.below_best_episodes else "")
            + f"leave reasons: {reasons}"
        )


def _as_record(step: StepRecord | Mapping[str, Any], index: int) -> StepRecord:
    if isinstance(step, StepRecord):
        return step
    if isinstance(step, Mapping):
        try:
            return StepRecord.from_dict(step)
        except (TypeError, ValueError) as e:
            raise ValueError(f"step {index} is not a valid StepRecord dict: {e}") from e
    raise TypeError(f"step {index} must be a StepRecord or a dict, got {type(step).__name__}.")


def group_episodes(steps: Iterable[StepRecord | Mapping[str, Any]]) -> list[list[StepRecord]]:
    """A rollout's steps as its sessions: one list per episode, in the order episodes first appear, each sorted by
    step. The grouping :func:`label_steps` labels; it checks that every step but a session's last continued and
    that no step index repeats (a ``ValueError`` names the episode)."""
    episodes: dict[int, list[StepRecord]] = defaultdict(list)
    for i, s in enumerate(steps):
        rec = _as_record(s, i)
        episodes[rec.episode].append(rec)
    out = []
    for ep, recs in episodes.items():
        recs.sort(key=lambda r: r.step)
        seen = [r.step for r in recs]
        if len(set(seen)) != len(seen):
            raise ValueError(f"episode {ep} has duplicate step indices {seen}; each step must appear once.")
        for r in recs[:-1]:
            if r.feedback != "continue":
                raise ValueError(
                    f"episode {ep} step {r.step} has feedback {r.feedback!r} but is not the episode's last step; "
                    "only the last step of an episode can be a leave."
                )
        out.append(recs)
    return out


def label_steps(
    steps: Iterable[StepRecord | Mapping[str, Any]], options: LabelOptions | None = None
) -> tuple[list[dict[str, Any]], LabelReport]:
    """Label the steps of a rollout as unpaired desirable / undesirable examples.

    Args:
        steps: Step records (or their dicts) of any number of episodes, in any order.
        options: Labelling options; defaults to :class:`LabelOptions` (seed behaviour).

    Returns:
        ``(examples, report)``: ``examples`` are dicts with ``prompt``, ``completion``, ``label`` (bool) and
        ``weight`` (float, 1.0 unless ``length_weighting``), plus ``episode``, ``step``, ``item`` and ``reason``
        (the leave reason for a leave step, ``"extra:<reason>"`` for an extra negative, ``None`` for a positive);
        ordered by episode, then step. ``report`` holds the counts.

    Raises:
        ValueError: A step has an unknown ``feedback``, or an episode has a leave before its last step.
    """
    opts = options or LabelOptions()
    examples: list[dict[str, Any]] = []
    n_steps = n_extra = n_trunc = n_filt_ep = n_filt_pos = 0
    reasons: dict[str, int] = defaultdict(int)
    episodes = group_episodes(steps)
    episodes.sort(key=lambda recs: recs[0].episode)
    best = _best_episodes(episodes, opts.keep_best)
    n_below_ep = n_below_pos = 0
    for recs in episodes:
        n_steps += len(recs)
        for r in recs:
            if r.feedback not in ("continue", "leave"):
                raise ValueError(
                    f"episode {r.episode} step {r.step} has feedback {r.feedback!r}; expected 'continue' or 'leave'."
                )
        last = recs[-1]
        left = last.feedback == "leave"
        if not left:
            n_trunc += int(last.truncated)
        # (record, label, reason) per step of this episode
        labelled: list[tuple[StepRecord, bool, str | None]] = [(r, r.feedback == "continue", None) for r in recs]
        if left:
            labelled[-1] = (last, False, last.leave_reason)
            reasons[str(last.leave_reason)] += 1
            if opts.extra_negatives and last.leave_reason in opts.extra_negative_reasons:
                first = max(0, len(recs) - 1 - opts.extra_negatives)
                for j in range(first, len(recs) - 1):
                    labelled[j] = (recs[j], False, f"extra:{last.leave_reason}")
                    n_extra += 1
        n_pos = sum(1 for _, lab, _ in labelled if lab)
        if n_pos and n_pos < opts.min_positives:
            labelled = [t for t in labelled if not t[1]]
            n_filt_ep += 1
            n_filt_pos += n_pos
            n_pos = 0
        if n_pos and best is not None and recs[0].episode not in best:
            labelled = [t for t in labelled if not t[1]]
            n_below_ep += 1
            n_below_pos += n_pos
        for r, lab, reason in labelled:
            examples.append(
                {
                    "prompt": r.prompt,
                    "completion": r.completion,
                    "label": bool(lab),
                    "weight": float(r.session_len + 1),
                    "episode": int(r.episode),
                    "step": int(r.step),
                    "item": int(r.item),
                    "reason": reason,
                }
            )
    _normalise_weights(examples, opts.length_weighting)
    n_des = sum(1 for e in examples if e["label"])
    report = LabelReport(
        episodes=len(episodes),
        steps=n_steps,
        desirable=n_des,
        undesirable=len(examples) - n_des,
        extra_negatives=n_extra,
        truncated_episodes=n_trunc,
        filtered_episodes=n_filt_ep,
        filtered_positives=n_filt_pos,
        below_best_episodes=n_below_ep,
        below_best_positives=n_below_pos,
        leave_reasons=dict(sorted(reasons.items())),
    )
    return examples, report


def _best_episodes(episodes: Sequence[Sequence[StepRecord]], keep: int) -> set[int] | None:
    """The ids of each user's ``keep`` best episodes (longest, then highest return, then lowest id); None if
    ``keep`` is 0 (every episode counts)."""
    if not keep:
        return None
    by_user: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    for recs in episodes:
        first = recs[0]
        by_user[int(first.user)].append((len(recs), float(first.session_return), int(first.episode)))
    best: set[int] = set()
    for eps in by_user.values():
        eps.sort(key=lambda t: (-t[0], -t[1], t[2]))
        best.update(ep for _, _, ep in eps[:keep])
    return best


def _normalise_weights(examples: list[dict[str, Any]], length_weighting: bool) -> None:
    """Set ``weight`` to 1, or (length weighting) to ``(session_len + 1)`` over its label's mean."""
    if not length_weighting:
        for e in examples:
            e["weight"] = 1.0
        return
    for label in (True, False):
        group = [e for e in examples if e["label"] is label]
        if not group:
            continue
        mean = sum(e["weight"] for e in group) / len(group)
        for e in group:
            e["weight"] = e["weight"] / mean


def label_counts(examples: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """``(n_desirable, n_undesirable)`` of labelled examples."""
    n_des = n_und = 0
    for i, e in enumerate(examples):
        lab = e["label"]
        if not isinstance(lab, bool):
            raise TypeError(f"example {i} has label {lab!r} ({type(lab).__name__}); labels must be bool.")
        n_des += lab
        n_und += not lab
    return n_des, n_und


def loss_terms_of(example: Mapping[str, Any], index: int = 0) -> str:
    """The ``loss_terms`` of an example (:data:`LOSS_TERMS`; ``"both"`` when the key is absent), checked.

    Raises:
        ValueError: An unknown value, or ``"sft"`` on an undesirable example (the SFT term imitates desirable steps).
    """
    terms = example.get("loss_terms", "both")
    if terms not in LOSS_TERMS:
        raise ValueError(f"example {index} has loss_terms {terms!r}; use one of {', '.join(map(repr, LOSS_TERMS))}.")
    if terms == "sft" and example["label"] is not True:
        raise ValueError(f"example {index} is undesirable with loss_terms 'sft'; the SFT term imitates desirable "
                         "examples only: give it 'kto' or 'both'.")
    return terms


def kto_label_counts(examples: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """``(n_desirable, n_undesirable)`` of the examples that enter the KTO term (``loss_terms`` other than ``"sft"``):
    the counts that :func:`recommend_weights` and :func:`subsample_to_band` balance."""
    return label_counts(e for i, e in enumerate(examples) if loss_terms_of(e, i) != "sft")


def weighted_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    """``(desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)``: TRL wants it in ``[1, 4/3]``."""
    if n_undesirable <= 0 or undesirable_weight <= 0:
        return math.inf
    return (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)


def recommend_weights(n_desirable: int, n_undesirable: int, target: float = 7.0 / 6.0) -> tuple[float, float]:
    """Loss weights that put the weighted desirable:undesirable ratio inside TRL's recommended band.

    TRL's ``KTOTrainer`` (after Eq. 8 of the KTO paper) recommends
    ``1 <= (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable) <= 4/3``. Only one weight is moved
    off 1, and it is scaled down, never up, so the learning rate keeps its meaning: with more desirable than
    undesirable examples (the usual case in rollouts) ``desirable_weight`` shrinks; with fewer, ``undesirable_weight``
    shrinks.

    Args:
        n_desirable: Number of desirable examples (> 0).
        n_undesirable: Number of undesirable examples (> 0).
        target: The weighted ratio to aim at; default 7/6, the middle of the band.

    Returns:
        ``(desirable_weight, undesirable_weight)``; ``(1.0, 1.0)`` when the raw ratio is already in the band.

    Raises:
        ValueError: A count is not positive, or ``target`` is outside the band.
    """
    if n_desirable <= 0 or n_undesirable <= 0:
        raise ValueError(
            f"both label counts must be > 0 to balance KTO weights, got {n_desirable} desirable and {n_undesirable} "
            "undesirable; label more rollouts (or relax `min_positives`)."
        )
    lo, hi = TRL_WEIGHT_BAND
    if not lo <= target <= hi:
        raise ValueError(f"`target` must lie in TRL's band [{lo}, {hi:.4f}], got {target}.")
    raw = n_desirable / n_undesirable
    if lo <= raw <= hi:
        return 1.0, 1.0
    if raw > hi:
        return target / raw, 1.0
    return 1.0, raw / target


def subsample_to_band(examples: Sequence[Mapping[str, Any]], seed: int = 0,
                      target: float = 7.0 / 6.0) -> list[Mapping[str, Any]]:
    """Balance KTO data by sampling instead of weighting: keep every example of the rarer label and a seeded
    random subset of the other, so that the raw desirable:undesirable ratio sits in TRL's band with both weights 1.

    A desirable weight of ``w`` (:func:`recommend_weights`) becomes a desirable example kept with probability
    ``w``: the KTO loss keeps its direction in expectation, but it is larger by ``len(examples) / len(subset)``,
    since the batch mean no longer divides by the weighted-away examples (so, next to ULRec's SFT term, which is a
    mean over desirable tokens, the KTO term weighs that much more). And a step-capped stage, which sees only
    ``max_steps * batch_size`` examples, meets the rarer label as often as the other instead of a few times.
    Examples that enter the SFT term only (``loss_terms`` ``"sft"``) are neither counted nor cut.

    Args:
        examples: Labelled examples (``label`` bool).
        seed: Seed of the subset.
        target: The raw ratio to aim at (inside :data:`TRL_WEIGHT_BAND`); default 7/6, as :func:`recommend_weights`.

    Returns:
        The kept examples, in their original order; all of them when the ratio is already in the band.

    Raises:
        ValueError: A label has no example, or ``target`` is outside the band.
    """
    n_des, n_und = kto_label_counts(examples)
    d_w, u_w = recommend_weights(n_des, n_und, target)  # checks the counts and the target
    if d_w == 1.0 and u_w == 1.0:
        return list(examples)
    majority = d_w < 1.0  # the label that is cut: desirable when d_w < 1
    n_major = n_des if majority else n_und
    keep_n = max(1, round(n_major * (d_w if majority else u_w)))
    idx = [i for i, e in enumerate(examples) if e["label"] is majority and loss_terms_of(e, i) != "sft"]
    kept = set(np.random.default_rng(seed).choice(idx, size=keep_n, replace=False).tolist())
    return [e for i, e in enumerate(examples) if e["label"] is not majority or i in kept]


@dataclass(frozen=True)
class LabelledData:
    """A labelled data folder as loaded by :func:`load_examples`.

    Attributes:
        examples: The examples (dicts with at least ``prompt``, ``completion``, ``label``, ``weight``).
        meta: The folder's ``meta.json`` (``world_fingerprint``, ``report``, ``options``, ...).
        path: The folder, when loaded from disk.
    """

    examples: list[dict[str, Any]]
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def world_fingerprint(self) -> str | None:
        return self.meta.get("world_fingerprint")

    def __len__(self) -> int:
        return len(self.examples)


def save_examples(
    examples: Sequence[Mapping[str, Any]],
    directory: str | os.PathLike,
    *,
    world_fingerprint: str | None = None,
    report: LabelReport | None = None,
    options: LabelOptions | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write labelled examples to ``directory`` as ``examples.jsonl`` plus ``meta.json`` (each atomically).

    ``examples.jsonl`` is written first and ``meta.json`` last, so a folder with a ``meta.json`` is complete.

    Args:
        examples: Dicts with at least ``prompt`` (str), ``completion`` (str) and ``label`` (bool).
        directory: Folder to write (created if needed).
        world_fingerprint: ``World.fingerprint()`` of the catalog the rollouts came from; :func:`train.tune.tune`
            refuses the data for another world when given one.
        report: The :class:`LabelReport`, stored for the adapter's sidecar.
        options: The :class:`LabelOptions` used.
        extra_meta: More JSON-serialisable metadata (e.g. the rollout run, the prompt format version).

    Returns:
        The folder path.
    """
    path = Path(directory)
    lines = []
    for i, e in enumerate(examples):
        for key, typ in (("prompt", str), ("completion", str), ("label", bool)):
            if not isinstance(e.get(key), typ):
                raise ValueError(
                    f"example {i} needs `{key}` of type {typ.__name__}, got {e.get(key)!r}; "
                    "build examples with train.labeling.label_steps."
                )
        row = dict(e)
        row.setdefault("weight", 1.0)
        lines.append(json.dumps(row, ensure_ascii=False))
    n_des, n_und = label_counts(examples)
    meta: dict[str, Any] = {
        "format_version": EXAMPLES_FORMAT_VERSION,
        "n_examples": len(lines),
        "n_desirable": n_des,
        "n_undesirable": n_und,
        "world_fingerprint": world_fingerprint,
        "report": report.to_dict() if report is not None else None,
        "options": asdict(options) if options is not None else None,
    }
    if extra_meta:
        meta.update(dict(extra_meta))
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / _EXAMPLES_FILE, "".join(line + "\n" for line in lines))
    atomic_write_text(path / _META_FILE, json.dumps(meta, indent=2, sort_keys=True, default=list) + "\n")
    return path


def load_examples(directory: str | os.PathLike) -> LabelledData:
    """Read a folder written by :func:`save_examples`.

    Raises:
        FileNotFoundError: The folder or one of its two files is missing.
        ValueError: A line of ``examples.jsonl`` is not valid JSON or lacks a field (the message names the line).
    """
    path = Path(directory)
    meta_file, ex_file = path / _META_FILE, path / _EXAMPLES_FILE
    for f in (meta_file, ex_file):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} not found: {path} is not a labelled data folder; write one with train.labeling.save_examples "
                "(or `ulrec label`)."
            )
    meta = json.loads(read_text_bounded(meta_file, "a labelled data folder's meta.json"))
    if meta.get("format_version") != EXAMPLES_FORMAT_VERSION:
        raise ValueError(
            f"{meta_file}: format_version {meta.get('format_version')!r} is not {EXAMPLES_FORMAT_VERSION}; relabel "
            "the rollouts with this version of ulrec."
        )
    examples = []
    for lineno, line in iter_lines_bounded(ex_file):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ex_file}, line {lineno}: not valid JSON ({e.msg}, column {e.colno}).") from None
        if not isinstance(row, dict):
            raise ValueError(f"{ex_file}, line {lineno}: expected a JSON object, got {type(row).__name__}.")
        for key in ("prompt", "completion", "label"):
            if key not in row:
                raise ValueError(f"{ex_file}, line {lineno}: missing field `{key}`.")
        row.setdefault("weight", 1.0)
        examples.append(row)
    return LabelledData(examples=examples, meta=meta, path=path)
