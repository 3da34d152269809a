"""The title trie as a vLLM v1 logits processor: requests may only continue a catalog title.

Imported by :mod:`agents.vllm_engine` when it starts an engine (this module imports ``vllm``); vLLM builds the
processor in its worker process, which reads each trie once from the file a request names.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from agents.vllm_engine import TitleWalk

__all__ = ["TitleTrieLogitsProcessor"]


class TitleTrieLogitsProcessor(LogitsProcessor):
    """vLLM v1 logits processor: a request whose ``extra_args`` name a trie (see
    :meth:`agents.vllm_engine.TitleWalk.of_request`) may only continue a catalog title; other requests are left
    alone. Not argmax-invariant, so vLLM applies it before temperature and top-p, also to greedy requests."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self.device = device
        self.rows: dict[int, TitleWalk] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        args = getattr(sampling_params, "extra_args", None) or {}
        if "ulrec_trie" in args and not isinstance(args.get("ulrec_stop"), int):
            raise ValueError("a request with extra_args['ulrec_trie'] needs an int extra_args['ulrec_stop'] (EOS id).")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Any) -> None:
        process_dict_updates(self.rows, batch_update, lambda params, _prompt, out: TitleWalk.of_request(
            getattr(params, "extra_args", None), out))

    def apply(self, logits: Any) -> Any:
        if not self.rows:
            return logits
        index = sorted(i for i in self.rows if i < logits.shape[0])
        if not index:
            return logits
        rows, cols = [], []
        for k, i in enumerate(index):
            toks = self.rows[i].allowed()
            rows.extend([k] * len(toks))
            cols.extend(toks)
        idx = torch.tensor(index, dtype=torch.long, device=logits.device)
        block = logits.index_select(0, idx)
        keep = torch.zeros_like(block, dtype=torch.bool)
        keep[torch.tensor(rows, dtype=torch.long, device=logits.device),
             torch.tensor(cols, dtype=torch.long, device=logits.device)] = True
        logits.index_copy_(0, idx, block.masked_fill(~keep, float("-inf")))
        return logits
