"""Reading files that other people made, without running code from them.

Data folders, run folders and model folders come from the internet. Three rules hold for every reader in ulrec:

* **Pickles** are read by :func:`load_pickle_array`, a restricted unpickler that admits only what a numpy array
  (or nested lists of numbers) is made of. Any other global a pickle names (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, ``functools.partial``, ``copyreg`` helpers, ...) is refused *before* it is looked up,
  so nothing in the file runs. ``allow_unsafe_pickle=True`` is the explicit opt-in for a file the user trusts.
* **JSON** files read whole go through :func:`read_text_bounded` (a size cap), and JSON-lines files through
  :func:`iter_lines_bounded` (a per-line cap), so one huge line cannot exhaust memory.
* ``np.load`` is always called with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "UnsafeFileError",
    "load_pickle_array",
    "read_text_bounded",
    "iter_lines_bounded",
    "MAX_JSON_BYTES",
    "MAX_LINE_BYTES",
]

#: Largest JSON file read whole (settings, sidecars, datamaps, user lists).
MAX_JSON_BYTES = 512 * 1024 * 1024
#: Longest line of a JSON-lines or ratings file (a step record is a few KiB).
MAX_LINE_BYTES = 16 * 1024 * 1024


class UnsafeFileError(ValueError):
    """A file asked for something ulrec does not run from untrusted data (it names the file and the opt-in)."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array or numpy scalar refers to, under numpy 1.x and 2.x module names."""
    from numpy.lib import format as _fmt  # noqa: F401 - makes sure numpy's pickle helpers are imported

    core = getattr(np, "_core", None) or np.core  # numpy 2 keeps np.core as an alias
    multiarray = core.multiarray
    numeric = core.numeric
    table: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of contiguous arrays
            table[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    table[("_codecs", "encode")] = __import__("codecs").encode  # protocol 0-2 pickles write bytes through it
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    # numpy 2 pickles dtypes as instances of their class, e.g. numpy.dtypes.Float64DType.
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for name in dir(dtypes_mod):
            obj = getattr(dtypes_mod, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                table[("numpy.dtypes", name)] = obj
    return table


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are numpy's array and scalar constructors."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle's hook
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _numpy_globals()
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"{self._source}: refused to unpickle {module}.{name}: only numpy arrays and plain numbers are "
                "read from pickles, since a pickle can run any code. If you trust this file, pass "
                "allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle), or convert the folder once with "
                "`ulrec convert-billp` and read the .npy instead."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"{self._source}: refused a pickle that uses persistent ids (a torch.save file?); save the matrix with "
            "numpy (np.save) or pass allow_unsafe_pickle=True if you trust the file."
        )


def _check_plain(obj: Any, source: str, depth: int = 0) -> None:
    """Only arrays, numbers and lists/tuples of them may come out of a restricted pickle."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            for x in obj.flat:
                _check_plain(x, source, depth + 1)
        return
    if isinstance(obj, (bool, int, float, np.generic)):
        return
    if isinstance(obj, (list, tuple)) and depth < 8:
        for x in obj:
            _check_plain(x, source, depth + 1)
        return
    raise UnsafeFileError(f"{source}: the pickle holds a {type(obj).__name__}, not an array of numbers.")


def load_pickle_array(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> Any:
    """Unpickle an array (or nested lists of numbers) from ``path`` without running code from the file.

    Args:
        path: the pickle file.
        allow_unsafe_pickle: ``True`` uses Python's full unpickler. Only for files you trust: a pickle can run
            any command while it loads.

    Returns:
        What the file holds: a numpy array, a list or tuple of numbers, or (opt-in only) any object.

    Raises:
        UnsafeFileError: the pickle names a global other than numpy's array constructors (nothing from the file
            has run), or holds something other than numbers.
        ValueError: the file is not a readable pickle.
    """
    source = os.fspath(path)
    data = Path(path).read_bytes()
    if allow_unsafe_pickle:
        try:
            return pickle.loads(data)  # noqa: S301 - the user opted in for a file they trust
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{source}: could not unpickle ({type(e).__name__}: {e}).") from None
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), source).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any other unpickling failure is a bad file
        raise ValueError(f"{source}: could not unpickle ({type(e).__name__}: {e}).") from None
    _check_plain(obj, source)
    return obj


def read_text_bounded(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of ``path``, refusing files larger than ``max_bytes`` with an error naming ``what``."""
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{os.fspath(path)}: {size} bytes, more than the {max_bytes} read for {what}; "
                         "is this the right file?")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text (byte {e.start}); {what} must be UTF-8 JSON.") from None


def iter_lines_bounded(path: str | os.PathLike, max_line_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a UTF-8 file, never holding more than one bounded line.

    ``max_line_bytes`` defaults to :data:`MAX_LINE_BYTES`.

    Raises:
        ValueError: a line longer than ``max_line_bytes`` (named by file and line), or text that is not UTF-8.
    """
    if max_line_bytes is None:
        max_line_bytes = MAX_LINE_BYTES
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise ValueError(f"{os.fspath(path)}: line {lineno} is longer than {max_line_bytes} bytes; "
                                 "the file is damaged or not a ulrec JSON-lines file.")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{os.fspath(path)}: line {lineno} is not UTF-8 text (byte {e.start}).") from None
