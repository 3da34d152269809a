"""ULRec-P (stage 1): supervised fine-tuning on the desirable (continued) steps only.

Built on TRL's ``SFTTrainer`` in prompt-completion form with the loss on the completion only. The examples are
tokenized here (:mod:`train.encoding`: prompt and completion separately, prompt cut from the left when too long) and
handed to ``SFTTrainer`` as ``input_ids`` plus ``labels`` with ``-100`` on every prompt position, which TRL keeps as is;
so exactly the item-title tokens are trained, as in the KTO stage.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from train.encoding import EncodingReport, encode_examples
from train.logprobs import align_right, aligned_completion_logps, split_shared_prefix, supports_logits_to_keep

__all__ = ["ULRecSFTTrainer", "sft_dataset", "build_sft_trainer"]


class ULRecSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` whose loss projects only the completion positions through the LM head.

    The loss is TRL's (mean negative log-likelihood over the completion tokens, ``num_items_in_batch`` and
    multi-process averaging as TRL does them); the batch is moved to left padding so that every completion ends
    at the last column and ``logits_to_keep`` skips the prompt positions. On a CPU TRL's fused head scores every
    position, which for SmolLM2's 49k-word vocabulary is a large share of the step. Falls back to TRL's loss
    for padding-free batches, under gradient checkpointing, with label smoothing or a custom loss, and for models
    without ``logits_to_keep``. The entropy and token-accuracy metrics are not logged on the fast path.

    On the fast path the prompt prefix that every row of a batch shares (the system instruction, at least) runs
    once per batch (:func:`train.logprobs.split_shared_prefix`); ``share_prompt_prefix = False`` turns that off.
    """

    share_prompt_prefix: bool = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        aligned = None
        if (not return_outputs and "attention_mask" in inputs and "labels" in inputs
                and not self.args.gradient_checkpointing and self.compute_loss_func is None
                and self.label_smoother is None and self.args.loss_type == "nll" and not self.aux_loss_enabled
                and supports_logits_to_keep(self.accelerator.unwrap_model(model))):
            labels = inputs["labels"]
            aligned = align_right(inputs["input_ids"], inputs["attention_mask"], (labels != -100).long())
        if aligned is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        prefix = split_shared_prefix(aligned) if self.share_prompt_prefix else None
        _, per_token, _ = aligned_completion_logps(model, aligned, prefix=prefix)
        n_tokens = aligned.target_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -per_token.sum() / torch.as_tensor(n_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss


def sft_dataset(
    examples: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int | None
) -> tuple[Dataset, EncodingReport]:
    """The SFT training set: desirable examples only, tokenized, with completion-only labels.

    Args:
        examples: Labelled examples (``prompt``, ``completion``, ``label``); undesirable ones are skipped.
        tokenizer: The model's tokenizer.
        max_length: Token budget per sequence (prompts are cut from the left to fit).

    Returns:
        ``(dataset, report)``; the dataset has ``input_ids`` and ``labels``.

    Raises:
        ValueError: There is no desirable example.
    """
    positives = [e for e in examples if e["label"]]
    if not positives:
        raise ValueError(
            f"the SFT stage needs desirable examples, but none of the {len(examples)} examples is desirable; "
            "collect rollouts with some continued steps (or relax `min_positives` when labelling)."
        )
    rows, report = encode_examples(positives, tokenizer, max_length)
    input_ids, labels = [], []
    for r in rows:
        p, c = r["prompt_ids"], r["completion_ids"]
        input_ids.append(p + c)
        labels.append([-100] * len(p) + c)
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels}), report


def build_sft_trainer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    args: SFTConfig,
    peft_config: Any = None,
) -> tuple[SFTTrainer, EncodingReport]:
    """A :class:`ULRecSFTTrainer` (TRL's ``SFTTrainer``) for ULRec-P on the desirable examples.

    Args:
        model: The causal LM (a ``PeftModel`` to continue an adapter; then ``peft_config`` must be None).
        tokenizer: Its tokenizer.
        examples: Labelled examples.
        args: TRL's ``SFTConfig`` (``max_length`` is the token budget).
        peft_config: A PEFT config for a new adapter, or None.

    Returns:
        ``(trainer, encoding_report)``.
    """
    dataset, report = sft_dataset(examples, tokenizer, args.max_length)
    trainer = ULRecSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    return trainer, report
