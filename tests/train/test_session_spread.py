"""benchmarks/session_spread.py: genre repeats and similarity by lag, on hand-written sessions and a rollout."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import load_benchmark


def _step(item, leave_reason=None, truncated=False):
    return SimpleNamespace(item=item, leave_reason=leave_reason, truncated=truncated)


def test_spread_counts_genre_repeats_and_similarity_by_lag():
    mod = load_benchmark("session_spread")
    genres = [("A",), ("B",), ("C",), ("A", "B"), ("D",)]
    d0 = 10.0
    distance = np.full((5, 5), d0)  # similarity 1/2 between any two items ...
    np.fill_diagonal(distance, 0.0)
    distance[3, 1] = distance[1, 3] = 0.0  # ... but 1 for items 3 and 1
    bored = [_step(0), _step(1), _step(2), _step(4, "bored")]  # A B C D: no repeat at any lag
    horizon = [_step(0), _step(1), _step(3, truncated=True)]  # A B AB: the last shares with both before it
    row = mod.spread([bored, horizon], genres, distance, d0, window=3)

    assert row["sessions"] == 2 and row["steps_mean"] == 3.5
    assert row["leave_reasons"] == {"bored": 50.0, "horizon": 50.0}
    # lag 1: 5 steps have a pick 1 back, one shares a genre (AB after B); lag 2: 3 steps, one (AB two after A);
    # lag 3: 1 step (D), none.
    assert row["same_genre_at_lag"] == pytest.approx({"1": 20.0, "2": 100 / 3, "3": 0.0})
    # Within the last 2: 3 steps have 2 earlier picks (C, D, AB), AB shares; within the last 3: D alone, no.
    assert row["same_genre_within"] == pytest.approx({"1": 20.0, "2": 100 / 3, "3": 0.0})
    # Similarity 1/2 everywhere but the AB-after-B pair (1): lag 1 = (4 * 0.5 + 1) / 5.
    assert row["similarity_at_lag"] == pytest.approx({"1": 0.6, "2": 0.5, "3": 0.5})
    # Redundancy sums the window: 0.5, 1.0, 1.5 for the first session; 0.5 and 1 + 0.5 for the second.
    assert row["redundancy_mean"] == pytest.approx(5.0 / 5)
    assert row["distinct_genres_per_step"] == pytest.approx((4 / 4 + 2 / 3) / 2)

    with pytest.raises(ValueError, match="window"):
        mod.spread([bored], genres, distance, d0, window=0)


def test_a_rollout_folder_is_read_in_its_own_world(tmp_path, tiny_model_dir, capsys):
    from train.cli import main

    mod = load_benchmark("session_spread")
    ro = tmp_path / "ro"
    assert main(["rollout", "--world", "synthetic:3", "--policy", "genre-cycle-words", "--llm-model", tiny_model_dir,
                 "--episodes", "6", "--max-episode-steps", "6", "--out", str(ro), "--no-progress"]) == 0
    with pytest.raises(SystemExit, match="--world"):
        mod.main([str(ro)])  # a rollout outside a loop records its world's name, not its spec
    with pytest.raises(SystemExit, match="fingerprint"):
        mod.main([str(ro), "--world", "synthetic:4"])
    rows = mod.main([str(ro), "--world", "synthetic:3", "--json", str(tmp_path / "spread.json")])
    summary = json.loads((ro / "summary.json").read_text())
    (row,) = rows
    assert row["sessions"] == summary["episodes"] == 6 and row["world"] == "synthetic:3"
    assert sum(row["leave_reasons"].values()) == pytest.approx(100.0)
    assert row["window"] == 4 and set(row["same_genre_at_lag"]) == {"1", "2", "3", "4"}
    # The rule avoids the genres of the last two picks, so its picks never share one at lag 1 or 2.
    assert row["same_genre_at_lag"]["1"] == 0.0 and row["same_genre_at_lag"]["2"] == 0.0
    assert json.loads((tmp_path / "spread.json").read_text())["rows"][0]["sessions"] == 6
    assert "| " + str(ro) + " | 6 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no steps.jsonl"):
        mod.main([str(tmp_path)])

    # In a loop run's iteration folder the run's settings name the world and the environment's window.
    import shutil

    it = tmp_path / "run" / "iter1" / "rollout"
    shutil.copytree(ro, it)
    (tmp_path / "run" / "settings.json").write_text(json.dumps({"world": "synthetic:3", "env": {"window": 2}}))
    (in_run,) = mod.main([str(it)])
    assert in_run["window"] == 2 and set(in_run["same_genre_at_lag"]) == {"1", "2"}
    assert in_run["same_genre_at_lag"]["1"] == row["same_genre_at_lag"]["1"]
