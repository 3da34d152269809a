"""benchmarks/label_tiers.py: the rule's tiers of a run's labelled picks, desirable apart from undesirable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.benchmark import make_policy
from train.labeling import LabelOptions, load_examples
from train.loop import LoopSettings
from train.pipeline import evaluate_policy, label_folder, rollout_to_folder, rule_options
from train.rollout import load_rollout
from tests.conftest import load_benchmark
from ulrec_env.worlds.spec import world_from_spec


def _load():
    return load_benchmark("label_tiers")


def _run(tmp_path: Path, tokenizer) -> tuple[Path, LoopSettings]:
    """A run folder with the rule's sessions at iter1/rollout and greedy's at iter1/rollout-own, every step labelled."""
    settings = LoopSettings(world="synthetic:3", max_episode_steps=8, max_history=6, max_session=4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps(settings.to_dict()))
    world = world_from_spec(settings.world)
    for folder, name in (("rollout", "genre-cycle-words"), ("rollout-own", "greedy")):
        policy = make_policy(name, **rule_options(settings.prompt_format))
        rollout_to_folder(policy, world, run / "iter1" / folder, prompt_format=settings.prompt_format,
                          tokenizer=tokenizer, meta={"policy": name}, episodes=12, split="train", seed=0,
                          env_settings=settings.env, max_episode_steps=settings.max_episode_steps)
        label_folder(run / "iter1" / folder, run / "iter1" / folder.replace("rollout", "labels"),
                     LabelOptions(min_positives=0, extra_negatives=1))
    return run, settings


def test_labelled_picks_get_the_tiers_the_rule_gives_them_on_replay(tmp_path, tiny_tokenizer, capsys):
    mod = _load()
    run, settings = _run(tmp_path, tiny_tokenizer)
    doc = mod.main([str(run), "--json", str(tmp_path / "out" / "tiers.json")])
    rows = {(r["rollout"], r["label"]): r for r in doc["rows"]}
    assert doc["replay_differs"] == []
    for folder, lab in (("rollout", "labels"), ("rollout-own", "labels-own")):
        examples = load_examples(run / "iter1" / lab).examples
        for label in (True, False):
            assert rows[(f"iter1/{folder}", label)]["rows"] == sum(bool(x["label"]) == label for x in examples)
    # the rule picks in its highest tier, never an item that repeats a recent genre
    for label in (True, False):
        row = rows[("iter1/rollout", label)]
        assert row["source"] == "teacher genre-cycle-words"
        if row["rows"]:
            assert row["top_share"] == 1.0 and row["tier_share"]["repeats a recent genre"] == 0.0

    # greedy's tiers, counted again by the teacher-tiers probe on greedy's own decisions for the same users
    world = world_from_spec(settings.world)
    records, _ = load_rollout(run / "iter1" / "rollout-own")
    users = np.array([r.user for r in sorted(records, key=lambda r: (r.episode, r.step)) if r.step == 0])
    context = rule_options(settings.prompt_format)
    probe = load_benchmark("teacher_tiers").TierProbe(make_policy("greedy", **context),
                                                      make_policy("genre-cycle-words", **context))
    evaluate_policy(probe, world, users, seed=0, env_settings=settings.env,
                    max_episode_steps=settings.max_episode_steps)
    own = [rows[("iter1/rollout-own", lab)] for lab in (True, False)]
    assert sum(r["rows"] for r in own) == len(records) == probe.best.sum()
    for k, name in enumerate(mod.TIER_NAMES):
        assert sum(r["tier_share"][name] * r["rows"] for r in own if r["rows"]) == pytest.approx(probe.picked[k])
    # greedy ignores the window, so some of its picks repeat a recent genre
    assert probe.picked[0] > 0
    assert json.loads((tmp_path / "out" / "tiers.json").read_text())["rule"] == "genre-cycle-words"
    assert "| iter1/rollout-own | teacher greedy | undesirable |" in capsys.readouterr().out


def test_a_replay_that_ends_otherwise_than_recorded_is_noted(tmp_path, tiny_tokenizer):
    mod = _load()
    run, _ = _run(tmp_path, tiny_tokenizer)
    path = run / "iter1" / "rollout-own" / "steps.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    last = next(i for i, r in enumerate(lines) if r["feedback"] == "leave")
    lines[last]["leave_reason"] = "bored" if lines[last]["leave_reason"] != "bored" else "low_rating"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    doc = mod.main([str(run)])
    assert doc["replay_differs"] == [f"iter1/rollout-own: 1 of {len(lines)} replayed steps ended otherwise than recorded"]


def test_a_folder_without_settings_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no settings.json"):
        _load().main([str(tmp_path)])
