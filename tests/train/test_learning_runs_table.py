"""benchmarks/learning_runs.py: the learning runs side by side, checked against the issue's goals."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


def _e(policy, iteration, len_mean, ci, ret):
    return {"policy": policy, "iteration": iteration, "len_mean": len_mean, "len_ci95": ci, "return_mean": ret,
            "return_ci95": 1.0}


def _doc(ulrec, ulrec_p=(6.0, 0.5), base=4.0, sessions=None):
    evals = [_e("base", 0, base, 0.2, 4 * base), _e("ulrec-p", 1, *ulrec_p, 4 * ulrec_p[0])]
    evals += [_e("ulrec", k, m, c, 4 * m) for k, (m, c) in enumerate(ulrec, start=1)]
    doc = {"evals": evals, "references": [{"policy": "oracle", "return_mean": 80.0}, {"policy": "random",
                                                                                      "return_mean": 10.0}]}
    if sessions is not None:
        doc["sessions"] = sessions
    return doc


def test_rows_check_each_goal_as_the_issue_words_it(tmp_path, capsys):
    mod = load_benchmark("learning_runs")
    rising = tmp_path / "rising.json"
    rising.write_text(json.dumps(_doc([(7.0, 0.6), (7.5, 0.6), (8.0, 0.7)],
                                      sessions=[{"cpu": "Some CPU", "dtype": "bfloat16"}])))
    dips = tmp_path / "dips"
    dips.mkdir()
    (dips / "metrics.json").write_text(json.dumps(_doc([(7.0, 0.6), (6.9, 0.6), (7.2, 0.8)], base=2.0)))
    doc = mod.main([f"rising={rising}", f"dips={dips}", "--json", str(tmp_path / "out.json")])
    r, d = doc["rows"]
    assert r["ulrec"] == [7.0, 7.5, 8.0] and r["never_falls"] and r["apart_from_ulrec_p"]  # 8.0 - 0.7 > 6.0 + 0.5
    assert not d["never_falls"] and not d["apart_from_ulrec_p"]  # 6.9 < 7.0; 7.2 - 0.8 = 6.4 is not above 6.5
    assert r["x_base"] == pytest.approx(2.0) and d["x_base"] == pytest.approx(3.6)  # each run's own base
    assert r["oracle_share"] == pytest.approx(32.0 / 80.0) and r["machine"] == "Some CPU, bfloat16"
    out = capsys.readouterr().out
    assert "| rising | 4.00 | 6.00 ± 0.50 | 7.00 ± 0.60 | 7.50 ± 0.60 | 8.00 ± 0.70 | yes | yes | 2.00 | 2.00 | 40.0% |" in out
    assert "| dips | 2.00 |" in out and "| no | no | 3.60 | 3.60 | 36.0% | not recorded |" in out
    assert json.loads((tmp_path / "out.json").read_text())["rows"][1]["run"] == "dips"
    # one base for every row: the own base stays in its column
    d2 = mod.main([f"dips={dips}", "--base-len", "4.0"])["rows"][0]
    assert d2["x_base"] == pytest.approx(1.8) and d2["x_own_base"] == pytest.approx(3.6)


def test_bad_arguments_say_what_to_give(tmp_path):
    mod = load_benchmark("learning_runs")
    with pytest.raises(SystemExit, match="NAME=PATH"):
        mod.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no such metrics.json"):
        mod.main([f"x={tmp_path / 'nowhere.json'}"])
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"evals": [_e("base", 0, 4.0, 0.2, 16.0)]}))
    with pytest.raises(SystemExit, match="no ULRec evaluation"):
        mod.main([f"x={f}"])


def test_policy_evals_reads_one_policy_in_iteration_order():
    from train.loop import policy_evals

    doc = {"evals": [_e("ulrec", 2, 8.0, 0.5, 32.0), _e("base", 0, 4.0, 0.2, 16.0), _e("ulrec", 1, 7.0, 0.5, 28.0),
                     _e("ulrec", 2, 8.5, 0.5, 34.0), _e("kto-no-sft", 1, 7.5, 0.5, 30.0)]}
    assert [(e["iteration"], e["len_mean"]) for e in policy_evals(doc, "ulrec")] == [(1, 7.0), (2, 8.0), (2, 8.5)]
    assert [e["len_mean"] for e in policy_evals(doc, "ulrec", 2)] == [8.0, 8.5]  # recorded order kept: last is newest
    assert [e["len_mean"] for e in policy_evals(doc, "kto-no-sft")] == [7.5]
    assert policy_evals(doc, "ulrec-p") == [] and policy_evals(doc, "ulrec", 3) == []


def test_reference_row_finds_a_reference_by_name_or_none():
    from train.loop import reference_row

    doc = _doc([(7.0, 0.5)])
    assert reference_row(doc, "oracle") == {"policy": "oracle", "return_mean": 80.0}
    assert reference_row(doc, "random")["policy"] == "random"
    assert reference_row(doc, "mmr") is None and reference_row({"evals": []}, "oracle") is None
