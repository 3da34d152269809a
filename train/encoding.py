"""Tokenizing prompt/completion examples for the tuning stages, with left-side prompt truncation.

The prompt and the completion are tokenized **separately**, by the agent's own :func:`agents.prompting.encode_prompt`
and :func:`agents.prompting.encode_completion`, and concatenated, so the completion tokens (the item title the agent
produced) are exactly the tokens the agent scored, whatever the tokenizer; nothing here hard-codes token ids.
Tokenizing ``prompt + completion`` in one go (as TRL does) can merge tokens across the boundary and shift the mask.

A prompt too long for ``max_length`` is cut from its **left** (oldest history) side, keeping a leading BOS token,
and the cut is counted in :class:`EncodingReport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from agents.prompting import encode_completion, encode_prompt

__all__ = ["EncodingReport", "encode_pair", "encode_examples"]


@dataclass(frozen=True)
class EncodingReport:
    """What :func:`encode_examples` did.

    Attributes:
        n_examples: Examples encoded.
        n_truncated: Prompts cut from the left to fit ``max_length``.
        max_length: The token budget per sequence (prompt + completion), ``None`` for no limit.
        max_prompt_tokens: Longest prompt before cutting, in tokens.
        max_completion_tokens: Longest completion, in tokens.
    """

    n_examples: int
    n_truncated: int
    max_length: int | None
    max_prompt_tokens: int
    max_completion_tokens: int

    def __str__(self) -> str:
        return (
            f"{self.n_examples} examples; {self.n_truncated} prompts cut from the left to fit max_length="
            f"{self.max_length}; longest prompt {self.max_prompt_tokens} tokens, longest completion "
            f"{self.max_completion_tokens} tokens"
        )


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, max_length: int | None = None
) -> tuple[list[int], list[int], bool]:
    """Token ids of one example.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prompt: The exact prompt text the agent saw.
        completion: The exact completion text (the item title as produced).
        max_length: Budget for ``len(prompt_ids) + len(completion_ids)``; ``None`` for no limit.

    Returns:
        ``(prompt_ids, completion_ids, truncated)``.

    Raises:
        ValueError: The completion is empty or alone does not leave room for one prompt token.
    """
    p, c, truncated, _ = _encode(tokenizer, prompt, completion, max_length)
    return p, c, truncated


def _encode(
    tokenizer: Any, prompt: str, completion: str, max_length: int | None
) -> tuple[list[int], list[int], bool, int]:
    prompt_ids = encode_prompt(tokenizer, prompt)
    n_prompt = len(prompt_ids)
    completion_ids = encode_completion(tokenizer, completion)
    if not completion_ids:
        raise ValueError(f"completion {completion!r} tokenizes to nothing; every example needs a non-empty title.")
    truncated = False
    if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
        budget = max_length - len(completion_ids)
        if budget < 1:
            raise ValueError(
                f"completion {completion[:60]!r} has {len(completion_ids)} tokens, which leaves no room for the prompt "
                f"within max_length={max_length}; raise `max_length`."
            )
        bos = getattr(tokenizer, "bos_token_id", None)
        keep_bos = bos is not None and prompt_ids[:1] == [bos] and budget > 1
        head = prompt_ids[:1] if keep_bos else []
        prompt_ids = head + prompt_ids[len(prompt_ids) - (budget - len(head)) :]
        truncated = True
    return prompt_ids, completion_ids, truncated, n_prompt


def encode_examples(
    examples: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int | None = None
) -> tuple[list[dict[str, Any]], EncodingReport]:
    """Encode examples for training.

    Args:
        examples: Dicts with ``prompt`` and ``completion`` (other keys are kept).
        tokenizer: A Hugging Face tokenizer.
        max_length: Token budget per sequence; ``None`` for no limit.

    Returns:
        ``(rows, report)``: each row is the example plus ``prompt_ids``, ``completion_ids`` and ``truncated``.
    """
    rows = []
    n_trunc = max_p = max_c = 0
    for i, ex in enumerate(examples):
        try:
            p, c, cut, n_prompt = _encode(tokenizer, ex["prompt"], ex["completion"], max_length)
        except ValueError as e:
            raise ValueError(f"example {i}: {e}") from None
        max_p, max_c = max(max_p, n_prompt), max(max_c, len(c))
        n_trunc += cut
        rows.append({**ex, "prompt_ids": p, "completion_ids": c, "truncated": cut})
    report = EncodingReport(len(rows), n_trunc, max_length, max_p, max_c)
    return rows, report
