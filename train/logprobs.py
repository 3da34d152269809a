"""Log-probabilities of completion tokens: the kernels both tuning stages score with.

Every function here counts only the completion tokens (the item title the agent produced). :func:`completion_logps`
is the plain path (a forward over right-padded rows, or TRL's fused LM head); the fast path moves a batch to left
padding (:func:`align_right`), so every completion ends at the last column, and asks the model for
``logits_to_keep = C + 1`` logits only (:func:`aligned_completion_logps`). The prompt prefix every row of a batch
shares can run once per batch (:func:`split_shared_prefix`), and KTO's mismatched KL pairs reuse the main forward's
key/value cache of the prompts (:func:`kl_logps_from_prompt_cache`). Same numbers as the plain forwards
(``tests/train/test_kto.py``, ``tests/train/test_prefix_sharing.py``).

Used by :mod:`train.kto` (policy, reference and KL passes) and :mod:`train.sft`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from agents.llm import _cache_layers
from agents.models import contiguous_head_inputs

__all__ = [
    "AlignedBatch",
    "SharedPrefix",
    "align_right",
    "aligned_completion_logps",
    "completion_logps",
    "kl_logps_from_prompt_cache",
    "output_cache",
    "split_shared_prefix",
    "supports_logits_to_keep",
]


def completion_logps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, fused: bool
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Per-token and summed log-probabilities of the completion tokens only.

    Args:
        model: A causal LM (patched by TRL's ``add_fused_lm_head`` when ``fused``).
        input_ids: ``(B, T)`` prompt + completion ids, right-padded.
        attention_mask: ``(B, T)``.
        completion_mask: ``(B, T)``, 1 on completion tokens only.
        fused: Use TRL's fused LM head (no ``(B, T, V)`` logits); else a plain forward and ``log_softmax``.

    Returns:
        ``(seq_logps (B,), per_token_logps (B, T-1), model_outputs)``; position ``t`` of ``per_token_logps`` is the
        log-probability of token ``t + 1``, zero outside the completion.
    """
    mask = completion_mask[:, 1:].to(torch.bool)
    if fused:
        labels = input_ids.masked_fill(completion_mask == 0, -100)
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False
        )
        per_token = out.log_probs[:, -(input_ids.size(1) - 1) :]
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        per_token = _token_logps(out.logits[:, :-1], input_ids[:, 1:], mask)
    return per_token.sum(-1), per_token, out


