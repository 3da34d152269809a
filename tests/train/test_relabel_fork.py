"""benchmarks/relabel_fork.py: a fork whose KTO stage learns from the same own sessions labelled another way."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark
from train.cli import main
from train.labeling import LabelOptions, label_counts, label_steps, load_examples
from train.rollout import load_rollout

pytestmark = pytest.mark.slow


def _parent_run(out, model, *options):
    """A one-iteration loop with a teacher on a tiny world and model: the run a fork relabels."""
    assert main(["loop", "--world", "synthetic:3", "--model", model, "--iterations", "1", "--eval-episodes", "4",
                 "--max-episode-steps", "6", "--max-steps", "2", "--train-batch-size", "4", "--gen-batch-size", "8",
                 "--min-positives", "1", "--min-rating", "3.0", "--references", "greedy", "--teacher", "genre-cycle",
                 "--teacher-replay", "--no-progress", *options, "--out", str(out)]) == 0


def test_the_own_sessions_are_relabelled_and_everything_before_them_is_the_parents(tmp_path, tiny_model_dir):
    mod = load_benchmark("relabel_fork")
    parent, fork = tmp_path / "run", tmp_path / "fork"
    _parent_run(parent, tiny_model_dir, "--episodes", "12", "--extra-negatives", "0")
    report = mod.main([str(parent), str(fork), "--at", "1", "--extra-negatives", "2", "--min-positives", "3"])
    assert report == 0
    records, _ = load_rollout(fork / "iter1" / "rollout-own")
    expected, _ = label_steps(records, LabelOptions(min_positives=3, extra_negatives=2))
    relabelled = load_examples(fork / "iter1" / "labels-own").examples
    assert [e["label"] for e in relabelled] == [e["label"] for e in expected]
    before = load_examples(parent / "iter1" / "labels-own").examples
    assert label_counts(relabelled)[0] < label_counts(before)[0]  # sessions with 1 or 2 positives give none now
    for f in ("iter1/ulrec-p/adapter_model.safetensors", "iter1/labels/examples.jsonl", "iter1/rollout-own/steps.jsonl"):
        assert (fork / f).read_bytes() == (parent / f).read_bytes(), f
    doc = json.loads((fork / "fork.json").read_text())
    assert doc["changed"] == {"extra_negatives (own sessions of this iteration only)": [0, 2],
                              "min_positives (own sessions of this iteration only)": [1, 3]}
    assert "iter1/kto-data" not in doc["copied_stages"] and "iter1/labels-own" in doc["copied_stages"]
    # the loop finishes the fork: its KTO data is the new labels plus the teacher's desirable steps
    assert main(["loop", "--fork-from", str(parent), "--fork-at", "1", "--iterations", "1", "--resume",
                 "--no-progress", "--out", str(fork)]) == 0
    stages = json.loads((fork / "manifest.json").read_text())["stages"]
    teacher_des = label_counts(load_examples(fork / "iter1" / "labels").examples)[0]
    n_des, n_und = label_counts(relabelled)
    assert stages["iter1/kto-data"]["report"]["desirable"] == n_des + teacher_des
    assert stages["iter1/kto-data"]["report"]["undesirable"] == n_und
    assert stages["iter1/tune-ulrec-p"] == json.loads((parent / "manifest.json").read_text())["stages"]["iter1/tune-ulrec-p"]
    with pytest.raises(SystemExit, match="nothing to relabel"):
        mod.relabel_fork(parent, tmp_path / "f2", 1, 1, None, None)
    refused = "`keep_best` 1 keeps every one of a user's 1 session.*keeps the parent's sessions_per_user \\(1\\)"
    with pytest.raises(SystemExit, match=refused):  # one session per user here
        mod.relabel_fork(parent, tmp_path / "f3", 1, 1, None, None, 1)
    assert not (tmp_path / "f3").exists()


def test_keep_best_relabels_the_own_sessions_of_a_run_that_played_each_user_twice(tmp_path, tiny_model_dir):
    mod = load_benchmark("relabel_fork")
    parent, fork = tmp_path / "run", tmp_path / "fork"
    _parent_run(parent, tiny_model_dir, "--episodes", "8", "--sessions-per-user", "2", "--temperature", "1.0")
    assert mod.main([str(parent), str(fork), "--at", "1", "--keep-best", "1"]) == 0
    records, _ = load_rollout(fork / "iter1" / "rollout-own")
    expected, report = label_steps(records, LabelOptions(min_positives=1, extra_negatives=0, keep_best=1))
    relabelled = load_examples(fork / "iter1" / "labels-own").examples
    assert [(e["episode"], e["step"], e["label"]) for e in relabelled] == \
        [(e["episode"], e["step"], e["label"]) for e in expected]
    assert report.below_best_episodes > 0  # some sessions lost their desirable steps to their user's other session
    before = load_examples(parent / "iter1" / "labels-own").examples
    assert label_counts(relabelled)[0] < label_counts(before)[0]
    assert label_counts(relabelled)[1] == label_counts(before)[1]  # leave steps stay undesirable in every session
    doc = json.loads((fork / "fork.json").read_text())
    assert doc["changed"] == {"keep_best (own sessions of this iteration only)": [0, 1]}
