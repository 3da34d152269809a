"""Hostile files: nothing in a data folder runs, and the benign versions still load."""

from __future__ import annotations

import copyreg
import functools
import io
import json
import os
import pickle
import subprocess

import numpy as np
import pytest

from tests.ulrec_env.test_billp_loader import write_billp
from ulrec_env.safe_io import UnsafeFileError, iter_lines_bounded, load_pickle_array, read_text_bounded
from ulrec_env.worlds import from_billp
from ulrec_env.worlds.billp import convert_billp


def _reducing(fn, *args):
    """A pickle whose loading calls ``fn(*args)``."""

    class Gadget:
        def __reduce__(self):
            return fn, args

    return pickle.dumps(Gadget())


def _hostile(marker: str) -> dict[str, bytes]:
    """Pickles that create ``marker`` when a full unpickler loads them."""
    touch = f"touch {marker}"
    return {
        "os.system": _reducing(os.system, touch),
        "builtins.eval": _reducing(eval, f"open({marker!r}, 'w').close()"),
        "builtins.exec": _reducing(exec, f"open({marker!r}, 'w').close()"),
        "subprocess.call": _reducing(subprocess.call, ["touch", marker]),
        # functools.partial wraps the callable so that the pickle's top-level global is not os.system itself.
        "functools.partial": _reducing(functools.partial(os.system, touch)),
        # copyreg's reconstructor calls base.__init__(obj, state): Popen.__init__ runs the command.
        "copyreg._reconstructor": _reducing(copyreg._reconstructor, subprocess.Popen, subprocess.Popen, ["touch", marker]),
        # the gadget hidden inside an otherwise ordinary list of numbers
        "nested": pickle.dumps([1.0, 2.0, _Nested(touch)]),
    }


class _Nested:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


