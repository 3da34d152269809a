"""Reading files that other people made, without running code from them.

Data folders, run folders and model folders come from the internet. Three rules hold for every reader in ulrec:

* **Pickles** are read by :func:`load_pickle_array`, a restricted unpickler that admits only what a numpy array
  (or nested lists of numbers) is made of. Any other global a pickle names (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, ``functools.partial``, ``copyreg`` helpers, ...) is refused *before* it is looked up,
  so nothing in the file runs. Even numpy's own constructors are not handed to the pickle: it gets stand-ins
  that record their arguments, and arrays are built afterwards with ``np.frombuffer`` from a checked plain
  numeric dtype, shape and byte count (no object or structured dtypes, whose bytes would be pointers). ``allow_unsafe_pickle=True`` is the explicit opt-in for a file the user trusts.
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


class _Refused(Exception):
    """Raised inside the unpickler; becomes an :class:`UnsafeFileError` naming the file."""


def _numeric_dtype(code: Any, byteorder: Any = None) -> np.dtype:
    if not isinstance(code, str):
        raise _Refused(f"a dtype given as {type(code).__name__}")
    try:
        dt = np.dtype(code)
    except TypeError:
        raise _Refused(f"dtype {code!r}") from None
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None or dt.hasobject:
        raise _Refused(f"dtype {code!r} (only plain numbers are read)")
    if byteorder in ("<", ">"):
        dt = dt.newbyteorder(byteorder)
    return dt


class _DtypeStub:
    """Stands for ``numpy.dtype(...)`` while unpickling: it records its arguments and state, and becomes a real
    dtype only after loading, and only when that dtype is a plain number (no object fields, no structure)."""

    def __init__(self, *args: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def build(self) -> np.dtype:
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else None
        return _numeric_dtype(self.args[0] if self.args else None, order)


def _as_dtype(d: Any) -> np.dtype:
    if not isinstance(d, _DtypeStub):
        raise _Refused(f"an array whose dtype is a {type(d).__name__}")
    return d.build()


def _from_bytes(raw: Any, dt: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
    elif isinstance(raw, str):  # protocol 0-2 write the raw bytes as latin-1 text
        raw = raw.encode("latin-1")
    else:
        raise _Refused(f"array data given as {type(raw).__name__}")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _Refused(f"array shape {shape!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dt.itemsize != len(raw):
        raise _Refused(f"{len(raw)} data bytes for an array of shape {shape} and dtype {dt}")
    return np.frombuffer(raw, dtype=dt).copy().reshape(shape, order="F" if fortran else "C")


class _ArrayStub:
    """Stands for a numpy array while unpickling (``_reconstruct`` + BUILD, or protocol 5's ``_frombuffer``)."""

    def __init__(self, data: Any = None, dtype: Any = None, shape: Any = None, order: str = "C") -> None:
        self.data, self.dtype, self.shape, self.fortran = data, dtype, shape, order == "F"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("an array state of an unknown layout")
        _, self.shape, self.dtype, self.fortran, self.data = state if len(state) == 5 else (None, *state)

    def build(self) -> np.ndarray:
        return _from_bytes(self.data, _as_dtype(self.dtype), self.shape, bool(self.fortran))


class _ScalarStub:
    def __init__(self, dtype: Any, data: Any = None) -> None:
        self.dtype, self.data = dtype, data

    def build(self) -> Any:
        return _from_bytes(self.data, _as_dtype(self.dtype), (), False)[()]


_NDARRAY = object()  # what the pickle gets for ``numpy.ndarray``: a marker, never the class


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _ArrayStub:
    if cls is not _NDARRAY:
        raise _Refused("_reconstruct of a class other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _ArrayStub:
    return _ArrayStub(buf, dtype, shape, order)


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode other than of text to latin-1")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1, ("numpy", "ndarray"): _NDARRAY,
                                        ("numpy", "dtype"): _DtypeStub}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _ScalarStub
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are stand-ins for numpy's array, dtype and scalar constructors: nothing
    numpy builds from the file's bytes exists until :func:`_materialize` checks it."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle's hook
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


def _materialize(obj: Any, source: str, depth: int = 0) -> Any:
    """Arrays, numbers and lists/tuples of them, with every stand-in turned into a checked numpy object."""
    if depth > 8:
        raise UnsafeFileError(f"{source}: the pickle nests lists deeper than 8 levels (or contains itself).")
    if isinstance(obj, (_ArrayStub, _ScalarStub)):
        return obj.build()
    if isinstance(obj, bool) or isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, list):
        return [_materialize(x, source, depth + 1) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(x, source, depth + 1) for x in obj)
    kind = "numpy dtype" if isinstance(obj, _DtypeStub) else type(obj).__name__
    raise UnsafeFileError(f"{source}: the pickle holds a {kind}, not an array of numbers.")


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
        return _materialize(_ArrayUnpickler(io.BytesIO(data), source).load(), source)
    except UnsafeFileError:
        raise
    except _Refused as e:
        raise UnsafeFileError(f"{source}: refused {e}; only arrays of plain numbers are read from pickles. If you "
                              "trust this file, pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle).") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure is a bad file
        raise ValueError(f"{source}: could not unpickle ({type(e).__name__}: {e}).") from None


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
