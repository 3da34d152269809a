"""benchmarks/paired_evals.py: a run's ULRec evaluations paired user by user, old runs evaluated again."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark
from train.loop import LoopSettings, run_loop

pytestmark = pytest.mark.slow


def _tiny_run(tmp_path, model):
    settings = LoopSettings(world="synthetic:3", model=model, iterations=2, episodes=10, eval_episodes=6,
                            max_episode_steps=5, max_steps=2, train_batch_size=4, gen_batch_size=8, min_positives=1,
                            references=(), env={"min_rating": 3.0})
    out = tmp_path / "run"
    return out, run_loop(settings, out, progress=False)


def test_a_run_without_per_user_means_is_evaluated_again_and_pairs_as_the_loop_does(tmp_path, tiny_model_dir):
    mod = load_benchmark("paired_evals")
    run, doc = _tiny_run(tmp_path, tiny_model_dir)
    # A run's own per-user means are used as they are: nothing is evaluated.
    def refuse(run, row):
        raise AssertionError(f"evaluated {row['policy']} again")

    own = mod.main([str(run), "--no-progress"], evaluate=refuse)
    assert own["results"][0]["paired"] == doc["paired"] and own["results"][0]["replayed"] == []
    # The same run as ulrec wrote it before it kept per-user means.
    old = json.loads((run / "metrics.json").read_text())
    for e in old["evals"]:
        del e["per_user"]
    del old["paired"]
    (run / "metrics.json").write_text(json.dumps(old))
    calls = []

    def counted(r, row):
        calls.append((row["policy"], row["iteration"]))
        return mod.reevaluate(r, row)

    out = tmp_path / "pairs.json"
    res = mod.main([str(run), str(run), "--json", str(out), "--no-progress"], evaluate=counted)
    assert sorted(calls) == sorted((e["policy"], e["iteration"]) for e in doc["evals"])  # once each, not per run
    for r in res["results"]:
        assert [x["same"] for x in r["replayed"]] == [True] * len(doc["evals"])
        # the JSON keeps what was evaluated again: the run's own per-user means, user for user
        for x, e in zip(r["replayed"], doc["evals"]):
            assert x["per_user"]["users"] == e["per_user"]["users"]
            assert x["per_user"]["len"] == pytest.approx(e["per_user"]["len"])
        assert [(p["policy"], p["against"]) for p in r["paired"]] == [(p["policy"], p["against"]) for p in doc["paired"]]
        for p, q in zip(r["paired"], doc["paired"]):
            assert p["len"] == pytest.approx(q["len"]) and p["return"] == pytest.approx(q["return"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    table = mod.format_rows(res["results"])
    assert table.count("| run | ulrec@2 | ulrec@1 |") == 2


def test_a_recorded_len_that_is_not_reproduced_is_noted(tmp_path, tiny_model_dir, capsys):
    mod = load_benchmark("paired_evals")
    run, doc = _tiny_run(tmp_path, tiny_model_dir)
    old = json.loads((run / "metrics.json").read_text())
    for e in old["evals"]:
        del e["per_user"]
    old["evals"][-1]["len_mean"] += 1.0
    (run / "metrics.json").write_text(json.dumps(old))
    per_user = {(e["policy"], e["iteration"]): e for e in doc["evals"]}

    def from_doc(r, row):  # stands for an evaluation that gives the run's first figures
        return per_user[(row["policy"], row["iteration"])]

    res = mod.main([str(run), "--no-progress"], evaluate=from_doc)
    assert [x["same"] for x in res["results"][0]["replayed"]] == [True] * (len(doc["evals"]) - 1) + [False]
    printed = capsys.readouterr().out
    assert "note: run: ulrec @2 evaluated again gives Len" in printed
    assert f"{len(doc['evals'])} rows had no per-user means" in printed


def test_a_folder_without_metrics_is_refused(tmp_path):
    mod = load_benchmark("paired_evals")
    with pytest.raises(SystemExit, match="no such metrics.json"):
        mod.main([str(tmp_path), "--no-progress"])
