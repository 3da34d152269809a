"""ULRec-P (stage 1): supervised fine-tuning on the desirable (continued) steps only.

Built on TRL's ``SFTTrainer`` in prompt-completion form with the loss on the completion only. The examples are
tokenized here (:mod:`train.encoding`: prompt and completion separately, prompt cut from the left when too long) and
handed to ``SFTTrainer`` as ``input_ids`` plus ``labels`` with ``-100`` on every prompt position, which TRL keeps as is;
so exactly the item-title tokens are trained, as in the KTO stage.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from train.encoding import EncodingReport, encode_examples

__all__ = ["sft_dataset", "build_sft_trainer"]


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
    """An ``SFTTrainer`` for ULRec-P on the desirable examples.

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
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    return trainer, report
