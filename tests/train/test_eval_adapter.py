"""benchmarks/eval_adapter.py: an adapter evaluated as a loop run evaluates its own."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark
from train.loop import run_loop
from tests.train.test_loop import _settings

pytestmark = pytest.mark.slow


def test_an_adapter_of_the_run_gets_the_runs_own_row(tmp_path, tiny_model_dir):
    mod = load_benchmark("eval_adapter")
    out = tmp_path / "run"
    doc = run_loop(_settings(tiny_model_dir, iterations=1, completion="genres-title", max_history=3), out,
                   progress=False)
    own = next(e for e in doc["evals"] if e["policy"] == "ulrec-p")
    row = mod.main([str(out), str(out / "iter1" / "ulrec-p"), "--name", "again", "--no-progress",
                    "--json", str(tmp_path / "row.json")])
    for key in ("len_mean", "len_ci95", "return_mean", "episodes", "leave_reasons"):
        assert row[key] == own[key], key
    trained = row["trained"]
    assert trained["stage"] == "sft" and trained["global_step"] > 0 and "learning_rate" in trained["hyperparameters"]
    assert row["policy"] == "again" and json.loads((tmp_path / "row.json").read_text())["len_mean"] == own["len_mean"]
    with pytest.raises(SystemExit, match="no settings.json"):
        mod.main([str(tmp_path), str(out / "iter1" / "ulrec-p")])
    with pytest.raises(SystemExit, match="no such adapter folder"):
        mod.main([str(out), str(tmp_path / "nowhere")])
