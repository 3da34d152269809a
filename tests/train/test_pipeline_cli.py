"""The command-line pipeline with a tiny model saved to disk: rollout -> label -> tune sft -> tune kto -> bench."""

from __future__ import annotations

import json

import pytest

from train.cli import main
from train.rollout import load_rollout, summarize_rollout


def test_rollout_label_tune_bench(tmp_path, tiny_model_dir, capsys):
    ro, lab, sft, kto = (str(tmp_path / n) for n in ("ro", "lab", "sft", "kto"))
    world = "synthetic:3"
    assert main(["rollout", "--world", world, "--policy", "llm", "--llm-model", tiny_model_dir, "--episodes", "12",
                 "--temperature", "1.0", "--max-episode-steps", "6", "--out", ro, "--no-progress", "--min-rating", "3.5"]) == 0
    records, meta = load_rollout(ro)
    assert meta["world"] == "synthetic-3" and meta["policy"] == "llm"
    assert summarize_rollout(records)["episodes"] == 12
    assert all(r.prompt and r.completion.endswith("\n") and r.completion.strip() == r.title for r in records)
    assert {r.feedback for r in records} <= {"continue", "leave"}

    assert main(["label", ro, "--out", lab, "--min-positives", "1"]) == 0
    exm = [json.loads(l) for l in (tmp_path / "lab" / "examples.jsonl").read_text().splitlines()]
    assert any(e["label"] for e in exm) and not all(e["label"] for e in exm)

    assert main(["tune", "--stage", "sft", "--data", lab, "--model", tiny_model_dir, "--out", sft, "--max-steps", "2",
                 "--batch-size", "4"]) == 0
    assert main(["tune", "--stage", "kto", "--data", lab, "--model", tiny_model_dir, "--init-adapter", sft, "--out", kto,
                 "--max-steps", "2", "--batch-size", "4"]) == 0
    assert (tmp_path / "kto" / "adapter_config.json").is_file()

    out = tmp_path / "bench.json"
    assert main(["bench", "--world", world, "--policies", "greedy,llm", "--llm-model", tiny_model_dir,
                 "--llm-adapter", kto, "--episodes", "6", "--seeds", "1", "--max-episode-steps", "6",
                 "--json", str(out), "--no-progress"]) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["llm"]["invalid_actions"] == 0 and rows["llm"]["episodes"] == 6


def test_rollout_of_a_baseline_writes_prompts_for_the_model(tmp_path, tiny_model_dir):
    ro = str(tmp_path / "ro")
    assert main(["rollout", "--world", "synthetic:3", "--policy", "mmr", "--llm-model", tiny_model_dir,
                 "--episodes", "4", "--max-episode-steps", "5", "--out", ro, "--no-progress"]) == 0
    records, _ = load_rollout(ro)
    assert records and all("<|im_start|>assistant" in r.prompt for r in records)


def test_label_and_tune_errors_are_named(tmp_path, capsys):
    assert main(["label", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no rollout here" in capsys.readouterr().err
