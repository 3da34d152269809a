"""The tuning entry point behind ``ulrec tune``: ULRec-P (``stage="sft"``) and ULRec (``stage="kto"``).

:func:`tune` reads labelled examples, checks them, loads the model (SmolLM2-135M-Instruct by default, through
``agents.models.load_model_and_tokenizer``), trains a LoRA adapter (or all weights) with TRL, and writes ``out`` as a
standard PEFT ``save_pretrained`` folder plus the JSON sidecar ``ulrec_adapter.json`` (stage, prompt format version,
label counts, base model id, world fingerprint, hyper-parameters), so ``LLMRecommender.from_pretrained(adapter=out)``
and ``--init-adapter out`` both accept it. The folder appears atomically (written aside, then renamed).

LoRA defaults for small models (SmolLM2-135M and similar), see :func:`default_lora_config` and
:func:`default_trainer_args`: rank 16, ``lora_alpha`` 32, every linear projection of the blocks (not ``lm_head``);
SFT at lr 2e-4; KTO at lr 5e-5 with beta 0.1 and alpha 0.1. The paper's beta 0.01 / lr 5e-6 are for full
fine-tuning of an 8B model; LoRA needs about 10x the full-fine-tuning learning rate, and with beta 0.01 the
sigmoid in KTO stays in its linear range, so the preference signal barely moves a small adapter in a few epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from agents.models import ADAPTER_SIDECAR_FILE
from train.encoding import EncodingReport
from train.labeling import (
    BALANCE_BY,
    LabelledData,
    kto_label_counts,
    label_counts,
    load_examples,
    recommend_weights,
    subsample_to_band,
)
from ulrec_env.storage import atomic_write_text
from ulrec_env.safe_io import read_text_bounded

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig
    from trl import KTOConfig, SFTConfig

    from ulrec_env import World

__all__ = [
    "LR_SCHEDULES",
    "SIDECAR_FILE",
    "TuneConfig",
    "TuneResult",
    "default_lora_config",
    "default_trainer_args",
    "lr_schedule_args",
    "check_examples",
    "checkpoint_dir",
    "last_checkpoint",
    "read_sidecar",
    "tune",
]

SIDECAR_FILE = ADAPTER_SIDECAR_FILE
"""Name of the JSON sidecar written next to the adapter (:data:`agents.models.ADAPTER_SIDECAR_FILE`)."""
SIDECAR_VERSION = 1

Stage = Literal["sft", "kto"]
_STAGES = ("sft", "kto")

# The trainer fields of each named learning-rate schedule (a float warm-up below 1 is a fraction of the steps).
_LR_SCHEDULE_FIELDS: dict[str, dict[str, Any]] = {
    "cosine": {"lr_scheduler_type": "cosine", "warmup_steps": 0.1},
    "constant": {"lr_scheduler_type": "constant", "warmup_steps": 0},
}
#: Named learning-rate schedules of a tuning stage (see :func:`lr_schedule_args`).
LR_SCHEDULES = tuple(_LR_SCHEDULE_FIELDS)


def lr_schedule_args(schedule: str) -> dict[str, Any]:
    """The trainer fields of a named learning-rate schedule.

    ``"cosine"`` (the trainers' default): a warm-up over the first 10% of the steps, then cosine decay to 0.
    ``"constant"``: the stage's learning rate from its first step to its last, no warm-up. A stage that continues
    an adapter whose own schedule ended near 0 (the loop's KTO stages after ULRec-P) starts at full rate with it,
    where ``"cosine"`` climbs back up to the rate first.

    >>> from train.tune import lr_schedule_args
    >>> lr_schedule_args("constant")
    {'lr_scheduler_type': 'constant', 'warmup_steps': 0}
    """
    if schedule not in _LR_SCHEDULE_FIELDS:
        raise ValueError(f"`schedule` must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}.")
    return dict(_LR_SCHEDULE_FIELDS[schedule])


def default_lora_config(top_layers: int | None = None, num_layers: int | None = None) -> "LoraConfig":
    """LoRA for small causal LMs: r=16, alpha=32, dropout 0.05, all linear layers of the blocks (not ``lm_head``).

    Args:
        top_layers: Put adapters only in the last ``top_layers`` transformer blocks (``None``: every block). The
            backward pass then stops at the lowest adapted block: with 10 of SmolLM2's 30 blocks a training step
            costs about half as much on a CPU, at the price of adapting fewer layers.
        num_layers: The model's number of blocks (``config.num_hidden_layers``); required with ``top_layers``.
    """
    from peft import LoraConfig

    layers = None
    if top_layers is not None:
        if isinstance(top_layers, bool) or not isinstance(top_layers, int) or top_layers < 1:
            raise ValueError(f"`top_layers` must be None or a positive integer, got {top_layers!r}.")
        if num_layers is None:
            raise ValueError("`num_layers` is required with `top_layers` (the model's config.num_hidden_layers).")
        if top_layers > num_layers:
            raise ValueError(f"`top_layers` is {top_layers} but the model has {num_layers} blocks; "
                             f"pass at most {num_layers} or None for all.")
        layers = list(range(num_layers - top_layers, num_layers))
    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _use_bf16(dtype: Any = "auto") -> bool:
    """Whether training computes in bfloat16 (``dtype`` as in :func:`agents.models.resolve_dtype`)."""
    import torch

    from agents.models import resolve_device, resolve_dtype

    return resolve_dtype(dtype, resolve_device("auto")) == torch.bfloat16


def _checkpointing_field() -> str:
    """``activation_checkpointing`` (transformers >= 5.20) or ``gradient_checkpointing`` (before)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def default_trainer_args(
    stage: Stage, output_dir: str | os.PathLike, *, lora: bool = True, seed: int = 0, dtype: Any = "auto",
    **overrides: Any
) -> "KTOConfig | SFTConfig":
    """TRL arguments with ULRec's defaults for ``stage`` (any TRL field can be overridden by keyword).

    Defaults: 3 epochs, batch 8, cosine schedule with 10% warm-up (``warmup_steps=0.1``), no checkpoints, no reporting;
    ``dtype="auto"`` trains with bf16 mixed precision (``bf16=True``: float32 weights, LoRA weights and optimizer
    state, bfloat16 autocast compute) on a GPU that supports it and on a CPU with native bfloat16 (AMX or
    AVX512-BF16), float32 elsewhere (``"float32"`` forces it); no activation checkpointing (small models fit; it
    costs one extra forward per step). SFT: lr 2e-4 (LoRA) / 2e-5 (full). KTO (:class:`train.kto.ULRecKTOConfig`):
    lr 5e-5 (LoRA) / 5e-6 (full, the paper's), beta 0.1, ``sft_alpha`` 0.1, reference log-probs precomputed once
    per data set.

    Measured with LoRA on SmolLM2-135M (README, "The learning result"): at lr 5e-4 and beta 0.1, 60 KTO steps left
    the implicit rewards (beta x log-ratio) within +-0.07; beta 1.0 moved log-ratios by 1-3 nats in as many steps.
    For short LoRA runs on small models raise beta and the learning rate (e.g. ``--beta 1.0`` at 5e-4).
    """
    if stage not in _STAGES:
        raise ValueError(f"`stage` must be 'sft' or 'kto', got {stage!r}.")
    if dtype == "float16":
        raise ValueError("`dtype` float16 is not offered for tuning (no loss scaling here); use 'auto', 'bfloat16' "
                         "or 'float32'.")
    common: dict[str, Any] = dict(
        output_dir=os.fspath(output_dir),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        **lr_schedule_args("cosine"),
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=_use_bf16(dtype),
        # Without a GPU, say so: under `accelerate launch --multi_gpu --num_processes N` the processes then form
        # a gloo (CPU) data-parallel group instead of N unrelated single-process runs.
        use_cpu=not _has_gpu(),
        dataloader_num_workers=0,
    )
    # Off: small models fit, and it costs one extra forward per step. transformers 5.20 renamed the field.
    common[_checkpointing_field()] = False
    if stage == "sft":
        from trl import SFTConfig

        common.update(learning_rate=2e-4 if lora else 2e-5)
        common.update(overrides)
        return SFTConfig(**common)
    from train.kto import ULRecKTOConfig

    common.update(learning_rate=5e-5 if lora else 5e-6, beta=0.1, sft_alpha=0.1, precompute_ref_log_probs=True)
    common.update(overrides)
    return ULRecKTOConfig(**common)


@dataclass(frozen=True)
class TuneConfig:
    """How :func:`tune` trains (TRL's and PEFT's own configs are reused as they are).

    Attributes:
        trainer_args: A TRL ``SFTConfig`` (stage ``"sft"``) or ``KTOConfig`` / ``ULRecKTOConfig`` (stage ``"kto"``);
            ``None`` builds :func:`default_trainer_args`. Its ``output_dir`` is replaced by a staging folder.
        lora: The PEFT ``LoraConfig`` of a new adapter; ``None`` uses :func:`default_lora_config`. Ignored when an
            initial adapter is continued.
        lora_top_layers: With ``lora=None``: adapt only the last N blocks (see :func:`default_lora_config`).
        full_finetune: Train all weights instead of a LoRA adapter (an initial adapter is merged first).
        balance_weights: KTO only: when ``desirable_weight`` and ``undesirable_weight`` are both left at 1.0, set
            them with :func:`train.labeling.recommend_weights` so the weighted ratio sits in TRL's band.
        balance_by: How ``balance_weights`` balances: ``"weights"`` (the loss weights above) or ``"subsample"``
            (:func:`train.labeling.subsample_to_band`: the commoner label is cut to a seeded random subset, both
            weights stay 1; the KTO loss keeps its direction in expectation but grows by the data's size over the
            subset's, and a step-capped stage meets the rarer label as often as the other).
        overwrite: Replace an existing ``out`` folder.
        trust_remote_code: Run code shipped by the model folder (transformers' option); off by default.
        allow_unsafe_pickle: Accept pickled weights (``*.bin``) in the model or initial adapter folder; by
            default only safetensors are read from them.
        save_steps: Write a checkpoint (adapter, optimizer, scheduler, RNG states) every N optimizer steps into
            :func:`checkpoint_dir` ``(out)``, keeping the newest; removed once ``out`` is written. ``None``: none.
        resume: Continue from the newest complete checkpoint in :func:`checkpoint_dir` ``(out)`` (start from step 0
            when there is none). Without it, existing checkpoints make :func:`tune` stop rather than discard them
            (``overwrite`` discards them).
        reference_adapter: KTO only: an adapter folder (of the same base model) that is the reference policy,
            instead of the initial adapter (e.g. ULRec-P's in every iteration of the loop, so that later iterations
            are measured against one anchor). It is merged into a frozen copy of the base model, passed to TRL as
            ``ref_model``. ``None``: the initial adapter (TRL's frozen copy), or the base model when there is none.
    """

    trainer_args: Any = None
    lora: Any = None
    lora_top_layers: int | None = None
    full_finetune: bool = False
    balance_weights: bool = True
    balance_by: str = "weights"
    overwrite: bool = False
    trust_remote_code: bool = False
    allow_unsafe_pickle: bool = False
    save_steps: int | None = None
    resume: bool = False
    reference_adapter: Any = None

    def __post_init__(self) -> None:
        if self.balance_by not in BALANCE_BY:
            raise ValueError(f"`balance_by` must be one of {', '.join(BALANCE_BY)}, got {self.balance_by!r}.")


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` did.

    Attributes:
        out: The adapter (or model) folder.
        stage: ``"sft"`` or ``"kto"``.
        n_desirable: Desirable examples in the data.
        n_undesirable: Undesirable examples in the data.
        n_train_examples: Examples the stage trained on (SFT: desirable only).
        encoding: Tokenization report (how many prompts were cut from the left).
        desirable_weight: KTO weight used (1.0 for SFT).
        undesirable_weight: KTO weight used (1.0 for SFT).
        global_step: Optimizer steps done.
        train_seconds: Wall time of ``trainer.train()``.
        log_history: TRL's log history.
        sidecar: The sidecar's content.
    """

    out: Path
    stage: str
    n_desirable: int
    n_undesirable: int
    n_train_examples: int
    encoding: EncodingReport | None
    desirable_weight: float
    undesirable_weight: float
    global_step: int
    train_seconds: float
    log_history: list[dict[str, Any]]
    sidecar: dict[str, Any]

    @property
    def examples_per_second(self) -> float:
        """Training examples processed per second of ``trainer.train()`` (reference precompute included)."""
        last = next((h for h in reversed(self.log_history) if "train_samples_per_second" in h), None)
        return float(last["train_samples_per_second"]) if last else float("nan")


def read_sidecar(adapter: str | os.PathLike) -> dict[str, Any]:
    """The ``ulrec_adapter.json`` of an adapter folder (``FileNotFoundError`` naming the folder when missing)."""
    path = Path(adapter) / SIDECAR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {adapter} was not written by train.tune.tune.")
    return json.loads(read_text_bounded(path, "an adapter sidecar"))


def _load_data(data: Any) -> LabelledData:
    if isinstance(data, LabelledData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_examples(data)
    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        return LabelledData(examples=list(data.to_list()), meta={})
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return LabelledData(examples=[dict(e) for e in data], meta={})
    raise TypeError(
        f"`data` must be a labelled data folder, a LabelledData, a datasets.Dataset or a list of dicts, "
        f"got {type(data).__name__}."
    )


def _stage_label_counts(stage: Stage, examples: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(n_desirable, n_undesirable)`` that a stage trains on: for KTO those of its KTO term (checking each
    example's ``loss_terms``, :func:`train.labeling.kto_label_counts`), for SFT all."""
    return (kto_label_counts if stage == "kto" else label_counts)(examples)


def check_examples(
    stage: Stage,
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    data_fingerprint: str | None = None,
    world: "World | None" = None,
) -> tuple[int, int]:
    """The checks :func:`tune` runs before loading any model.

    Returns:
        ``(n_desirable, n_undesirable)``; for KTO, of the examples that enter its KTO term
        (:func:`train.labeling.kto_label_counts`).

    Raises:
        ValueError: Unknown stage; empty data; data labelled on another world's catalog; KTO without both labels;
            KTO with batch size 1; KTO with an unknown ``loss_terms``; SFT without desirable examples.
    """
    if stage not in _STAGES:
        raise ValueError(f"`stage` must be 'sft' or 'kto', got {stage!r}.")
    if not examples:
        raise ValueError("the labelled data set is empty; run `ulrec label` on a rollout with at least one episode.")
    if world is not None:
        fp = world.fingerprint()
        if data_fingerprint is None:
            raise ValueError(
                f"`world` {world.name!r} was given but the data records no world fingerprint, so its catalog cannot be "
                "checked; label the rollouts with `world_fingerprint=world.fingerprint()` or drop `world`."
            )
        if data_fingerprint != fp:
            raise ValueError(
                f"the data was labelled on a world with fingerprint {data_fingerprint}, but `world` {world.name!r} has "
                f"fingerprint {fp}: the catalogs differ. Tune on rollouts of this world, or pass the world they came "
                "from."
            )
    n_des, n_und = _stage_label_counts(stage, examples)
    if stage == "kto":
        if n_des == 0 or n_und == 0:
            raise ValueError(
                f"KTO needs both labels, got {n_des} desirable and {n_und} undesirable examples; "
                + (
                    "roll out more episodes that end in a leave (not only truncated sessions)."
                    if n_und == 0
                    else "roll out episodes with continued steps (or relax `min_positives`)."
                )
            )
        if batch_size <= 1:
            raise ValueError(
                f"KTO needs `per_device_train_batch_size` > 1 (got {batch_size}): its KL reference point is estimated "
                "from mismatched pairs within a batch; use a batch size of 2 or more."
            )
    elif n_des == 0:
        raise ValueError(
            f"the SFT stage trains on desirable examples and none of the {len(examples)} is desirable; roll out "
            "episodes with continued steps (or relax `min_positives`)."
        )
    return n_des, n_und


def _prompt_format_version(meta: Mapping[str, Any]) -> Any:
    if meta.get("prompt_format_version") is not None:
        return meta["prompt_format_version"]
    try:
        from agents.prompting import PROMPT_FORMAT_VERSION
    except ImportError:
        return None
    return PROMPT_FORMAT_VERSION


def _load_model(model: Any, tokenizer: Any, cfg: TuneConfig, cfg_bf16: bool = False) -> tuple[Any, Any, str]:
    if model is None or isinstance(model, (str, os.PathLike)):
        from agents.models import load_model_and_tokenizer

        # On the CPU the weights stay float32 and bf16 comes from autocast (measured faster than bf16 weights with
        # float32 LoRA weights); on a GPU bf16 training loads bfloat16 weights, float32 training float32 ones.
        weights = ("bfloat16" if cfg_bf16 else "float32") if _has_gpu() else "float32"
        lm, tok = load_model_and_tokenizer(model, dtype=weights, trust_remote_code=cfg.trust_remote_code,
                                           allow_unsafe_pickle=cfg.allow_unsafe_pickle)
        return lm, (tokenizer or tok), os.fspath(model) if model is not None else "smollm2"
    if tokenizer is None:
        raise ValueError("`tokenizer` is required when `model` is a model object; pass the tokenizer that matches it.")
    base = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    return model, tokenizer, base


def _context_length(model: Any) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def tune(
    stage: Stage,
    data: Any,
    model: Any = None,
    *,
    out: str | os.PathLike,
    tokenizer: Any = None,
    init_adapter: str | os.PathLike | None = None,
    max_steps: int | None = None,
    config: TuneConfig | None = None,
    world: "World | None" = None,
    seed: int = 0,
) -> TuneResult:
    """Train one ULRec stage and save the result as an adapter folder.

    Args:
        stage: ``"sft"`` (ULRec-P: SFT on desirable steps) or ``"kto"`` (ULRec: KTO + alpha * SFT).
        data: A folder written by :func:`train.labeling.save_examples`, a :class:`~train.labeling.LabelledData`,
            a ``datasets.Dataset`` or a list of example dicts (``prompt``, ``completion``, ``label``, opt. ``weight``).
        model: ``None`` (SmolLM2-135M-Instruct), a local folder / id for ``agents.models.load_model_and_tokenizer``,
            or a model object (then pass ``tokenizer``).
        out: Folder to write (standard PEFT layout plus ``ulrec_adapter.json``; a full model when full fine-tuning).
        tokenizer: The tokenizer, required with a model object.
        init_adapter: An adapter folder to continue (e.g. ULRec-P's for the KTO stage); for KTO it is also the
            reference policy.
        max_steps: Stop after this many optimizer steps (overrides epochs).
        config: A :class:`TuneConfig`; defaults to LoRA with :func:`default_trainer_args`.
        world: When given, the data's world fingerprint must match ``world.fingerprint()``.
        seed: Seed of the default trainer arguments (ignored when ``config.trainer_args`` is given).

    Returns:
        A :class:`TuneResult`.

    Raises:
        ValueError: A check of :func:`check_examples` fails, ``out`` exists without ``overwrite``, or the trainer
            arguments do not match the stage.
    """
    cfg = config or TuneConfig()
    out = Path(out)
    ckpt_dir, resume_from = _check_out(out, cfg)
    labelled = _load_data(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        args = _resolve_args(stage, cfg, staging, ckpt_dir, max_steps, seed)
        n_des, n_und = check_examples(
            stage,
            labelled.examples,
            batch_size=args.per_device_train_batch_size,
            data_fingerprint=labelled.world_fingerprint,
            world=world,
        )
        train_examples = _balanced_examples(stage, labelled.examples, cfg, args, n_des, n_und, seed)
        args = _args_for_data(stage, args, cfg, *_stage_label_counts(stage, train_examples))
        lm, tok, base_id = _load_model(model, tokenizer, cfg, bool(args.bf16))
        args = _args_for_model(args, lm)
        named_base = base_id if isinstance(model, (str, os.PathLike)) or model is None else None  # checkable
        lm, ref_model, peft_config = _models_for_stage(stage, lm, init_adapter, cfg, named_base,
                                                       labelled.world_fingerprint)

        t0 = time.perf_counter()
        trainer, encoding, n_train = _build_trainer(stage, lm, ref_model, peft_config, tok, args, train_examples,
                                                    n_des)
        trainer.train(resume_from_checkpoint=os.fspath(resume_from) if resume_from is not None else None)
        train_seconds = time.perf_counter() - t0

        sidecar = _sidecar(stage, args, cfg, trainer, lm, labelled, base_id, init_adapter, encoding,
                           (n_des, n_und, n_train), resume_from)
        _publish(trainer, tok, sidecar, staging, out, ckpt_dir, cfg.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TuneResult(
        out=out,
        stage=stage,
        n_desirable=n_des,
        n_undesirable=n_und,
        n_train_examples=n_train,
        encoding=encoding,
        desirable_weight=float(getattr(args, "desirable_weight", 1.0)),
        undesirable_weight=float(getattr(args, "undesirable_weight", 1.0)),
        global_step=trainer.state.global_step,
        train_seconds=train_seconds,
        log_history=list(trainer.state.log_history),
        sidecar=sidecar,
    )


def _check_out(out: Path, cfg: TuneConfig) -> tuple[Path, Path | None]:
    """Checks that ``out`` may be written; returns its checkpoint folder and the checkpoint to resume from, if any.

    Raises:
        ValueError: ``out`` is not empty without ``overwrite``, ``save_steps`` is not a positive integer, or an
            interrupted run left checkpoints and neither ``resume`` nor ``overwrite`` is set.
    """
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ValueError(f"`out` {out} exists and is not empty; choose another folder or overwrite it "
                         "(CLI: --overwrite; Python: TuneConfig(overwrite=True)).")
    if cfg.save_steps is not None and (isinstance(cfg.save_steps, bool) or not isinstance(cfg.save_steps, int)
                                       or cfg.save_steps < 1):
        raise ValueError(f"`save_steps` must be None or a positive integer, got {cfg.save_steps!r}.")
    ckpt_dir = checkpoint_dir(out)
    resume_from = last_checkpoint(ckpt_dir)
    if resume_from is not None and not cfg.resume:
        if not cfg.overwrite:
            raise ValueError(f"{ckpt_dir} holds checkpoints of an interrupted run (step {_checkpoint_step(resume_from)}); "
                             "continue it (CLI: --resume; Python: TuneConfig(resume=True)) or start over "
                             "(--overwrite).")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        resume_from = None
    return ckpt_dir, resume_from


def _resolve_args(stage: Stage, cfg: TuneConfig, staging: Path, ckpt_dir: Path, max_steps: int | None,
                  seed: int) -> Any:
    """The stage's trainer arguments, writing into ``staging`` (checkpoints: ``ckpt_dir``), with ``max_steps``.

    Raises:
        ValueError: The arguments are not of the stage's type, or ``max_steps`` is below 1.
    """
    args = cfg.trainer_args
    if args is None:
        args = default_trainer_args(stage, staging, lora=not cfg.full_finetune, seed=seed)
    else:
        args = dataclasses.replace(args, output_dir=os.fspath(staging))
    _check_args_stage(stage, args)
    changes: dict[str, Any] = {}
    if cfg.save_steps is not None:
        # Checkpoints go to a folder of their own next to `out`, so that a later run can find them.
        changes.update(output_dir=os.fspath(ckpt_dir), save_strategy="steps", save_steps=cfg.save_steps,
                       save_total_limit=1, save_only_model=False)
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1, got {max_steps}.")
        changes["max_steps"] = int(max_steps)
    return dataclasses.replace(args, **changes) if changes else args


def _balanced_examples(stage: Stage, examples: list[dict[str, Any]], cfg: TuneConfig, args: Any, n_des: int,
                       n_und: int, seed: int) -> list[dict[str, Any]]:
    """The examples the stage trains on: all of them, or with ``balance_by="subsample"`` (KTO, both weights left at
    1.0, both labels present) the subset of :func:`train.labeling.subsample_to_band`, seeded by the trainer's seed."""
    if (stage != "kto" or not cfg.balance_weights or cfg.balance_by != "subsample" or not n_des or not n_und
            or args.desirable_weight != 1.0 or args.undesirable_weight != 1.0):
        return examples
    return subsample_to_band(examples, seed=int(getattr(args, "seed", seed)))


def _args_for_data(stage: Stage, args: Any, cfg: TuneConfig, n_des: int, n_und: int) -> Any:
    """KTO's settings that depend on the data and the launch: the label weights and the reference precompute."""
    if stage != "kto":
        return args
    changes: dict[str, Any] = {}
    if args.precompute_ref_log_probs and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # TRL's precompute maps an in-memory dataset into a per-process temporary cache that the other
        # processes cannot open; computing the reference on the fly costs the same over one epoch.
        changes["precompute_ref_log_probs"] = False
    if cfg.balance_weights and args.desirable_weight == 1.0 and args.undesirable_weight == 1.0:
        changes["desirable_weight"], changes["undesirable_weight"] = recommend_weights(n_des, n_und)
    return dataclasses.replace(args, **changes) if changes else args


def _args_for_model(args: Any, lm: Any) -> Any:
    """``max_length`` capped at the model's context length."""
    ctx = _context_length(lm)
    if ctx is not None and (args.max_length is None or args.max_length > ctx):
        return dataclasses.replace(args, max_length=int(ctx))
    return args


def _models_for_stage(stage: Stage, lm: Any, init_adapter: Any, cfg: TuneConfig, named_base: str | None,
                      world_fp: str | None) -> tuple[Any, Any, Any]:
    """``(model, ref_model, peft_config)``: the model with its adapter, and KTO's frozen reference when one is set."""
    ref_model = None
    if stage == "kto" and cfg.reference_adapter is not None:
        ref_model = _reference_model(copy.deepcopy(lm), cfg.reference_adapter, cfg, named_base)
    lm, peft_config = _attach_adapter(lm, init_adapter, cfg, named_base, world_fp)
    return lm, ref_model, peft_config


def _build_trainer(stage: Stage, lm: Any, ref_model: Any, peft_config: Any, tok: Any, args: Any,
                   examples: Sequence[Mapping[str, Any]], n_des: int) -> tuple[Any, EncodingReport | None, int]:
    """``(trainer, encoding_report, n_train_examples)`` of the stage (SFT trains on the desirable examples only)."""
    if stage == "sft":
        from train.sft import build_sft_trainer

        trainer, encoding = build_sft_trainer(lm, tok, examples, args, peft_config=peft_config)
        n_train = n_des
    else:
        from datasets import Dataset

        from train.kto import ULRecKTOTrainer

        rows = [{"prompt": e["prompt"], "completion": e["completion"], "label": e["label"],
                 "weight": e.get("weight", 1.0), "loss_terms": e.get("loss_terms", "both")} for e in examples]
        trainer = ULRecKTOTrainer(
            lm, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
            peft_config=peft_config,
        )
        encoding = trainer.encoding_report
        n_train = len(rows)
    if args.disable_tqdm:  # no bar, and no log lines printed in its place (they stay in log_history)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    else:  # one bar and one final line, as every stage shows (the Trainer's own bar repeats its final state)
        from transformers.trainer_callback import ProgressCallback

        from train.trainer_progress import StageProgress

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgress(f"tune {stage}"))
    return trainer, encoding, n_train


def _hyperparameters(stage: Stage, args: Any) -> dict[str, Any]:
    """The sidecar's ``"hyperparameters"``: the trainer settings that shaped the adapter."""
    hyper = {
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
    }
    if stage == "kto":
        hyper.update(beta=args.beta, sft_alpha=getattr(args, "sft_alpha", 0.1), desirable_weight=args.desirable_weight,
                     undesirable_weight=args.undesirable_weight, loss_type=args.loss_type,
                     shuffle_train=bool(getattr(args, "shuffle_train", False)))
    return hyper


def _sidecar(stage: Stage, args: Any, cfg: TuneConfig, trainer: Any, lm: Any, labelled: LabelledData, base_id: str,
             init_adapter: Any, encoding: EncodingReport | None, counts: tuple[int, int, int],
             resume_from: Path | None) -> dict[str, Any]:
    """The content of :data:`SIDECAR_FILE`: what was trained, on what, and how.

    Args:
        counts: ``(desirable, undesirable, trained on)`` example counts (for KTO, the labels of its KTO term;
            examples of the SFT term only are counted apart, as ``sft_only_examples``).
    """
    n_des, n_und, n_train = counts
    n_sft_only = sum(e.get("loss_terms") == "sft" for e in labelled.examples) if stage == "kto" else 0
    return {
        "format_version": SIDECAR_VERSION,
        "stage": stage,
        "base_model": base_id,
        "adapter": not cfg.full_finetune,
        "init_adapter": os.fspath(init_adapter) if init_adapter is not None else None,
        **({"reference_adapter": os.fspath(cfg.reference_adapter)} if cfg.reference_adapter is not None else {}),
        "prompt_format_version": _prompt_format_version(labelled.meta),
        "prompt": labelled.meta.get("prompt"),
        "world_fingerprint": labelled.world_fingerprint,
        "label_counts": {"desirable": n_des, "undesirable": n_und},
        **({"sft_only_examples": n_sft_only} if n_sft_only else {}),
        "label_report": labelled.meta.get("report"),
        "n_train_examples": n_train,
        **({"balance_by": cfg.balance_by} if stage == "kto" and cfg.balance_weights else {}),
        "prompts_truncated": encoding.n_truncated if encoding else 0,
        "max_length": args.max_length,
        "dtype": {"compute": "bfloat16" if args.bf16 else ("float16" if args.fp16 else "float32"),
                  "weights": str(next(lm.parameters()).dtype).replace("torch.", "")},
        "hyperparameters": _hyperparameters(stage, args),
        "global_step": trainer.state.global_step,
        "resumed_from_step": _checkpoint_step(resume_from) if resume_from is not None else None,
        "num_processes": trainer.accelerator.num_processes,
        "final_train_loss": next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _publish(trainer: Any, tok: Any, sidecar: Mapping[str, Any], staging: Path, out: Path, ckpt_dir: Path,
             overwrite: bool) -> None:
    """Writes the result into ``staging`` and moves it to ``out`` (only the main process under ``accelerate``)."""
    acc = trainer.accelerator
    if acc.is_main_process:
        _save(trainer, tok, staging, sidecar)
        _move_into_place(staging, out, overwrite)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    acc.wait_for_everyone()


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where :func:`tune` keeps the in-stage checkpoints of ``out`` (``.NAME.checkpoints`` beside it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.checkpoints")


def _checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (the Trainer writes ``trainer_state.json`` last), if any."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(done, key=_checkpoint_step) if done else None


def _check_args_stage(stage: Stage, args: Any) -> None:
    from trl import KTOConfig, SFTConfig

    want = SFTConfig if stage == "sft" else KTOConfig
    if not isinstance(args, want):
        raise ValueError(
            f"stage {stage!r} needs `trainer_args` of type trl.{want.__name__}, got {type(args).__name__}; "
            "build them with train.tune.default_trainer_args(stage, ...)."
        )


def _check_init_adapter(init_adapter: Any, base_id: str | None, world_fp: str | None) -> None:
    """An initial adapter must come from the same base model and, when both are known, the same world."""
    from agents.models import check_adapter_base

    if base_id is not None:
        check_adapter_base(init_adapter, None if base_id == "smollm2" else base_id)
    side = Path(init_adapter) / SIDECAR_FILE
    if world_fp is None or not side.is_file():
        return
    trained = read_sidecar(init_adapter).get("world_fingerprint")
    if trained is not None and trained != world_fp:
        raise ValueError(f"`init_adapter` {os.fspath(init_adapter)} was trained on world {trained}, but this data is of "
                         f"world {world_fp}; continue from an adapter of this world (or start a new one).")


def _attach_adapter(lm: Any, init_adapter: Any, cfg: TuneConfig, base_id: str | None = None,
                    world_fp: str | None = None) -> tuple[Any, Any]:
    """Returns ``(model, peft_config)`` for the trainer."""
    if init_adapter is not None:
        from peft import PeftModel

        from agents.models import check_adapter_folder

        check_adapter_folder(init_adapter, cfg.allow_unsafe_pickle)
        _check_init_adapter(init_adapter, base_id, world_fp)
        lm = PeftModel.from_pretrained(lm, os.fspath(init_adapter), is_trainable=not cfg.full_finetune)
        if cfg.full_finetune:
            return lm.merge_and_unload(), None
        return lm, None
    if cfg.full_finetune:
        return lm, None
    if cfg.lora is not None:
        return lm, cfg.lora
    n_layers = getattr(getattr(lm, "config", None), "num_hidden_layers", None)
    return lm, default_lora_config(cfg.lora_top_layers, n_layers)


def _reference_model(base: Any, reference: Any, cfg: TuneConfig, base_id: str | None) -> Any:
    """The frozen reference policy: a copy of the base model with ``reference``'s adapter merged in."""
    from peft import PeftModel

    from agents.models import check_adapter_base, check_adapter_folder

    check_adapter_folder(reference, cfg.allow_unsafe_pickle)
    if base_id is not None:
        check_adapter_base(reference, None if base_id == "smollm2" else base_id)
    ref = PeftModel.from_pretrained(base, os.fspath(reference)).merge_and_unload()
    ref.eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def _save(trainer: Any, tokenizer: Any, folder: Path, sidecar: Mapping[str, Any]) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    peft_cfg = getattr(model, "peft_config", None)
    if isinstance(peft_cfg, dict) and "ref" in peft_cfg:
        model.delete_adapter("ref")  # TRL's frozen copy of the initial adapter, the KTO reference
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_text(folder / SIDECAR_FILE, json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise ValueError(f"`out` {out} appeared while training; not overwriting it.")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
