"""benchmarks/eval_adapter.py: an adapter evaluated as a loop run evaluates its own, or sampled;
benchmarks/bench_merge.py: an adapter evaluated so, merged and not."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark
from train.loop import run_loop
from tests.train.test_loop import _settings

pytestmark = pytest.mark.slow


def test_an_adapter_of_the_run_gets_the_runs_own_row(tmp_path, tiny_model_dir, monkeypatch):
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
    with pytest.raises(SystemExit):  # argparse's error: a negative temperature is refused before any work
        mod.main([str(out), str(out / "iter1" / "ulrec-p"), "--temperature", "-0.5"])
    assert row["temperature"] == 0.0

    # Sampling instead of greedy decoding: the evaluated agent samples at the given temperature, the row records
    # it, and the run's seed makes the sampled evaluation repeat exactly.
    import train.loop

    made = []

    def spy(*args, **kwargs):
        agent = make_agent(*args, **kwargs)
        made.append(agent.temperature)
        return agent

    make_agent = train.loop.evaluation_agent
    monkeypatch.setattr(train.loop, "evaluation_agent", spy)
    sampled = [str(out), str(out / "iter1" / "ulrec-p"), "--temperature", "1.0", "--no-progress"]
    first, again = mod.main(sampled), mod.main(sampled)
    assert made == [1.0, 1.0] and first["temperature"] == 1.0
    for key in ("len_mean", "return_mean", "leave_reasons", "per_user"):
        assert first[key] == again[key], key


def test_bench_merge_evaluates_an_adapter_both_ways_on_the_runs_users(tmp_path, tiny_model_dir, capsys):
    mod = load_benchmark("bench_merge")
    out = tmp_path / "run"
    doc = run_loop(_settings(tiny_model_dir, iterations=1), out, progress=False)
    own = next(e for e in doc["evals"] if e["policy"] == "ulrec")
    res = mod.main([str(out), str(out / "iter1" / "ulrec"), "--no-progress", "--json", str(tmp_path / "m.json")])
    un, me = res["rows"]["unmerged"], res["rows"]["merged"]
    # the unmerged row is the run's own evaluation of that adapter; the merged one holds the same users
    for key in ("len_mean", "return_mean", "per_user"):
        assert un[key] == own[key], key
    assert me["per_user"]["users"] == un["per_user"]["users"] and res["users"] == own["episodes"]
    assert res["paired_len"]["users"] == res["users"] and 0 <= res["same_len_users"] <= res["users"]
    assert res["order"] == ["unmerged", "merged"] and json.loads((tmp_path / "m.json").read_text())["users"] == 6
    assert "| merged |" in capsys.readouterr().out
    few = mod.main([str(out), str(out / "iter1" / "ulrec"), "--users", "2", "--order", "merged-first",
                    "--no-progress"])
    assert few["users"] == 2 and few["order"] == ["merged", "unmerged"]
    with pytest.raises(SystemExit):
        mod.main([str(out), str(out / "iter1" / "ulrec"), "--users", "0"])
    with pytest.raises(SystemExit, match="no such adapter folder"):
        mod.main([str(out), str(tmp_path / "nowhere")])
