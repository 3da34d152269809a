"""Where ulrec keeps cached files, and writes that never leave a half-written file behind."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["cache_dir", "atomic_write_bytes", "atomic_write_text", "json_text"]

# a JSON list of numbers as ``json.dumps(indent=...)`` writes it: one number a line
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMBER_LIST = re.compile(r"\[\n\s*((?:" + _NUMBER + r",\n\s*)*" + _NUMBER + r")\n\s*\]")


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$ULREC_CACHE_DIR``, else ``~/.cache/ulrec``), with ``parts`` joined and created."""
    root = os.environ.get("ULREC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ulrec")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(doc: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``doc`` as JSON indented by 2, with every list of plain numbers on one line (per-user means and length
    histograms would otherwise take a line per number). ``json.loads`` reads back the same document."""
    text = json.dumps(doc, indent=2, default=default)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