HOSTILE_NAMES = ["os.system", "builtins.eval", "builtins.exec", "subprocess.call", "functools.partial",
                 "copyreg._reconstructor", "nested"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_pickle_is_refused_before_it_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(_hostile(str(marker))[name])
    with pytest.raises(UnsafeFileError) as e:
        load_pickle_array(path)
    assert not marker.exists()
    msg = str(e.value)
    assert str(path) in msg and "allow_unsafe_pickle=True" in msg and "refused" in msg
    # The gadget is real: Python's own unpickler (the opt-in) runs it.
    load_pickle_array(path, allow_unsafe_pickle=True)
    if name == "copyreg._reconstructor":  # Popen returns before its child process has run
        for _ in range(200):
            if marker.exists():
                break
            __import__("time").sleep(0.01)
    assert marker.exists()


def test_refusal_names_the_refused_global(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(_reducing(os.system, "true"))
    with pytest.raises(UnsafeFileError, match=r"refused to unpickle (posix|os|nt)\.system"):
        load_pickle_array(path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_benign_arrays_load_under_every_protocol(tmp_path, protocol, dtype):
    a = (np.arange(12).reshape(3, 4) * 1.5).astype(dtype)
    path = tmp_path / "ok.pickle"
    path.write_bytes(pickle.dumps(a, protocol=protocol))
    out = load_pickle_array(path)
    np.testing.assert_array_equal(out, a)
    assert out.dtype == a.dtype


def test_benign_numbers_and_old_numpy_names(tmp_path):
    path = tmp_path / "ok.pickle"
    rows = [[0.0, 1.5], [1.5, 0.0]]
    path.write_bytes(pickle.dumps(rows))
    assert load_pickle_array(path) == rows
    path.write_bytes(pickle.dumps([np.float32(1.0), np.float64(2.0)]))
    assert load_pickle_array(path) == [1.0, 2.0]
    # a pickle written under numpy 1.x names its helpers numpy.core.*; protocol 2 writes globals as text lines
    blob = pickle.dumps(np.eye(3), protocol=2)
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # numpy 2 writes numpy._core.*
    assert b"numpy.core.multiarray" in old and b"numpy._core" not in old
    path.write_bytes(old)
    np.testing.assert_array_equal(load_pickle_array(path), np.eye(3))


def test_a_plain_string_or_dict_is_not_a_matrix(tmp_path):
    path = tmp_path / "odd.pickle"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFileError, match="holds a dict"):
        load_pickle_array(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="could not unpickle"):
        load_pickle_array(path)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_billp_folder_with_a_hostile_distance_pickle(tmp_path, name):
    folder = write_billp(tmp_path / "steam")
    marker = tmp_path / "pwned"
    (folder / "test_distance_mat.pickle").write_bytes(_hostile(str(marker))[name])
    with pytest.raises(UnsafeFileError) as e:
        from_billp(folder)
    assert not marker.exists()
    assert "test_distance_mat.pickle" in str(e.value) and "--allow-unsafe-pickle" in str(e.value)


def test_billp_conversion_to_npy_then_no_pickle_is_read(tmp_path):
    folder = write_billp(tmp_path / "steam")
    before = from_billp(folder)
    written = convert_billp(folder)
    assert [p.name for p in written] == ["test_distance_mat.npy"]
    # Replace the pickle by a hostile one: the converted folder never opens it again.
    marker = tmp_path / "pwned"
    (folder / "test_distance_mat.pickle").write_bytes(_hostile(str(marker))["os.system"])
    after = from_billp(folder)
    assert not marker.exists()
    np.testing.assert_array_equal(after.distance, before.distance)
    assert after.fingerprint() == before.fingerprint()


def test_billp_trusted_opt_in_reads_a_torch_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    folder = write_billp(tmp_path / "steam", n_items=30)
    dist = np.load(io.BytesIO(_npy(from_billp(folder).distance)))
    with open(folder / "test_distance_mat.pickle", "wb") as f:
        pickle.dump(torch.from_numpy(dist), f)
    with pytest.raises(UnsafeFileError, match="torch"):
        from_billp(folder)
    w = from_billp(folder, allow_unsafe_pickle=True)
    np.testing.assert_allclose(w.distance, dist)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_cli_refuses_then_converts(tmp_path, capsys):
    from train.cli import main

    folder = write_billp(tmp_path / "steam")
    marker = tmp_path / "pwned"
    good = (folder / "test_distance_mat.pickle").read_bytes()
    (folder / "test_distance_mat.pickle").write_bytes(_hostile(str(marker))["subprocess.call"])
    spec = f"billp:{folder}:steam:test"
    assert main(["bench", "--world", spec, "--policies", "random", "--episodes", "2", "--seeds", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refused to unpickle subprocess.call" in err and "--allow-unsafe-pickle" in err
    assert not marker.exists()
    (folder / "test_distance_mat.pickle").write_bytes(good)
    assert main(["convert-billp", str(folder)]) == 0
    assert "test_distance_mat.npy" in capsys.readouterr().out
    assert main(["bench", "--world", spec, "--policies", "random", "--episodes", "2", "--seeds", "1", "--no-progress"]) == 0


def test_oversized_json_and_lines_are_refused(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"x": "a" * 200}))
    with pytest.raises(ValueError, match="more than the 100 read for a test file"):
        read_text_bounded(path, "a test file", max_bytes=100)
    assert json.loads(read_text_bounded(path, "a test file")) == {"x": "a" * 200}
    lines = tmp_path / "steps.jsonl"
    lines.write_bytes(b'{"a": 1}\n' + b'{"b": "' + b"x" * 500 + b'"}\n{"c": 3}\n')
    with pytest.raises(ValueError, match="line 2 is longer than 100 bytes"):
        list(iter_lines_bounded(lines, max_line_bytes=100))
    assert [n for n, _ in iter_lines_bounded(lines)] == [1, 2, 3]


def test_oversized_line_in_a_ratings_file(monkeypatch):
    import ulrec_env.worlds.ratings as ratings_mod

    data = b"user,item,rating\n1,10,4\n2,10,3\n" + b"3," + b"9" * 2000 + b",5\n"
    monkeypatch.setattr(ratings_mod, "MAX_LINE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"r.csv: line 4 has 2004 characters, more than the 1000"):
        ratings_mod.parse_ratings(data, "r.csv")
    monkeypatch.setattr(ratings_mod, "MAX_LINE_BYTES", 10_000)
    assert len(ratings_mod.parse_ratings(data, "r.csv").rating) == 3


class _Reduce:
    def __init__(self, *reduce_value):
        self.value = reduce_value

    def __reduce__(self):
        return self.value


@pytest.mark.parametrize("name, blob", [
    # numpy's own constructor on raw bytes with an object dtype: the bytes would be read as pointers
    ("ndarray on a buffer, object dtype", lambda: pickle.dumps(_Reduce(np.ndarray, ((1,), np.dtype("O"), b"A" * 8)))),
    ("object array", lambda: pickle.dumps(np.array([1, "a"], dtype=object))),
    ("structured array", lambda: pickle.dumps(np.zeros(2, dtype=[("a", "f8"), ("b", "i4")]))),
    ("void scalar", lambda: pickle.dumps(np.zeros(1, dtype="V8")[0])),
    ("a bare dtype with a state", lambda: pickle.dumps(_Reduce(np.dtype, ("f8", False, True), (3, ">", None, None, None, -1, -1, 0)))),
])
def test_numpy_gadgets_are_refused_without_building_them(tmp_path, name, blob):
    path = tmp_path / "x.pickle"
    path.write_bytes(blob())
    with pytest.raises((UnsafeFileError, ValueError)):
        load_pickle_array(path)
    assert np.dtype("f8").byteorder == "=" and np.dtype("f8").fields is None  # the shared dtype is untouched


def test_a_list_that_contains_itself_is_refused(tmp_path):
    a = [1.0]
    a.append(a)
    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps(a))
    with pytest.raises(UnsafeFileError, match="deeper than 8"):
        load_pickle_array(path)


def test_fortran_and_big_endian_arrays_load_as_they_were(tmp_path):
    for a in (np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(5, dtype=">i4"), np.array(True)):
        for protocol in (2, 4, 5):
            path = tmp_path / "x.pickle"
            path.write_bytes(pickle.dumps(a, protocol=protocol))
            out = load_pickle_array(path)
            np.testing.assert_array_equal(out, a)
            assert out.dtype == a.dtype
