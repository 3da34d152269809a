"""ULRec's stage 2: KTO on unpaired continue/leave labels plus an SFT term on the desirable ones.

``loss = KTO + alpha * SFT`` where

* KTO is Eq. 7 of the KTO paper as TRL implements it: for a desirable completion ``1 - sigmoid(beta * (r - z0))``,
  for an undesirable one ``1 - sigmoid(beta * (z0 - r))``, with ``r = log pi(y|x) - log pi_ref(y|x)`` and ``z0`` the
  detached, batch-level KL estimate from mismatched (prompt, completion) pairs; weighted by
  ``desirable_weight`` / ``undesirable_weight`` and by the optional per-example ``weight`` column; batch mean.
* SFT is the mean negative log-likelihood per completion token over the **desirable** examples of the batch
  (exactly zero, with a zero gradient, when the batch has none).

All log-probabilities count only the completion tokens (the item title as the agent produced it): prompts and
completions are tokenized separately (:mod:`train.encoding`) and the collator masks every prompt token.

Speed (same numbers as the plain forwards; ``ULRecKTOConfig(prompt_cache=False)`` turns it off): each batch is moved to
left padding so that every completion ends at the last column, and the model is asked for
``logits_to_keep = C + 1`` logits only (:func:`train.logprobs.aligned_completion_logps`): on a CPU TRL's fused head
scores every position. KTO's mismatched KL pairs reuse the main forward's key/value cache of the prompts and run only
the last prompt token plus the other completion (:func:`train.logprobs.kl_logps_from_prompt_cache`), for the policy
and the reference. Those kernels live in :mod:`train.logprobs`; this module holds the KTO config, collator, losses
and trainer.

:class:`ULRecKTOTrainer` is a small subclass of TRL's ``KTOTrainer``: TRL still does the model/PEFT set-up, the
reference model (adapter disabled, or a frozen copy of an initial adapter), ``precompute_ref_log_probs``, the
collator, gradient accumulation, accelerate and logging; the subclass replaces the dataset preparation (separate
tokenization, left-side prompt cut, per-example weights) and the loss (adds the SFT term and the weights).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from trl import KTOConfig, KTOTrainer
from accelerate.utils import is_peft_model
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference
from trl.trainer.utils import use_adapter

from train.encoding import EncodingReport, encode_examples
from train.labeling import TRL_WEIGHT_BAND, kto_label_counts, loss_terms_of, weighted_ratio
from train.logprobs import (
    AlignedBatch,
    SharedPrefix,
    align_right,
    aligned_completion_logps,
    completion_logps,
    kl_logps_from_prompt_cache,
    output_cache,
    split_shared_prefix,
    supports_logits_to_keep,
)

__all__ = [
    "ULRecKTOConfig",
    "ULRecKTOTrainer",
    "UnpairedCollatorWithWeights",
    "kto_losses",
]

logger = logging.getLogger(__name__)


@dataclass
class ULRecKTOConfig(KTOConfig):
    """TRL's ``KTOConfig`` plus the ULRec SFT term (every other field is TRL's, unchanged).

    Parameters:
        sft_alpha (`float`, *optional*, defaults to `0.1`):
            Weight ``alpha`` of the SFT term in ``loss = KTO + alpha * SFT`` (the paper's value). ``0`` gives plain
            KTO.
        prompt_cache (`bool`, *optional*, defaults to `True`):
            Score completion positions only and take the KL pairs from the prompts' key/value cache.
        share_prompt_prefix (`bool`, *optional*, defaults to `True`):
            Run the prefix shared by a batch's prompts once per batch.
        shuffle_train (`bool`, *optional*, defaults to `True`):
            Shuffle the training rows once (seeded by ``data_seed``, else ``seed``) before they are batched in
            order: TRL's KTO samples sequentially, so unshuffled a step-capped stage sees only its data's first rows.
    """

    sft_alpha: float = field(
        default=0.1,
        metadata={"help": "Weight alpha of the SFT term on desirable completions: loss = KTO + alpha * SFT."},
    )
    prompt_cache: bool = field(
        default=True,
        metadata={
            "help": "Score only completion positions (left padding, logits_to_keep) and compute the KL pairs from the "
            "main forward's key/value cache of the prompts. Same numbers, fewer FLOPs; off under gradient "
            "checkpointing or for models without logits_to_keep."
        },
    )

    share_prompt_prefix: bool = field(
        default=True,
        metadata={
            "help": "On the prompt-cache path, run the token prefix that all prompts of a batch share (the system "
            "instruction; for examples of one episode their history too) once per batch instead of once per row. "
            "Same numbers and gradients."
        },
    )
    shuffle_train: bool = field(
        default=True,
        metadata={
            "help": "Shuffle the training rows once, seeded by `data_seed` (else `seed`), before the KL pairs are "
            "formed. TRL's KTO reads its data in order (`train_sampling_strategy` 'sequential': its KL pairs are "
            "neighbours in a fixed-order batch), so without this a stage capped by `max_steps` trains on the first "
            "rows of its data only, and each batch holds consecutive steps of one session."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sft_alpha < 0:
            raise ValueError(f"`sft_alpha` must be >= 0, got {self.sft_alpha}; use 0 to turn the SFT term off.")


@dataclass
class UnpairedCollatorWithWeights(DataCollatorForUnpairedPreference):
    """TRL's unpaired collator that also batches the per-example ``sample_weight`` column when present."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        for key in ("sample_weight", "in_kto", "in_sft"):
            if key in examples[0]:
                out[key] = torch.tensor([float(e[key]) for e in examples], dtype=torch.float32)
        return out


def kto_losses(
    logratios: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor, beta: float, loss_type: str = "kto"
) -> torch.Tensor:
    """Per-example KTO (or unpaired APO-zero) losses, before weighting.

    Args:
        logratios: ``log pi(y|x) - log pi_ref(y|x)`` per example.
        labels: Bool, True for desirable.
        kl: The detached reference point ``z0`` (scalar tensor; ignored by ``apo_zero_unpaired``).
        beta: KTO's beta.
        loss_type: ``"kto"`` or ``"apo_zero_unpaired"``.
    """
    if loss_type == "kto":
        return torch.where(labels, 1 - F.sigmoid(beta * (logratios - kl)), 1 - F.sigmoid(beta * (kl - logratios)))
    if loss_type == "apo_zero_unpaired":
        return torch.where(labels, 1 - F.sigmoid(beta * logratios), F.sigmoid(beta * logratios))
    raise ValueError(f"`loss_type` {loss_type!r} is not supported; use 'kto' or 'apo_zero_unpaired'.")


class ULRecKTOTrainer(KTOTrainer):
    """TRL's ``KTOTrainer`` with ULRec's loss (KTO + alpha * SFT), separate tokenization and per-example weights.

    Takes TRL's arguments unchanged; ``args`` may be a plain ``KTOConfig`` (then ``alpha`` is 0.1) or a
    :class:`ULRecKTOConfig`. ``processing_class`` must be given (no hub look-ups). The training data needs
    ``prompt``, ``completion`` and ``label`` columns (and optionally ``weight``), or pre-encoded ``prompt_ids`` and
    ``completion_ids``. An optional ``loss_terms`` column (:data:`train.labeling.LOSS_TERMS`) says which terms each
    example enters: ``"both"`` (the default), ``"kto"`` or ``"sft"`` (desirable examples only). The KTO term is
    then the weighted mean over the batch's KTO examples, and the SFT term the mean over the tokens of its SFT
    examples; the reward metrics count KTO examples only.

    Attributes:
        encoding_report: How the training set was tokenized (how many prompts were cut).
        sft_alpha: The SFT weight in use.
    """

    _tag_names = ["trl", "kto", "ulrec"]

    def __init__(self, model: Any, ref_model: Any = None, args: KTOConfig | None = None, **kwargs: Any) -> None:
        if kwargs.get("processing_class") is None:
            raise ValueError("`processing_class` is required: pass the tokenizer that matches `model`.")
        if args is None:
            raise ValueError("`args` is required: pass a ULRecKTOConfig (or trl.KTOConfig) with `output_dir` set.")
        self.sft_alpha = float(getattr(args, "sft_alpha", 0.1))
        self.encoding_report: EncodingReport | None = None
        if kwargs.get("data_collator") is None:
            tok = kwargs["processing_class"]
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            kwargs["data_collator"] = UnpairedCollatorWithWeights(
                pad_token_id=pad, max_length=args.max_length, pad_to_multiple_of=None
            )
        super().__init__(model, ref_model=ref_model, args=args, **kwargs)

    # ----------------------------------------------------------------------------------------------- data
    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: KTOConfig, dataset_name: str
    ) -> Dataset:
        if isinstance(dataset, IterableDataset):
            raise TypeError(f"`{dataset_name}` dataset must be a map-style datasets.Dataset, not an IterableDataset.")
        rows = dataset.to_list()
        if not rows:
            raise ValueError(f"the {dataset_name} dataset is empty; label some rollouts first.")
        if "prompt_ids" in rows[0] and "completion_ids" in rows[0]:
            report = None
        else:
            rows, report = encode_examples(rows, self._tokenizer, args.max_length)
            if report.n_truncated:
                logger.warning("%s set: %s", dataset_name, report)
        if dataset_name == "train":
            self.encoding_report = report
            if getattr(args, "shuffle_train", False):
                seed = args.data_seed if args.data_seed is not None else args.seed
                rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        keep = {"prompt_ids": [], "completion_ids": [], "label": [], "sample_weight": []}
        terms = [loss_terms_of({"loss_terms": r.get("loss_terms") or "both", "label": bool(r["label"])}, i)
                 for i, r in enumerate(rows)]
        for r in rows:
            keep["prompt_ids"].append(list(r["prompt_ids"]))
            keep["completion_ids"].append(list(r["completion_ids"]))
            keep["label"].append(bool(r["label"]))
            keep["sample_weight"].append(float(r.get("weight", r.get("sample_weight", 1.0))))
        if any(t != "both" for t in terms):  # the default data keeps the columns (and batches) it always had
            keep["in_kto"] = [float(t != "sft") for t in terms]
            keep["in_sft"] = [float(t != "kto") for t in terms]
        if self.calculate_KL:
            # mismatched pairs for the KL estimate: rotate completions by one within each training batch
            bs, comp, kl = args.per_device_train_batch_size, keep["completion_ids"], []
            for start in range(0, len(comp), bs):
                block = comp[start : start + bs]
                kl.extend(block[-1:] + block[:-1])
            keep["KL_completion_ids"] = kl
        if dataset_name == "train":
            n_des, n_und = kto_label_counts({"label": lab, "loss_terms": t} for lab, t in zip(keep["label"], terms))
            ratio = weighted_ratio(n_des, n_und, self.desirable_weight, self.undesirable_weight)
            lo, hi = TRL_WEIGHT_BAND
            if n_des and n_und and not lo <= ratio <= hi:
                logger.warning(
                    "weighted desirable:undesirable ratio is %.3f, outside TRL's band [1, 4/3]; set the weights with "
                    "train.labeling.recommend_weights(%d, %d).",
                    ratio,
                    n_des,
                    n_und,
                )
        return Dataset.from_dict(keep)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [c for c in ("sample_weight", "in_kto", "in_sft") if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    # ----------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        dev = self.accelerator.device
        batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        labels = batch["label"].to(torch.bool)

        aligned = self._aligned(model, batch)
        if aligned is not None:
            prefix = self._shared_prefix(aligned)
            logps, per_token, outputs = aligned_completion_logps(model, aligned, use_cache=self.calculate_KL, prefix=prefix)
            token_mask = aligned.target_mask
            kl_logps = None
            if self.calculate_KL:
                with torch.no_grad():
                    kl_logps = self._kl_from_cache(model, output_cache(outputs), prefix.layout if prefix else aligned, batch)
        else:
            kl_logps = self._compute_kl_logps(model, batch) if self.calculate_KL else None
            logps, per_token, outputs = completion_logps(
                model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], fused=True
            )
            token_mask = batch["completion_mask"][:, 1:].to(torch.bool)
        if self.precompute_ref_logps:
            ref_logps, ref_kl_logps = batch["ref_logps"], batch.get("ref_KL_logps")
        else:
            ref_logps, ref_kl_logps = self.compute_ref_log_probs(self.ref_model or self.model, batch)
        ref_logps = ref_logps.to(logps.device, logps.dtype)

        if self.calculate_KL:
            kl = (kl_logps - ref_kl_logps.to(kl_logps.device)).mean().detach()
            kl = self.accelerator.gather_for_metrics(kl).mean().clamp(min=0)
        else:
            kl = torch.zeros((), device=logps.device)
        logratios = logps - ref_logps
        per_example = kto_losses(logratios, labels, kl.to(logps.dtype), self.beta, self.loss_type)
        weights = torch.where(
            labels,
            torch.full_like(per_example, self.desirable_weight),
            torch.full_like(per_example, self.undesirable_weight),
        )
        if "sample_weight" in batch:
            weights = weights * batch["sample_weight"].to(weights)
        in_kto = labels.new_ones(labels.shape)
        if "in_kto" in batch:  # examples of the SFT term only: out of the KTO mean and of the reward metrics
            in_kto = batch["in_kto"].to(labels.device) > 0
            kto_loss = (weights * per_example * in_kto).sum() / in_kto.sum().clamp(min=1)
        else:
            kto_loss = (weights * per_example).mean()

        des_mask = token_mask & labels[:, None]
        if "in_sft" in batch:
            des_mask = des_mask & (batch["in_sft"].to(labels.device) > 0)[:, None]
        n_des_tokens = des_mask.sum()
        if n_des_tokens > 0:
            sft_loss = -(per_token * des_mask).sum() / n_des_tokens
        else:
            sft_loss = per_token.sum() * 0.0  # keeps the graph connected: a zero loss with a zero gradient
        loss = kto_loss + self.sft_alpha * sft_loss
        if getattr(self, "aux_loss_enabled", False) and getattr(outputs, "aux_loss", None) is not None:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_kto_metrics(mode, labels, logps.detach(), (self.beta * logratios).detach(), kl, kto_loss, sft_loss,
                              in_kto)
        if return_outputs:
            with torch.no_grad():
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return loss, outputs
        return loss

    # ----------------------------------------------------------------------------------------------- prompt cache
    def _aligned(self, model: Any, batch: dict[str, Any]) -> AlignedBatch | None:
        """The left-padded batch of the prompt-cache path, or ``None`` when that path is off or not possible."""
        if not getattr(self.args, "prompt_cache", False) or self.args.gradient_checkpointing:
            return None
        if not supports_logits_to_keep(self.accelerator.unwrap_model(model)):
            return None
        return align_right(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    def _shared_prefix(self, aligned: AlignedBatch) -> SharedPrefix | None:
        return split_shared_prefix(aligned) if getattr(self.args, "share_prompt_prefix", True) else None

    def _kl_from_cache(self, model: Any, cache: Any, aligned: AlignedBatch, batch: dict[str, Any]) -> torch.Tensor:
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return kl_logps_from_prompt_cache(
            model, cache, aligned, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"], pad
        )

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]):
        """TRL's reference log-probs, through the prompt-cache path when it applies (same numbers)."""
        aligned = self._aligned(model, inputs)
        if aligned is None:
            return super().compute_ref_log_probs(model, inputs)
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        prefix = self._shared_prefix(aligned)
        with torch.no_grad(), adapter_context, self.accelerator.autocast():
            logps, _, out = aligned_completion_logps(model, aligned, use_cache=self.calculate_KL, prefix=prefix)
            kl = (self._kl_from_cache(model, output_cache(out), prefix.layout if prefix else aligned, inputs)
                  if self.calculate_KL else None)
        return logps, kl

    def _log_kto_metrics(self, mode, labels, logps, rewards, kl, kto_loss, sft_loss, in_kto) -> None:
        gather = self.accelerator.gather_for_metrics
        m = self._metrics[mode]
        m["kl"].append(kl.item())
        m["loss/kto"].append(gather(kto_loss.detach()).mean().item())
        m["loss/sft"].append(gather(sft_loss.detach()).mean().item())
        for name, sel in (("chosen", labels & in_kto), ("rejected", ~labels & in_kto)):
            n = gather(sel.sum()).sum().item()
            if n:
                m[f"rewards/{name}"].append(gather(rewards[sel].sum()).sum().item() / n)
                m[f"logps/{name}"].append(gather(logps[sel].sum()).sum().item() / n)
        chosen, rejected = m.get("rewards/chosen"), m.get("rewards/rejected")  # .get: m is a defaultdict
        if chosen and rejected:
            m["rewards/margins"].append(chosen[-1] - rejected[-1])
