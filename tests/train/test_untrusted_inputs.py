"""Run folders from others: one huge line in a JSON-lines file is refused with a clear error, not read whole."""

from __future__ import annotations

import json

import pytest

import ulrec_env.safe_io as safe_io
from train.labeling import load_examples, save_examples
from train.rollout import load_rollout


def test_oversized_line_in_examples(tmp_path, monkeypatch):
    ex = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "q", "completion": "d", "label": False}]
    save_examples(ex, tmp_path / "labels")
    assert len(load_examples(tmp_path / "labels").examples) == 2
    path = tmp_path / "labels" / "examples.jsonl"
    path.write_text(path.read_text() + json.dumps({"prompt": "x" * 5000, "completion": "c", "label": True}) + "\n")
    monkeypatch.setattr(safe_io, "MAX_LINE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"examples.jsonl: line 3 is longer than 1000 bytes"):
        load_examples(tmp_path / "labels")


def test_oversized_line_in_steps(tmp_path, monkeypatch):
    d = tmp_path / "rollout"
    d.mkdir()
    (d / "steps.jsonl").write_text("x" * 3000 + "\n")
    monkeypatch.setattr(safe_io, "MAX_LINE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"steps.jsonl: line 1 is longer than 1000 bytes"):
        load_rollout(d)


def test_examples_line_that_is_not_an_object(tmp_path):
    save_examples([{"prompt": "p", "completion": "c", "label": True}], tmp_path / "labels")
    path = tmp_path / "labels" / "examples.jsonl"
    path.write_text(path.read_text() + "[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 2: expected a JSON object, got list"):
        load_examples(tmp_path / "labels")
