"""ulrec_env.storage: whole-file writes, the cache folder, and the JSON layout of ulrec's result files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ulrec_env.storage import atomic_write_bytes, atomic_write_text, cache_dir, json_text


def test_json_text_puts_lists_of_numbers_on_one_line_and_reads_back_the_same():
    doc = {
        "policy": "ulrec",
        "per_user": {"users": [0, 3, 17], "len": [4.0, 12.25, -0.5], "return": [1e-05, 2.5e+20, 3]},
        "length_histogram": [0, 5, 12],
        "leave_reasons": {"bored": 83.0},
        "mixed": ["bored", 1],
        "nested": [[1, 2], [3]],
        "empty": [],
        "text": "[\n1,\n2\n]",
    }
    text = json_text(doc)
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert '    "users": [0, 3, 17],' in lines
    assert '    "return": [1e-05, 2.5e+20, 3]' in lines
    assert '  "length_histogram": [0, 5, 12],' in lines
    # anything else keeps json.dumps(indent=2)'s layout: a list holding a string, the outer list of lists
    assert '  "mixed": [' in lines and '    "bored",' in lines
    assert '  "nested": [' in lines and '    [1, 2],' in lines
    assert json_text({"a": {"b": "c"}}) == json.dumps({"a": {"b": "c"}}, indent=2)


def test_json_text_passes_default_through_and_keeps_nan_readable():
    doc = {"x": np.float32(0.5), "y": [math.nan, 1.0]}
    with pytest.raises(TypeError):
        json_text(doc)
    back = json.loads(json_text(doc, default=float))
    assert back["x"] == 0.5 and math.isnan(back["y"][0]) and back["y"][1] == 1.0


def test_atomic_writes_replace_the_whole_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ULREC_CACHE_DIR", str(tmp_path / "cache"))
    path = cache_dir("models", "x")
    assert path == tmp_path / "cache" / "models" / "x" and path.is_dir()
