"""`ulrec loop` with a tiny model: stages, metrics, resume after kill -9, and `ulrec compare`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from train.cli import main
from train.loop import LoopSettings, run_loop

pytestmark = pytest.mark.slow


def _settings(model, **kw):
    base = dict(world="synthetic:3", model=model, iterations=2, episodes=10, eval_episodes=6, max_episode_steps=5,
                max_steps=2, train_batch_size=4, gen_batch_size=8, min_positives=1, references=("greedy",),
                env={"min_rating": 3.0})
    base.update(kw)
    return LoopSettings(**base)


def test_merge_adapters_reaches_every_rollout_and_evaluation(tmp_path, tiny_model_dir, monkeypatch):
    from agents.llm import LLMRecommender

    made = []
    real = LLMRecommender.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        agent = real(cls, *args, **kwargs)
        made.append((kwargs.get("adapter"), kwargs.get("temperature"), kwargs.get("merge_adapter"),
                     type(agent.model).__name__))
        return agent

    monkeypatch.setattr(LLMRecommender, "from_pretrained", classmethod(spy))
    doc = run_loop(_settings(tiny_model_dir, merge_adapters=True), tmp_path / "run", progress=False)
    assert [e["policy"] for e in doc["evals"]] == ["base", "ulrec-p", "ulrec", "ulrec"]
    adapters = [m for m in made if m[0] is not None]
    # the evaluations of ULRec-P, ULRec @1 and @2 (greedy) and iteration 2's rollout of ULRec @1 (sampled): each
    # loads its adapter merged into a plain model
    assert sorted(t for _, t, _, _ in adapters) == [0.0, 0.0, 0.0, 1.0]
    assert all(merge and not kind.startswith("Peft") for _, _, merge, kind in adapters)
    assert doc["settings"]["merge_adapters"] is True


def test_loop_runs_every_stage_and_writes_metrics(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    doc = run_loop(_settings(tiny_model_dir), out, progress=False)
    policies = [(e["iteration"], e["policy"]) for e in doc["evals"]]
    assert policies == [(0, "base"), (1, "ulrec-p"), (1, "ulrec"), (2, "ulrec")]
    assert all(e["episodes"] == 6 for e in doc["evals"]) and doc["references"][0]["policy"] == "greedy"
    for f in ("settings.json", "manifest.json", "metrics.json", "metrics.csv", "learning_curve.png",
              "iter1/ulrec-p/adapter_config.json", "iter2/ulrec/adapter_config.json", "iter2/rollout/steps.jsonl"):
        assert (out / f).exists(), f
    sidecar = json.loads((out / "iter2" / "ulrec" / "ulrec_adapter.json").read_text())
    assert sidecar["prompt"] == {"max_history": 10, "max_session": 5, "worked_example": False}
    from agents.llm import LLMRecommender

    agent = LLMRecommender.from_pretrained(tiny_model_dir, adapter=str(out / "iter2" / "ulrec"))
    assert agent.prompt_format.to_dict() == {"max_history": 10, "max_session": 5, "worked_example": False}
    # Each ULRec evaluation is paired, user by user, with the model it was tuned from and with ULRec-P.
    assert [(p["policy"], p["against"]) for p in doc["paired"]] == [
        ("ulrec@1", "ulrec-p@1"), ("ulrec@2", "ulrec@1"), ("ulrec@2", "ulrec-p@1")]
    by_name = {f"{e['policy']}@{e['iteration']}": e for e in doc["evals"]}
    for p in doc["paired"]:
        after, before = by_name[p["policy"]], by_name[p["against"]]
        assert p["len"]["users"] == 6
        assert p["len"]["mean"] == pytest.approx(after["len_mean"] - before["len_mean"])
        assert p["return"]["mean"] == pytest.approx(after["return_mean"] - before["return_mean"])
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("iteration,policy,len_mean")
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        run_loop(_settings(tiny_model_dir), out, progress=False)
    # A finished run resumes without redoing anything.
    before = json.loads((out / "manifest.json").read_text())
    run_loop(_settings(tiny_model_dir), out, resume=True, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == before
    # Each start and resume recorded its machine and package versions, in sessions.json and metrics.json.
    import torch

    sessions = json.loads((out / "sessions.json").read_text())
    assert [s["stages_done"] for s in sessions] == [0, len(before["stages"])]
    assert all(s["packages"]["torch"] == torch.__version__ and s["packages"]["trl"] for s in sessions)
    from agents.models import dtype_name, resolve_device, resolve_dtype

    assert {s["dtype"] for s in sessions} == {dtype_name(resolve_dtype("auto", resolve_device("auto")))}
    assert json.loads((out / "metrics.json").read_text())["sessions"] == sessions
    (out / "sessions.json").write_text("[{cut")
    with pytest.raises(ValueError, match="sessions.json: unreadable .*move it aside"):
        run_loop(_settings(tiny_model_dir), out, resume=True, progress=False)


def _stages(out):
    p = out / "manifest.json"
    return json.loads(p.read_text())["stages"] if p.is_file() else {}


@pytest.mark.parametrize("kill_after", ["iter1/rollout", "iter1/tune-ulrec-p"])
def test_resume_after_kill_9(tmp_path, tiny_model_dir, kill_after):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "train.cli", "loop", "--world", "synthetic:3", "--model", tiny_model_dir,
            "--iterations", "1", "--episodes", "10", "--eval-episodes", "6", "--max-episode-steps", "5",
            "--max-steps", "2", "--train-batch-size", "4", "--gen-batch-size", "8", "--min-positives", "1",
            "--min-rating", "3.0", "--references", "greedy", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while kill_after not in _stages(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    snapshot = _stages(out)
    assert kill_after in snapshot
    rollout_before = (out / "iter1" / "rollout" / "steps.jsonl").read_text()
    assert main(argv[3:] + ["--resume"]) == 0
    stages = _stages(out)
    assert {"references", "iter0/eval", "iter1/rollout", "iter1/label", "iter1/tune-ulrec-p", "iter1/eval-ulrec-p",
            "iter1/tune-ulrec", "iter1/eval-ulrec"} <= set(stages)
    # Finished stages were not redone: the rollout is byte for byte the one written before the kill.
    assert (out / "iter1" / "rollout" / "steps.jsonl").read_text() == rollout_before
    steps = [json.loads(l) for l in rollout_before.splitlines()]
    assert len({(s["episode"], s["step"]) for s in steps}) == len(steps)
    for name, result in snapshot.items():
        assert stages[name] == result, name


def test_compare_builds_the_paper_table(tmp_path, tiny_model_dir, capsys):
    out, js = tmp_path / "run", tmp_path / "cmp.json"
    argv = ["compare", "--world", "synthetic:3", "--model", tiny_model_dir, "--iterations", "1", "--episodes", "10",
            "--eval-episodes", "6", "--max-episode-steps", "5", "--max-steps", "2", "--train-batch-size", "4",
            "--gen-batch-size", "8", "--min-positives", "1", "--min-rating", "3.0", "--references", "random,greedy",
            "--sft-max-steps", "3", "--kto-max-steps", "1", "--out", str(out), "--json", str(js), "--no-progress"]
    assert main(argv) == 0
    # --sft-max-steps caps the SFT stage, --kto-max-steps every KTO stage, the ablations included.
    steps = {k: v["steps"] for k, v in _stages(out).items() if "/tune-" in k}
    assert steps == {"iter1/tune-ulrec-p": 3, "iter1/tune-ulrec": 1, "ablation/tune-kto-no-sft": 1,
                     "ablation/tune-kto-no-neg": 1}
    doc = json.loads(js.read_text())
    names = [r["policy"] for r in doc["results"]]
    assert names == ["base", "ulrec-p", "ulrec", "kto-no-sft", "kto-no-neg", "random", "greedy"]
    for r in doc["results"]:
        assert {"len_mean", "len_ci95", "return_mean", "return_ci95", "leave_reasons"} <= set(r)
    # with a teacher, the paper's own recipe joins the table: KTO on the teacher's sessions, from ULRec-P
    t_out = tmp_path / "run-teacher"
    argv_t = [a if a != str(out) else str(t_out) for a in argv if a not in ("--json", str(js))] + ["--teacher", "genre-cycle"]
    assert main(argv_t) == 0
    stages = _stages(t_out)
    assert stages["ablation/tune-ulrec-offline"]["data"] == str(t_out / "iter1" / "labels")
    side = json.loads((t_out / "ablations" / "ulrec-offline" / "ulrec_adapter.json").read_text())
    assert side["init_adapter"] == str(t_out / "iter1" / "ulrec-p") and side["stage"] == "kto"
    assert "ulrec-offline" in capsys.readouterr().out


def test_several_sessions_per_user_and_their_best_kept(tmp_path, tiny_model_dir):
    from collections import Counter

    from train.rollout import load_rollout

    out = tmp_path / "run"
    # users who forgive low ratings (min_rating 2): longer sessions, so several of a user's sessions hold positives
    run_loop(_settings(tiny_model_dir, iterations=1, teacher="genre-cycle", episodes=6, sessions_per_user=3,
                       keep_best=1, temperature=1.0, env={"min_rating": 2.0}), out, progress=False)
    teacher, teacher_meta = load_rollout(out / "iter1" / "rollout")
    own, own_meta = load_rollout(out / "iter1" / "rollout-own")
    # the teacher plays each of its 6 users once; ULRec-P plays each of its 6 users 3 times
    assert teacher_meta["sessions_per_user"] == 1 and len({r.episode for r in teacher}) == 6
    users = Counter(r.user for r in own if r.step == 0)
    assert own_meta["sessions_per_user"] == 3 and len(users) == 6 and set(users.values()) == {3}
    # the labels keep the positives of each user's longest session only
    from train.labeling import LabelOptions, label_steps

    kept, report = label_steps(own, LabelOptions(min_positives=1, keep_best=1))
    labels = json.loads((out / "iter1" / "labels-own" / "meta.json").read_text())
    assert labels["options"]["keep_best"] == 1 and labels["report"] == report.to_dict()
    # the teacher's sessions are labelled without it
    assert json.loads((out / "iter1" / "labels" / "meta.json").read_text())["options"]["keep_best"] == 0
    user_of = {r.episode: r.user for r in own}
    best = {e["episode"] for e in kept if e["label"]}
    assert best and report.below_best_episodes > 0  # some sessions gave positives, some were not their user's best
    assert len({user_of[ep] for ep in best}) == len(best)  # at most one session of each user gives positives
    assert len({r.user for r in teacher}) == 6  # six users, once each
    all_kept, _ = label_steps(own, LabelOptions(min_positives=1))
    assert report.desirable + report.below_best_positives == sum(e["label"] for e in all_kept)


def test_reference_policies_add_the_teacher_once():
    s = LoopSettings(references=("random", "genre-cycle-words"), teacher="genre-cycle-words:spread=4")
    assert s.reference_policies == ("random", "genre-cycle-words", "genre-cycle-words:spread=4")
    assert LoopSettings(references=("random", "mmr"), teacher="mmr").reference_policies == ("random", "mmr")
    assert LoopSettings(references=("random",)).reference_policies == ("random",)
    assert LoopSettings(references=(), teacher="mmr").reference_policies == ("mmr",)


def test_teacher_sessions_seed_the_first_iteration(tmp_path, tiny_model_dir):
    from train.rollout import load_rollout

    out = tmp_path / "run"
    doc = run_loop(_settings(tiny_model_dir, iterations=1, teacher="genre-cycle", teacher_episodes=14,
                             references=("genre-cycle-words",)), out, progress=False)
    records, meta = load_rollout(out / "iter1" / "rollout")
    assert meta["policy"] == "genre-cycle" and records
    # the teacher plays its own number of sessions (teacher_episodes), the LLM `episodes`
    assert len({r.episode for r in records}) == 14 and meta["episodes"] == 14
    # the teacher, not among `references`, is evaluated after them on the same test users
    assert [r["policy"] for r in doc["references"]] == ["genre-cycle-words", "genre-cycle"]
    assert doc["references"][1]["per_user"]["users"] == doc["references"][0]["per_user"]["users"]
    assert all(r.prompt.endswith("<|im_start|>assistant\n") and r.completion == r.title + "\n" for r in records)
    assert [e["policy"] for e in doc["evals"]] == ["base", "ulrec-p", "ulrec"]
    # ULRec's KTO learns from ULRec-P's own sessions, not the teacher's
    own, own_meta = load_rollout(out / "iter1" / "rollout-own")
    assert own_meta["policy"] == "llm" and own_meta["adapter"] == str(out / "iter1" / "ulrec-p") and own
    assert len({r.episode for r in own}) == 10 and own_meta["episodes"] == 10
    own_labels = json.loads((out / "iter1" / "labels-own" / "meta.json").read_text())
    sidecar = json.loads((out / "iter1" / "ulrec" / "ulrec_adapter.json").read_text())
    assert sidecar["label_counts"] == {"desirable": own_labels["n_desirable"], "undesirable": own_labels["n_undesirable"]}
    # metrics say what each model trained on: ULRec-P the teacher's labels, ULRec its own sessions' labels
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    teacher_labels = manifest["iter1/label"]["report"]
    own_report, own_len = manifest["iter1/labels-own"]["report"], manifest["iter1/rollout-own"]["summary"]["len_mean"]
    training = {e["policy"]: e["training"] for e in doc["evals"]}
    assert training["base"] is None
    assert training["ulrec-p"]["label_stage"] == "iter1/label"
    assert training["ulrec-p"]["desirable"] == teacher_labels["desirable"]
    assert training["ulrec"]["label_stage"] == "iter1/labels-own" and training["ulrec"]["rollout_stage"] == "iter1/rollout-own"
    assert (training["ulrec"]["desirable"], training["ulrec"]["undesirable"]) == (own_report["desirable"], own_report["undesirable"])
    assert training["ulrec"]["rollout_len_mean"] == own_len and {"kl", "train_loss"} <= set(training["ulrec"]["train_log"])
    rows = {r["policy"]: r for r in csv.DictReader(io.StringIO((out / "metrics.csv").read_text()))}
    assert rows["ulrec"]["desirable"] == str(own_report["desirable"]) and float(rows["ulrec"]["rollout_len_mean"]) == own_len
    assert rows["ulrec-p"]["desirable"] == str(teacher_labels["desirable"])
    with pytest.raises(ValueError, match="`teacher` must be None or a policy other than the LLM"):
        _settings(tiny_model_dir, teacher="llm")
    # a fork at iteration 1 that changes the rollout temperature copies the teacher's sessions and ULRec-P, and
    # reruns from ULRec-P's own rollout
    from train.loop import fork_run

    fork = tmp_path / "fork"
    doc_f = fork_run(out, 1, dataclasses.replace(LoopSettings.from_run(out), temperature=0.0), fork, log=lambda m: None)
    assert {"iter1/rollout", "iter1/label", "iter1/tune-ulrec-p", "iter1/eval-ulrec-p"} <= set(doc_f["copied_stages"])
    assert not {"iter1/rollout-own", "iter1/labels-own"} & set(doc_f["copied_stages"])
    assert main(["loop", "--fork-from", str(out), "--fork-at", "1", "--temperature", "0", "--resume", "--no-progress",
                 "--out", str(fork)]) == 0
    for f in ("iter1/ulrec-p/adapter_model.safetensors", "iter1/rollout/steps.jsonl"):
        assert (fork / f).read_bytes() == (out / f).read_bytes(), f
    f_stages = json.loads((fork / "manifest.json").read_text())["stages"]
    assert f_stages["iter1/rollout-own"]["path"] == str(fork / "iter1" / "rollout-own")  # rerun in the fork
    assert load_rollout(fork / "iter1" / "rollout-own")[1]["adapter"] == str(fork / "iter1" / "ulrec-p")


def test_genres_title_completions_run_through_the_loop(tmp_path, tiny_model_dir):
    from agents.llm import LLMRecommender
    from agents.prompting import PromptFormat, genres_part, item_completion
    from train.labeling import load_examples
    from train.rollout import load_rollout
    from ulrec_env.worlds.spec import world_from_spec

    out = tmp_path / "run"
    run_loop(_settings(tiny_model_dir, iterations=1, teacher="genre-cycle", completion="genres-title",
                       references=()), out, progress=False)
    world = world_from_spec("synthetic:3")
    fmt = PromptFormat(max_history=10, max_session=5, worked_example=False, completion="genres-title")
    # the teacher's sessions (ULRec-P's SFT data) and the LLM's own (ULRec's KTO data) write genres, then the title
    for stage in ("rollout", "rollout-own"):
        records, meta = load_rollout(out / "iter1" / stage)
        assert records and meta["prompt"]["completion"] == "genres-title"
        assert all(r.completion == item_completion(world, r.item, fmt) for r in records)
        assert any(": " in r.completion for r in records)
    examples = [json.loads(line) for line in (out / "iter1" / "labels-own" / "examples.jsonl").read_text().splitlines()]
    assert examples and all(e["completion"] == item_completion(world, e["item"], fmt) for e in examples)
    # the adapter remembers the style, so an agent loaded from it decodes in it
    agent = LLMRecommender.from_pretrained(tiny_model_dir, adapter=str(out / "iter1" / "ulrec"))
    assert agent.prompt_format.completion == "genres-title"
    # --kto-scores genres (a fork at 1): the own steps' completions cut to their genres, in the KTO term only;
    # the teacher's desirable steps whole, in the SFT term only
    fork = tmp_path / "fork"
    assert main(["loop", "--fork-from", str(out), "--fork-at", "1", "--teacher-replay", "--sft-data", "teacher",
                 "--kto-scores", "genres", "--out", str(fork), "--no-progress"]) == 0
    data = load_examples(fork / "iter1" / "kto-data")
    own = load_examples(out / "iter1" / "labels-own").examples
    teacher = [e for e in load_examples(out / "iter1" / "labels").examples if e["label"]]
    assert data.examples == ([{**e, "completion": genres_part(e["completion"]), "loss_terms": "kto"} for e in own]
                             + [{**e, "loss_terms": "sft"} for e in teacher])
    assert any(e["completion"].endswith(":") for e in data.examples[:len(own)])
    assert data.meta["report"]["kto_scores"] == "genres"
    assert json.loads((fork / "settings.json").read_text())["kto_scores"] == "genres"
    assert (fork / "iter1" / "ulrec" / "adapter_model.safetensors").is_file()


def test_prompt_rules_read_no_more_than_the_prompt(tiny_model_dir):
    from train.pipeline import rule_options

    six = rule_options(_settings(tiny_model_dir, max_history=6, max_session=1).prompt_format)
    assert six == {"max_history": 6, "window": 1, "max_session": 1}
    three = rule_options(_settings(tiny_model_dir, max_history=3, max_session=None).prompt_format)
    assert three == {"max_history": 3, "window": 2, "max_session": None}


def test_kill_9_inside_a_tuning_stage_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    """Killed after the KTO stage's first checkpoint, the resumed run ends as an uninterrupted one."""
    def argv(out):
        return ["loop", "--world", "synthetic:3", "--model", tiny_model_dir, "--iterations", "1", "--episodes", "10",
                "--eval-episodes", "6", "--max-episode-steps", "5", "--max-steps", "6", "--save-steps", "1",
                "--train-batch-size", "4", "--gen-batch-size", "8", "--min-positives", "1", "--min-rating", "3.0",
                "--references", "greedy", "--out", str(out), "--no-progress"]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(argv(whole)) == 0
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", *argv(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = cut / "iter1" / ".ulrec.checkpoints"
    deadline = time.time() + 300
    while not any(ckpts.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "iter1/tune-ulrec" not in _stages(cut)  # killed inside the stage
    assert main(argv(cut) + ["--resume"]) == 0
    sidecar = json.loads((cut / "iter1" / "ulrec" / "ulrec_adapter.json").read_text())
    assert sidecar["resumed_from_step"] >= 1 and sidecar["global_step"] == 6
    for f in ("iter1/rollout/steps.jsonl", "iter1/labels/examples.jsonl"):
        assert (cut / f).read_bytes() == (whole / f).read_bytes(), f
    a, b = adapter_weights(whole / "iter1" / "ulrec"), adapter_weights(cut / "iter1" / "ulrec")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    assert comparable_evals(whole) == comparable_evals(cut)


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def comparable_evals(out):
    """metrics.json's evaluations without what differs between two runs of the same settings (wall times, the
    run folder's own paths)."""
    def strip(e):
        return {k: v for k, v in e.items() if k not in ("seconds", "user_steps_per_s", "adapter", "training")}

    return [strip(e) for e in json.loads((out / "metrics.json").read_text())["evals"]]


def test_fixed_reference_replay_and_learning_rate_decay(tmp_path, tiny_model_dir):
    """The loop's options against a later iteration undoing an earlier one: ULRec-P as every KTO stage's
    reference, earlier iterations' and the teacher's examples replayed, a decaying KTO learning rate without
    warm-up; each is what the adapters and metrics record."""
    from train.labeling import label_counts, load_examples

    out = tmp_path / "run"
    s = _settings(tiny_model_dir, teacher="genre-cycle", references=(), reference="ulrec-p", replay=1,
                  teacher_replay=True, kto_lr_decay=0.5, kto_learning_rate=1e-3, kto_lr_schedule="constant")
    doc = run_loop(s, out, progress=False)
    p_dir = str(out / "iter1" / "ulrec-p")
    # iteration 1 starts from ULRec-P, its own reference; iteration 2 from ULRec @1, against ULRec-P
    side1 = json.loads((out / "iter1" / "ulrec" / "ulrec_adapter.json").read_text())
    side2 = json.loads((out / "iter2" / "ulrec" / "ulrec_adapter.json").read_text())
    assert side1["init_adapter"] == p_dir and "reference_adapter" not in side1
    assert side2["init_adapter"] == str(out / "iter1" / "ulrec") and side2["reference_adapter"] == p_dir
    assert side1["hyperparameters"]["learning_rate"] == pytest.approx(1e-3)
    assert side2["hyperparameters"]["learning_rate"] == pytest.approx(5e-4)
    # each KTO stage at its rate from the first step (no warm-up); ULRec-P keeps the default cosine schedule
    side_p = json.loads((out / "iter1" / "ulrec-p" / "ulrec_adapter.json").read_text())
    assert [side["hyperparameters"]["lr_scheduler_type"] for side in (side_p, side1, side2)] == [
        "cosine", "constant", "constant"]
    assert side1["hyperparameters"]["warmup_steps"] == 0
    # iteration k's KTO data: its own labels + iteration k-1's own labels + the teacher's desirable steps
    parts = [load_examples(out / p).examples for p in ("iter1/labels-own", "iter1/labels")]
    merged1 = load_examples(out / "iter1" / "kto-data").examples
    assert merged1 == parts[0] + [e for e in parts[1] if e["label"]]
    merged2 = load_examples(out / "iter2" / "kto-data").examples
    own2 = load_examples(out / "iter2" / "labels").examples
    assert merged2 == own2 + parts[0] + [e for e in parts[1] if e["label"]]
    assert side2["label_counts"] == dict(zip(("desirable", "undesirable"), label_counts(merged2)))
    training = {(e["iteration"], e["policy"]): e["training"] for e in doc["evals"]}
    t2 = training[(2, "ulrec")]
    assert t2["label_stage"] == "iter2/kto-data" and t2["rollout_stage"] == "iter2/rollout"
    assert (t2["desirable"], t2["undesirable"]) == label_counts(merged2)
    assert t2["reference_adapter"] == p_dir and t2["learning_rate"] == pytest.approx(5e-4)
    assert t2["train_curve"] and all("step" in row and "kl" in row for row in t2["train_curve"])
    assert training[(1, "ulrec")]["rollout_stage"] == "iter1/rollout-own"
    assert side1["hyperparameters"]["shuffle_train"] is True  # the KTO stages train on their rows shuffled
    # --sft-data teacher (a fork at 2): the same rows, the own ones in the KTO term only, the teacher's in the SFT
    # term only; the stage balances and counts the KTO term's labels
    fork = tmp_path / "fork"
    assert main(["loop", "--fork-from", str(out), "--fork-at", "2", "--sft-data", "teacher", "--out", str(fork),
                 "--no-progress"]) == 0
    split = load_examples(fork / "iter2" / "kto-data")
    assert [{k: v for k, v in e.items() if k != "loss_terms"} for e in split.examples] == merged2
    n_own = len(own2) + len(parts[0])
    assert [e["loss_terms"] for e in split.examples] == ["kto"] * n_own + ["sft"] * (len(merged2) - n_own)
    assert split.meta["report"]["kto"] == dict(zip(("desirable", "undesirable"), label_counts(own2 + parts[0])))
    side_f = json.loads((fork / "iter2" / "ulrec" / "ulrec_adapter.json").read_text())
    assert side_f["label_counts"] == split.meta["report"]["kto"]
    assert side_f["sft_only_examples"] == len(merged2) - n_own > 0


def test_loop_settings_of_the_replay_options():
    with pytest.raises(ValueError, match="`reference` 'ulrec-p' needs ULRec-P"):
        LoopSettings(reference="ulrec-p", sft_first=False)
    with pytest.raises(ValueError, match="`reference` must be one of"):
        LoopSettings(reference="base")
    with pytest.raises(ValueError, match="`teacher_replay` needs a `teacher`.*set it False.*--no-teacher-replay"):
        LoopSettings(teacher_replay=True)
    with pytest.raises(ValueError, match="`teacher_episodes` .* needs a `teacher`.*--teacher-episodes none"):
        LoopSettings(teacher_episodes=64)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="`teacher_episodes` must be None or a positive integer"):
            LoopSettings(teacher="genre-cycle", teacher_episodes=bad)
    assert LoopSettings(teacher="genre-cycle", episodes=32).teacher_sessions == 32
    assert LoopSettings(teacher="genre-cycle", episodes=32, teacher_episodes=96).teacher_sessions == 96
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`replay` must be a non-negative integer"):
            LoopSettings(replay=bad)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="`kto_lr_decay` must be in"):
            LoopSettings(kto_lr_decay=bad)
    with pytest.raises(ValueError, match="`loss_type` must be one of"):
        LoopSettings(loss_type="sigmoid")
    with pytest.raises(ValueError, match="`kto_lr_schedule` must be one of cosine, constant"):
        LoopSettings(kto_lr_schedule="linear")
    with pytest.raises(ValueError, match="`kto_balance` must be one of weights, subsample"):
        LoopSettings(kto_balance="oversample")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="`kto_balance_from` must be a positive integer"):
            LoopSettings(kto_balance_from=bad)
    late = LoopSettings(kto_balance="subsample", kto_balance_from=2)
    assert [late.kto_balance_at(k) for k in (1, 2, 3)] == ["weights", "subsample", "subsample"]
    assert [LoopSettings(kto_balance="subsample").kto_balance_at(k) for k in (1, 2)] == ["subsample"] * 2
    assert LoopSettings(kto_learning_rate=1e-3, kto_lr_decay=0.5).kto_learning_rate_at(3) == pytest.approx(2.5e-4)


