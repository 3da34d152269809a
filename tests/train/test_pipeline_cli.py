"""The command-line pipeline with a tiny model saved to disk: rollout -> label -> tune sft -> tune kto -> bench."""

from __future__ import annotations

import json

import pytest

from train.cli import main
from train.labeling import load_examples
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
    # --balance-by subsample: the kto stage trains on subsample_to_band's subset (seeded by --seed), weights 1
    from train.labeling import load_examples, subsample_to_band
    from train.tune import read_sidecar

    sub = str(tmp_path / "kto-sub")
    assert main(["tune", "--stage", "kto", "--data", lab, "--model", tiny_model_dir, "--init-adapter", sft, "--out", sub,
                 "--max-steps", "1", "--batch-size", "4", "--balance-by", "subsample", "--seed", "3",
                 "--lr-schedule", "constant"]) == 0
    side = read_sidecar(sub)
    assert side["balance_by"] == "subsample"
    # --lr-schedule constant: no warm-up (the default cosine schedule warms up over 10% of the steps)
    assert (side["hyperparameters"]["lr_scheduler_type"], side["hyperparameters"]["warmup_steps"]) == ("constant", 0)
    assert read_sidecar(kto)["hyperparameters"]["lr_scheduler_type"] == "cosine"
    assert side["n_train_examples"] == len(subsample_to_band(load_examples(lab).examples, seed=3))
    assert read_sidecar(kto)["balance_by"] == "weights"
    assert read_sidecar(kto)["hyperparameters"]["shuffle_train"] is True  # the KTO rows are shuffled by default
    with pytest.raises(SystemExit, match="--balance-by and --no-shuffle belong to the kto stage"):
        main(["tune", "--stage", "sft", "--data", lab, "--model", tiny_model_dir, "--out", str(tmp_path / "s2"),
              "--balance-by", "subsample"])
    with pytest.raises(SystemExit, match="--no-shuffle belong to the kto stage"):
        main(["tune", "--stage", "sft", "--data", lab, "--model", tiny_model_dir, "--out", str(tmp_path / "s3"),
              "--no-shuffle"])
    ordered = str(tmp_path / "kto-ordered")  # --no-shuffle: the rows in the data's order, recorded in the sidecar
    assert main(["tune", "--stage", "kto", "--data", lab, "--model", tiny_model_dir, "--init-adapter", sft,
                 "--out", ordered, "--max-steps", "1", "--batch-size", "4", "--no-shuffle"]) == 0
    assert read_sidecar(ordered)["hyperparameters"]["shuffle_train"] is False

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
    records, meta = load_rollout(ro)
    assert records and all("<|im_start|>assistant" in r.prompt for r in records)
    assert meta["prompt"] == {"max_history": 15, "max_session": None, "worked_example": True}  # was null


def test_rollout_plays_each_user_several_times_and_label_keeps_their_best(tmp_path, tiny_model_dir, capsys):
    from collections import Counter

    ro, lab = str(tmp_path / "ro"), str(tmp_path / "lab")
    assert main(["rollout", "--world", "synthetic:3", "--policy", "random", "--llm-model", tiny_model_dir,
                 "--episodes", "4", "--sessions-per-user", "3", "--max-episode-steps", "6", "--out", ro,
                 "--no-progress"]) == 0
    records, meta = load_rollout(ro)
    assert meta["sessions_per_user"] == 3 and meta["episodes"] == 12
    assert set(Counter(r.user for r in records if r.step == 0).values()) == {3}
    assert main(["label", ro, "--out", lab, "--min-positives", "1", "--keep-best", "1"]) == 0
    data = load_examples(lab)
    user_of = {r.episode: r.user for r in records}
    positives = {e["episode"] for e in data.examples if e["label"]}
    assert positives and data.meta["report"]["below_best_episodes"] > 0
    assert len({user_of[ep] for ep in positives}) == len(positives)
    assert data.meta["options"]["keep_best"] == 1
    assert main(["rollout", "--world", "synthetic:3", "--policy", "random", "--llm-model", tiny_model_dir,
                 "--sessions-per-user", "0", "--out", str(tmp_path / "ro0"), "--no-progress"]) == 2
    assert "`sessions_per_user` must be a positive integer" in capsys.readouterr().err


def test_rollout_of_a_baseline_takes_the_prompt_options_and_writes_what_the_agent_would(tmp_path, tiny_model_dir,
                                                                                        small_world):
    """The prompt options reach a baseline's prompts, are recorded, and the prompts equal the LLM agent's own."""
    import numpy as np

    from agents.models import load_model_and_tokenizer
    from agents.llm import LLMRecommender
    from agents.prompting import PromptFormat
    from ulrec_env import ULRecVectorEnv

    ro = str(tmp_path / "ro")
    assert main(["rollout", "--world", "synthetic:3", "--policy", "greedy", "--llm-model", tiny_model_dir,
                 "--episodes", "3", "--max-episode-steps", "4", "--out", ro, "--no-progress", "--max-history", "2",
                 "--max-session", "none", "--no-worked-example", "--session-window", "block"]) == 0
    records, meta = load_rollout(ro)
    fmt = PromptFormat(max_history=2, max_session=None, worked_example=False, session_window="block")
    assert meta["prompt"] == fmt.to_dict() and PromptFormat.from_dict(meta["prompt"]) == fmt
    assert meta["dtype"] is None and meta["policy"] == "greedy"

    # what the agent writes for the same observation, in the same format, with the same tokenizer
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    agent = LLMRecommender(model, tok, prompt_format=fmt).bind(small_world)
    env = ULRecVectorEnv(num_envs=2, world=small_world, autoreset_mode="disabled")
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([1, 2]))
    from agents.prompting import prompt_of_observation

    assert agent.prompts(obs) == [prompt_of_observation(small_world, {k: v[i] for k, v in obs.items()}, tok, fmt)
                                  for i in range(2)]
    assert "History:" in agent.prompts(obs)[0] and "Example:" not in agent.prompts(obs)[0]


def test_label_and_tune_errors_are_named(tmp_path, capsys):
    assert main(["label", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no rollout here" in capsys.readouterr().err
