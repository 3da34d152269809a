"""benchmarks/loop_variants.py: the table of a loop run's forks, read from their metrics.json and fork.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


def _load():
    return load_benchmark("loop_variants")


def _eval(iteration, len_mean, curve):
    return {"policy": "ulrec", "iteration": iteration, "len_mean": len_mean, "len_ci95": 0.5,
            "return_mean": 4 * len_mean, "return_ci95": 2.0,
            "training": {"desirable": 10, "undesirable": 4, "train_seconds": 1.0, "train_curve": curve}}


def _run(folder: Path, evals, fork=None) -> Path:
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"evals": evals}))
    if fork is not None:
        (folder / "fork.json").write_text(json.dumps(fork))
    return folder


def _log(chosen, rejected, kl):
    return {"step": 10, "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
            "kl": kl}


def test_rows_say_what_each_fork_changed_and_count_the_kto_symptoms(tmp_path, capsys):
    mod = _load()
    parent = _run(tmp_path / "parent", [
        {"policy": "base", "iteration": 0, "len_mean": 4.0, "len_ci95": 0.2, "return_mean": 16.0, "return_ci95": 1.0},
        _eval(1, 6.0, [_log(0.5, -0.5, 0.1)]),
        _eval(2, 7.0, [_log(1.0, -1.0, 0.2), _log(2.0, -1.0, 0.0)]),
    ])
    fork = _run(tmp_path / "ref-init", [_eval(1, 6.0, []), _eval(2, 5.5, [_log(-1.0, -2.0, 0.0),
                                                                           _log(-0.5, -1.5, 0.0),
                                                                           _log(0.5, -1.0, 0.3)])],
                fork={"parent": str(parent.resolve()), "at": 2,
                      "changed": {"reference": ["ulrec-p", "init"], "iterations": [3, 2]}})
    doc = mod.main([str(parent), str(fork), "--iteration", "2", "--json", str(tmp_path / "t.json")])
    control, variant = doc["rows"]
    assert doc["before"]["len_mean"] == 6.0
    assert control["changes"] == {} and variant["changes"] == {"reference": "init"}  # --iterations is not a change
    assert (variant["kto_logs"], variant["logs_chosen_negative"], variant["logs_kl_zero"]) == (3, 2, 2)
    assert (control["logs_chosen_negative"], control["logs_kl_zero"]) == (0, 1)
    assert variant["rewards_chosen_mean"] == pytest.approx(-1.0 / 3)
    assert control["rewards_margins_mean"] == pytest.approx(2.5)
    out = capsys.readouterr().out
    assert "| reference=init | 5.50 ± 0.50 |" in out and "| -1.50 |" in out and "| 2/3, 2/3 |" in out
    assert json.loads((tmp_path / "t.json").read_text())["rows"][1]["len_mean"] == 5.5
    # a fork that changes nothing (but its iterations) is a rerun of the stage, and says so
    rerun = _run(tmp_path / "rerun", [_eval(1, 6.0, []), _eval(2, 7.5, [_log(1.0, 0.0, 0.1)])],
                 fork={"parent": str(parent.resolve()), "at": 2, "changed": {"iterations": [3, 2]}})
    mod.main([str(parent), str(rerun), "--iteration", "2"])
    assert "| nothing changed (a rerun) | 7.50 ± 0.50 |" in capsys.readouterr().out


def test_a_run_that_is_not_a_fork_of_the_parent_at_that_iteration_is_refused(tmp_path):
    mod = _load()
    parent = _run(tmp_path / "parent", [_eval(2, 7.0, [])])
    other = _run(tmp_path / "other", [_eval(2, 7.0, [])],
                 fork={"parent": str(tmp_path / "elsewhere"), "at": 2, "changed": {"replay": [1, 0]}})
    plain = _run(tmp_path / "plain", [_eval(2, 7.0, [])])
    with pytest.raises(SystemExit, match="not from"):
        mod.main([str(parent), str(other)])
    with pytest.raises(SystemExit, match="no fork.json"):
        mod.main([str(parent), str(plain)])
    with pytest.raises(SystemExit, match="no evaluation of ulrec at iteration 3"):
        mod.main([str(parent), "--iteration", "3"])


def test_a_stage_trained_on_a_subset_says_how_many_examples(tmp_path, capsys):
    """`--kto-balance subsample` trains on fewer examples than the data holds: the row says how many; a stage that
    trained on all of them shows the counts alone."""
    mod = _load()
    parent = _run(tmp_path / "parent", [_eval(1, 6.0, []), _eval(2, 7.0, [_log(1.0, -1.0, 0.2)])])
    sub = _eval(2, 7.5, [_log(0.5, -1.0, 0.0)])
    sub["training"]["examples"] = 9
    parent_doc = json.loads((parent / "metrics.json").read_text())
    parent_doc["evals"][1]["training"]["examples"] = 14
    (parent / "metrics.json").write_text(json.dumps(parent_doc))
    fork = _run(tmp_path / "sub", [_eval(1, 6.0, []), sub],
                fork={"parent": str(parent.resolve()), "at": 2, "changed": {"kto_balance": ["weights", "subsample"]}})
    doc = mod.main([str(parent), str(fork), "--iteration", "2"])
    assert [r["trained_on"] for r in doc["rows"]] == [14, 9]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("| control") and "| 10 / 4 |" in line for line in lines)
    assert any(line.startswith("| kto_balance=subsample") and "| 10 / 4 (trained on 9) |" in line for line in lines)


def test_forks_at_iteration_1_start_from_ulrec_p(tmp_path, capsys):
    """At iteration 1 the KTO stage starts from ULRec-P, so ULRec-P's row is the one before the forks."""
    mod = _load()
    p_row = {"policy": "ulrec-p", "iteration": 1, "len_mean": 8.0, "len_ci95": 0.4, "return_mean": 32.0,
             "return_ci95": 1.5}
    parent = _run(tmp_path / "parent", [p_row, _eval(1, 7.0, [_log(0.1, -0.1, 0.0)])])
    fork = _run(tmp_path / "lr", [p_row, _eval(1, 7.6, [])],
                fork={"parent": str(parent.resolve()), "at": 1, "changed": {"kto_learning_rate": [5e-4, 1e-4]}})
    doc = mod.main([str(parent), str(fork), "--iteration", "1"])
    assert doc["before"]["policy"] == "ulrec-p" and doc["before"]["len_mean"] == 8.0
    assert "| ULRec-P (before) | 8.00 ± 0.40 | 32.0 ± 1.5 |" in capsys.readouterr().out
    # a run without ULRec-P (no SFT first) has nothing before its iteration 1
    (parent / "metrics.json").write_text(json.dumps({"evals": [_eval(1, 7.0, [])]}))
    (fork / "metrics.json").write_text(json.dumps({"evals": [_eval(1, 7.6, [])]}))
    assert mod.main([str(parent), str(fork), "--iteration", "1"])["before"] is None