def test_a_fork_copies_the_iterations_before_it_and_runs_the_rest(tmp_path, tiny_model_dir, capsys):
    """`ulrec loop --fork-from RUN --fork-at 2 --sft-alpha 0`: RUN's references, base evaluation, iteration 1 and
    iteration 2's rollout and labels are copied (stages and files), iteration 2's KTO stage runs with the changed
    setting, and fork.json says what was copied and changed."""
    from train.loop import fork_run

    parent, fork = tmp_path / "run", tmp_path / "fork"
    common = ["--world", "synthetic:3", "--model", tiny_model_dir, "--iterations", "2", "--episodes", "10",
              "--eval-episodes", "6", "--max-episode-steps", "5", "--max-steps", "2", "--train-batch-size", "4",
              "--gen-batch-size", "8", "--min-positives", "1", "--min-rating", "3.0", "--references", "greedy",
              "--no-progress"]
    assert main(["loop", *common, "--out", str(parent)]) == 0
    assert main(["loop", "--fork-from", str(parent), "--fork-at", "2", "--sft-alpha", "0", "--out", str(fork),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out  # the table, then the paired differences (the fork's ULRec @2 against @1)
    assert "Paired on the same users" in printed and "ulrec@2 - ulrec@1: Len " in printed
    doc = json.loads((fork / "fork.json").read_text())
    assert doc["parent"] == str(parent.resolve()) and doc["at"] == 2 and doc["changed"] == {"sft_alpha": [0.1, 0.0]}
    assert doc["copied_stages"] == sorted(["references", "iter0/eval", "iter1/rollout", "iter1/label",
                                           "iter1/tune-ulrec-p", "iter1/eval-ulrec-p", "iter1/tune-ulrec",
                                           "iter1/eval-ulrec", "iter2/rollout", "iter2/label"])
    for f in ("iter1/ulrec/adapter_model.safetensors", "iter2/rollout/steps.jsonl", "iter2/labels/examples.jsonl"):
        assert (fork / f).read_bytes() == (parent / f).read_bytes(), f
    p_stages, f_stages = _stages(parent), _stages(fork)
    assert all(f_stages[name] == p_stages[name] for name in doc["copied_stages"])
    side_p = json.loads((parent / "iter2" / "ulrec" / "ulrec_adapter.json").read_text())
    side_f = json.loads((fork / "iter2" / "ulrec" / "ulrec_adapter.json").read_text())
    assert side_p["hyperparameters"]["sft_alpha"] == 0.1 and side_f["hyperparameters"]["sft_alpha"] == 0.0
    assert side_f["init_adapter"] == str(fork / "iter1" / "ulrec")
    settings = json.loads((fork / "settings.json").read_text())
    assert settings["sft_alpha"] == 0.0 and settings["episodes"] == 10  # the parent's settings, one changed
    evals = json.loads((fork / "metrics.json").read_text())["evals"]
    assert [(e["iteration"], e["policy"]) for e in evals] == [(0, "base"), (1, "ulrec-p"), (1, "ulrec"), (2, "ulrec")]
    # resuming the fork names the same parent and iteration; a finished fork redoes nothing
    before = _stages(fork)
    assert main(["loop", "--fork-from", str(parent), "--fork-at", "2", "--out", str(fork), "--resume",
                 "--no-progress"]) == 0
    assert _stages(fork) == before
    with pytest.raises(ValueError, match="is a fork of .* at iteration 2, not of .* at 1"):
        run_loop(LoopSettings.from_dict(settings), fork, resume=True, progress=False, fork_from=parent, fork_at=1)
    with pytest.raises(ValueError, match="already holds a run"):
        run_loop(LoopSettings.from_dict(settings), fork, progress=False, fork_from=parent, fork_at=2)
    # a setting that changes iteration 2's sessions reruns it from its rollout: nothing of iteration 2 is copied
    s = LoopSettings.from_dict(json.loads((parent / "settings.json").read_text()))
    doc_t = fork_run(parent, 2, dataclasses.replace(s, temperature=0.9), tmp_path / "fork-t", log=lambda m: None)
    assert not [n for n in doc_t["copied_stages"] if n.startswith("iter2/")]
    assert not (tmp_path / "fork-t" / "iter2").exists() and (tmp_path / "fork-t" / "iter1" / "ulrec").is_dir()
    # --kto-balance acts at the KTO stage: iteration 2's data is copied and the stage trains on its balanced subset.
    # The tiny run's labels are already in TRL's band (the subset would be all of them), so the fork's copy is made
    # lopsided first: each desirable example three times.
    fb = tmp_path / "fork-b"
    doc_b = fork_run(parent, 2, dataclasses.replace(s, kto_balance="subsample"), fb, log=lambda m: None)
    assert "iter2/label" in doc_b["copied_stages"] and doc_b["changed"] == {"kto_balance": ["weights", "subsample"]}
    from train.labeling import label_counts, load_examples, subsample_to_band

    labels = fb / "iter2" / "labels" / "examples.jsonl"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows + [r for r in rows if json.loads(r)["label"] is True] * 2) + "\n")
    assert main(["loop", "--fork-from", str(parent), "--fork-at", "2", "--kto-balance", "subsample", "--out", str(fb),
                 "--resume", "--no-progress"]) == 0
    t_b = json.loads((fb / "metrics.json").read_text())["evals"][-1]["training"]
    t_p = json.loads((parent / "metrics.json").read_text())["evals"][-1]["training"]
    data = load_examples(_stages(fb)["iter2/tune-ulrec"]["data"]).examples
    n_des, n_und = label_counts(data)
    assert n_des > 1.5 * n_und  # out of the band: subsampling has something to cut
    assert t_b["balance_by"] == "subsample" and t_b["examples"] == len(subsample_to_band(data, seed=s.seed)) < len(data)
    assert (t_b["desirable_weight"], t_b["undesirable_weight"]) == (1.0, 1.0)
    assert t_p["balance_by"] == "weights" and t_p["examples"] == len(rows)
    # --kto-balance-from 3: iteration 2's stage still balances by weights, on all of the same lopsided data
    fw = tmp_path / "fork-w"
    fork_run(parent, 2, dataclasses.replace(s, kto_balance="subsample", kto_balance_from=3), fw, log=lambda m: None)
    (fw / "iter2" / "labels" / "examples.jsonl").write_text(labels.read_text())
    assert main(["loop", "--fork-from", str(parent), "--fork-at", "2", "--kto-balance", "subsample",
                 "--kto-balance-from", "3", "--out", str(fw), "--resume", "--no-progress"]) == 0
    t_w = json.loads((fw / "metrics.json").read_text())["evals"][-1]["training"]
    assert t_w["balance_by"] == "weights" and t_w["examples"] == len(data)
    assert t_w["desirable_weight"] != t_w["undesirable_weight"]
    # what a fork may not change, and forks the parent cannot give, are refused with the reason
    with pytest.raises(ValueError, match="may change only .*; it changes world, sft_learning_rate"):
        fork_run(parent, 2, dataclasses.replace(s, sft_learning_rate=1.0, world="synthetic:4"), tmp_path / "f1")
    with pytest.raises(ValueError, match="must be an iteration from 1 to 2"):
        fork_run(parent, 3, s, tmp_path / "f2")
    # a fork may go on past its parent's last iteration (--iterations 3 --fork-at 3: all of the parent is copied) ...
    doc_3 = fork_run(parent, 3, dataclasses.replace(s, iterations=3), tmp_path / "f3", log=lambda m: None)
    assert doc_3["copied_stages"] == sorted(p_stages) and doc_3["changed"] == {"iterations": [2, 3]}
    # ... but not start from an iteration its parent has not finished
    half = tmp_path / "half"
    half.mkdir()
    (half / "settings.json").write_text((parent / "settings.json").read_text())
    (half / "manifest.json").write_text(json.dumps({"stages": {k: v for k, v in p_stages.items()
                                                               if k != "iter1/eval-ulrec"}}))
    with pytest.raises(ValueError, match="has not finished stage iter1/eval-ulrec"):
        fork_run(half, 2, s, tmp_path / "f3b")
    with pytest.raises(ValueError, match="no settings.json there"):
        fork_run(tmp_path / "nowhere", 1, s, tmp_path / "f4")
    capsys.readouterr()
    assert main(["loop", "--fork-from", str(parent), "--out", str(tmp_path / "f5")]) == 2
    assert "--fork-from and --fork-at go together" in capsys.readouterr().err
