"""benchmarks/teacher_tiers.py: where a run's policies' picks fall among the genre-cycle rule's tiers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.benchmark import make_policy
from train.loop import LoopSettings, eval_users, evaluate_llm
from train.pipeline import evaluate_policy, rule_options
from tests.conftest import load_benchmark
from ulrec_env.worlds.spec import world_from_spec

def _load():
    return load_benchmark("teacher_tiers")


def _run_folder(tmp_path: Path, **kw) -> tuple[Path, LoopSettings]:
    settings = LoopSettings(**{**dict(world="synthetic:3", eval_episodes=12, max_episode_steps=6, max_history=6,
                                      max_session=4, gen_batch_size=4, references=("random",)), **kw})
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps(settings.to_dict()))
    return run, settings


def test_the_rule_is_always_in_its_top_tier_and_rows_replay_the_loops_references(tmp_path, capsys):
    mod = _load()
    run, settings = _run_folder(tmp_path)
    doc = mod.main([str(run), "--no-llm", "--rules", "random,genre-cycle-words",
                    "--json", str(tmp_path / "out" / "tiers.json")])
    rows = {r["policy"]: r for r in doc["rows"]}
    assert set(rows) == {"random", "genre-cycle-words"} and doc["users"] == 12
    assert rows["genre-cycle-words"]["top_share"] == 1.0 and rows["random"]["top_share"] < 1.0
    world = world_from_spec(settings.world)
    users = eval_users(world, settings)
    for name, row in rows.items():
        # the same Len as the loop's reference row (same users, seed, env, batch), and one count per decision
        ref = evaluate_policy(make_policy(name, **rule_options(settings.prompt_format)), world, users,
                              seed=settings.seed, env_settings=settings.env, max_episode_steps=settings.max_episode_steps)
        assert row["len_mean"] == ref["len_mean"] and row["steps"] == ref["user_steps"]
        assert sum(row["tier_share"].values()) == pytest.approx(1.0)
        assert row["top_share"] <= sum(row["best_tier_share"].values()) + 1e-12
    assert json.loads((tmp_path / "out" / "tiers.json").read_text())["rows"][0]["policy"] == "random"
    assert "| genre-cycle-words |" in capsys.readouterr().out


def test_the_base_model_row_is_the_loops_evaluation_and_a_differing_run_is_noted(tmp_path, tiny_model_dir, capsys):
    mod = _load()
    run, settings = _run_folder(tmp_path, model=tiny_model_dir, eval_episodes=4, max_episode_steps=4)
    world = world_from_spec(settings.world)
    users = eval_users(world, settings)
    loop_row = evaluate_llm(world, settings, users, None, "base", progress=False)
    # the run recorded other figures: a base row at iteration 0, a reference row for the rule, and a base row at
    # another iteration that must not be matched
    (run / "metrics.json").write_text(json.dumps({
        "evals": [{**loop_row, "iteration": 0, "len_mean": 99.0}, {**loop_row, "iteration": 1, "len_mean": 77.0}],
        "references": [{"policy": "random", "len_mean": 42.0}]}))
    doc = mod.main([str(run), "--rules", "random", "--llm", "base"])
    row, rule_row = doc["rows"]
    assert (row["policy"], row["iteration"], row["adapter"]) == ("base", 0, None)
    assert row["len_mean"] == loop_row["len_mean"] and row["steps"] == loop_row["user_steps"]
    assert 0.0 <= row["top_share"] <= 1.0
    assert rule_row["policy"] == "random" and rule_row["iteration"] is None
    assert doc["differs_from_run"] == [
        f"base @0: Len {row['len_mean']:.3f} here, 99.000 in the run's metrics.json",
        f"random: Len {rule_row['len_mean']:.3f} here, 42.000 in the run's metrics.json"]
    assert "99.000 in the run's metrics.json" in capsys.readouterr().out


def test_adapters_are_found_in_loop_order_and_bad_input_is_named(tmp_path):
    mod = _load()
    for d in ("iter10/ulrec", "iter2/ulrec", "iter1/ulrec", "iter1/ulrec-p", "iter3/rollout"):
        (tmp_path / d).mkdir(parents=True)
        if not d.endswith("rollout"):
            (tmp_path / d / "adapter_config.json").write_text("{}")
    assert [(p, k) for p, k, _ in mod.run_adapters(tmp_path)] == [("ulrec-p", 1), ("ulrec", 1), ("ulrec", 2),
                                                                  ("ulrec", 10)]
    with pytest.raises(SystemExit, match="settings.json"):
        mod.main([str(tmp_path / "nowhere"), "--no-llm"])
    run, _ = _run_folder(tmp_path)
    with pytest.raises(SystemExit, match="--episodes"):
        mod.main([str(run), "--no-llm", "--episodes", "0"])
    with pytest.raises(SystemExit, match=r"--llm: ulrec@4 not in .* \(it has base\)"):
        mod.main([str(run), "--llm", "base,ulrec@4"])
    probe = mod.TierProbe(make_policy("random"), make_policy("genre-cycle"))
    assert probe.stats()["top_share"] is None and not np.any(probe.picked)