def _token_logps(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` per position, in float32, zero where ``keep`` is false."""
    per_token = torch.gather(logits.float().log_softmax(-1), 2, targets[..., None]).squeeze(2)
    return per_token.masked_fill(~keep.to(torch.bool), 0.0)


@dataclass
class AlignedBatch:
    """A batch moved to left padding, so every completion ends at the last column.

    Attributes:
        input_ids, attention_mask, completion_mask, position_ids: ``(B, T)``, real tokens flush right.
        width: ``C``, the longest completion; the completions live in the last ``C`` columns.
        target_mask: ``(B, C)``, 1 where the last ``C`` columns hold completion tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    position_ids: torch.Tensor
    width: int
    target_mask: torch.Tensor

    @property
    def prompt_lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1) - self.completion_mask.sum(1)


def _forward_params(model: Any) -> frozenset[str]:
    """Parameter names of the underlying transformers model's ``forward`` (through DDP and PEFT wrappers)."""
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return _class_forward_params(type(m))


@functools.lru_cache(maxsize=None)
def _class_forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's ``forward`` takes ``logits_to_keep`` (the fast completion-only paths need it)."""
    return "logits_to_keep" in _forward_params(model)


def output_cache(out: Any) -> Any:
    """The key/value cache of a model output (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def align_right(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> AlignedBatch | None:
    """Moves every row's real tokens (prompt then completion) to the end of the row.

    Returns ``None`` when some row's completion is not the tail of its real tokens (nothing to speed up then).
    """
    T = input_ids.size(1)
    mask = attention_mask.to(torch.bool)
    ar = torch.arange(T, device=input_ids.device)
    order = torch.argsort(mask.long() * T + ar, dim=1, stable=True)  # padding first, real tokens after, in order
    ids, am, cm = (x.gather(1, order) for x in (input_ids, attention_mask, completion_mask))
    n_comp = cm.sum(1)
    width = int(n_comp.max()) if n_comp.numel() else 0
    if width == 0 or not torch.equal(cm.to(torch.bool), ar[None, :] >= (T - n_comp)[:, None]):
        return None
    pos = (am.cumsum(1) - 1).clamp(min=0)
    return AlignedBatch(ids, am, cm, pos, width, cm[:, T - width :].to(torch.bool))


@dataclass
class SharedPrefix:
    """A batch split into the token prefix all its prompts share and each row's rest.

    Attributes:
        ids: ``(P,)`` the shared prefix (the system instruction at least; for examples of one episode, their
            history too).
        rest: The batch without its first ``P`` real tokens (left-padded, ``T - P`` columns; positions from ``P``).
        layout: The batch as the key/value cache holds it after :func:`aligned_completion_logps`: ``P`` prefix
            columns, then ``rest`` (``T`` columns, the layout :func:`kl_logps_from_prompt_cache` must be given).
    """

    ids: torch.Tensor
    rest: AlignedBatch
    layout: AlignedBatch

    @property
    def length(self) -> int:
        return int(self.ids.numel())


def split_shared_prefix(batch: AlignedBatch, min_tokens: int = 16) -> SharedPrefix | None:
    """The longest token prefix every prompt of ``batch`` shares, leaving each row at least one prompt token.

    Returns ``None`` when the batch has one row or the prefix is shorter than ``min_tokens``.
    """
    B, T = batch.input_ids.shape
    if B < 2:
        return None
    start = T - batch.attention_mask.sum(1)
    most = int(batch.prompt_lengths.min()) - 1
    if most < min_tokens:
        return None
    dev = batch.input_ids.device
    heads = batch.input_ids.gather(1, start[:, None] + torch.arange(most, device=dev)[None, :])
    agree = (heads == heads[:1]).all(0)
    P = most if bool(agree.all()) else int(torch.argmin(agree.to(torch.int8)))
    if P < min_tokens:
        return None
    ar = torch.arange(T, device=dev)
    own = batch.attention_mask.clone()
    own[(ar[None, :] >= start[:, None]) & (ar[None, :] < (start + P)[:, None])] = 0
    am, cm = own[:, P:], batch.completion_mask[:, P:]
    ids = batch.input_ids[:, P:].masked_fill(am == 0, 0)  # masked slots: never attended to, never scored
    rest = AlignedBatch(ids, am, cm, P + (am.cumsum(1) - 1).clamp(min=0), batch.width, batch.target_mask)
    prefix = heads[0, :P]
    ones = torch.ones((B, P), dtype=am.dtype, device=dev)
    layout = AlignedBatch(
        torch.cat([prefix[None].expand(B, -1), ids], 1), torch.cat([ones, am], 1),
        torch.cat([torch.zeros_like(ones, dtype=cm.dtype), cm], 1),
        torch.cat([torch.arange(P, device=dev)[None].expand(B, -1), rest.position_ids], 1), batch.width,
        batch.target_mask,
    )
    return SharedPrefix(prefix, rest, layout)


def _cache_with_prefix(model: Any, prefix: SharedPrefix, rows: int) -> Any:
    """A key/value cache holding the shared prefix, run once (gradients flow back through it) for ``rows`` rows."""
    from transformers import DynamicCache

    ids = prefix.ids[None]
    pre = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(ids.size(1), device=ids.device)[None],
                logits_to_keep=1, use_cache=True)
    layers = _cache_layers(output_cache(pre))
    return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers])


def aligned_completion_logps(
    model: Any, batch: AlignedBatch, use_cache: bool = False, prefix: SharedPrefix | None = None
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Completion log-probabilities that project only the completion positions through the LM head.

    On a CPU the LM head of a small model is a large share of the compute (SmolLM2: 49k-word vocabulary, about a
    quarter of a forward), and TRL's fused head scores every position there; with left padding all completions end
    at the last column, so ``logits_to_keep = C + 1`` keeps exactly the positions that predict them.

    With ``prefix`` (from :func:`split_shared_prefix`), the prompt prefix every row shares runs once, as one row,
    and the rows run only their own tokens on top of its keys and values: the same numbers (gradients included)
    for ``B - 1`` fewer copies of the prefix, without dropout; with dropout in training the rows share one
    dropout draw on the prefix. The cache then holds ``prefix.layout``.

    Returns:
        ``(seq_logps (B,), per_token (B, C), outputs)``; ``per_token`` is zero where ``batch.target_mask`` is 0.
    """
    width = batch.width
    contiguous_head_inputs(model)  # ``logits_to_keep`` hands the head a strided view: slow on CPUs
    if prefix is None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    logits_to_keep=width + 1, use_cache=use_cache)
    else:
        rest, B = prefix.rest, batch.input_ids.size(0)
        cache = _cache_with_prefix(model, prefix, B)
        cache_kw = "cache" if "cache" in _forward_params(model) else "past_key_values"
        out = model(input_ids=rest.input_ids, attention_mask=prefix.layout.attention_mask, position_ids=rest.position_ids,
                    logits_to_keep=width + 1, use_cache=True, **{cache_kw: cache})
    per_token = _token_logps(out.logits[:, -(width + 1) : -1], batch.input_ids[:, -width:], batch.target_mask)
    return per_token.sum(-1), per_token, out


def kl_logps_from_prompt_cache(
    model: Any, cache: Any, batch: AlignedBatch, kl_input_ids: torch.Tensor, kl_attention_mask: torch.Tensor,
    kl_completion_mask: torch.Tensor, pad_token_id: int
) -> torch.Tensor:
    """Log-probabilities of the mismatched KL completions, reusing the prompts' keys and values.

    KTO's KL pairs put completion ``j`` after prompt ``i``: the prompt part is the same as in the main batch, so only
    the last prompt token and the KL completion go through the model, attending to the main forward's cache with
    row ``i``'s completion (and its last prompt token) masked out. Same numbers as a full forward over
    ``kl_input_ids``, at the cost of a few tokens per row instead of the whole prompt.

    Args:
        model: The model that produced ``cache`` (same weights and adapter state).
        cache: The key/value cache of :func:`aligned_completion_logps` on ``batch`` with ``use_cache=True``.
        batch: The aligned main batch.
        kl_input_ids, kl_attention_mask, kl_completion_mask: The collator's ``KL_*`` tensors (prompt ``i`` + completion ``j``).
        pad_token_id: Id written in padded slots (masked, never scored).

    Returns:
        ``(B,)`` summed log-probabilities of the KL completions.
    """
    B, T = batch.input_ids.shape
    dev = batch.input_ids.device
    kl_comp = [kl_input_ids[i][kl_completion_mask[i].to(torch.bool) & kl_attention_mask[i].to(torch.bool)] for i in range(B)]
    width = max(c.numel() for c in kl_comp)
    prompt_len = batch.prompt_lengths
    n_comp = batch.completion_mask.sum(1)
    last_col = T - n_comp - 1  # column of each row's last prompt token
    new_ids = torch.full((B, 1 + width), pad_token_id, dtype=batch.input_ids.dtype, device=dev)
    new_mask = torch.zeros((B, 1 + width), dtype=batch.attention_mask.dtype, device=dev)
    new_ids[:, 0] = batch.input_ids.gather(1, last_col[:, None]).squeeze(1)
    new_mask[:, 0] = 1
    for i, c in enumerate(kl_comp):
        new_ids[i, 1 : 1 + c.numel()] = c
        new_mask[i, 1 : 1 + c.numel()] = 1
    ar = torch.arange(T, device=dev)
    cache_mask = (batch.attention_mask.to(torch.bool) & (ar[None, :] < last_col[:, None])).to(new_mask.dtype)
    pos = (prompt_len - 1)[:, None] + torch.arange(1 + width, device=dev)[None, :]
    cache_kw = "cache" if "cache" in _forward_params(model) else "past_key_values"
    out = model(input_ids=new_ids, attention_mask=torch.cat([cache_mask, new_mask], 1), position_ids=pos,
                use_cache=True, **{cache_kw: cache})
    return _token_logps(out.logits[:, :-1], new_ids[:, 1:], new_mask[:, 1:]).sum(-1)
