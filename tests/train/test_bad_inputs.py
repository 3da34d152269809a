"""Bad training inputs get clear errors that name the file, the line or the mismatch (one table)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("trl")

from tests.train.test_tune import rollout, small_args
from train.cli import main
from train.labeling import LabelOptions, label_steps, save_examples
from train.rollout import save_rollout
from train.tune import SIDECAR_FILE, TuneConfig, tune


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """A rollout, its labels and an SFT adapter of the tiny model, all of the default world."""
    from ulrec_env.worlds import synthetic

    world = synthetic()
    d = tmp_path_factory.mktemp("made")
    steps = rollout(world)
    save_rollout(steps, d / "rollout", {"world_fingerprint": world.fingerprint()})
    ex, rep = label_steps(steps, LabelOptions(min_positives=0))
    save_examples(ex, d / "labels", world_fingerprint=world.fingerprint(), report=rep)
    tune("sft", d / "labels", tiny_model_dir, out=d / "adapter", max_steps=1,
         config=TuneConfig(trainer_args=small_args("sft")))
    return d


def _break_steps(d, how):
    path = d / "rollout" / "steps.jsonl"
    lines = path.read_text().splitlines()
    if how == "truncated":
        lines[2] = lines[2][: len(lines[2]) // 2]
    elif how == "not json":
        lines[2] = "hello"
    else:
        row = json.loads(lines[2])
        del row["feedback"]
        lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def _break_examples(d, how):
    path = d / "labels" / "examples.jsonl"
    lines = path.read_text().splitlines()
    if how == "truncated":
        lines[1] = lines[1][:10]
    else:
        row = json.loads(lines[1])
        del row["label"]
        lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


CASES = [
    ("steps: truncated line", "label", lambda d: _break_steps(d, "truncated"), r"steps.jsonl, line 3: not a step record"),
    ("steps: not JSON", "label", lambda d: _break_steps(d, "not json"), r"steps.jsonl, line 3: not a step record"),
    ("steps: missing field", "label", lambda d: _break_steps(d, "missing"), r"steps.jsonl, line 3: .*feedback"),
    ("examples: truncated line", "tune", lambda d: _break_examples(d, "truncated"),
     r"examples.jsonl, line 2: not valid JSON"),
    ("examples: missing field", "tune", lambda d: _break_examples(d, "missing"),
     r"examples.jsonl, line 2: missing field `label`"),
    ("adapter without weights", "tune-init", lambda d: (d / "adapter" / "adapter_model.safetensors").unlink(),
     r"no adapter weights \(adapter_model.safetensors\)"),
    ("adapter of another world", "tune-init", lambda d: _set_sidecar(d, world_fingerprint="0123456789abcdef"),
     r"was trained on world 0123456789abcdef"),
    ("adapter of another base model", "bench", lambda d: _set_sidecar(d, base_model="someone/other-model"),
     r"was trained on base model 'someone/other-model'"),
]


def _set_sidecar(d, **kw):
    p = d / "adapter" / SIDECAR_FILE
    side = json.loads(p.read_text())
    side.update(kw)
    p.write_text(json.dumps(side))


@pytest.mark.parametrize("name, command, damage, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(name, command, damage, message, made, tmp_path, tiny_model_dir, capsys):
    d = tmp_path / "copy"
    shutil.copytree(made, d)
    damage(d)
    if command == "label":
        argv = ["label", str(d / "rollout"), "--out", str(tmp_path / "out"), "--min-positives", "0"]
    elif command == "tune":
        argv = ["tune", "--stage", "sft", "--data", str(d / "labels"), "--model", tiny_model_dir, "--out",
                str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2"]
    elif command == "tune-init":
        argv = ["tune", "--stage", "kto", "--data", str(d / "labels"), "--model", tiny_model_dir, "--init-adapter",
                str(d / "adapter"), "--out", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2"]
    else:
        argv = ["bench", "--policies", "llm", "--llm-model", tiny_model_dir, "--llm-adapter", str(d / "adapter"),
                "--episodes", "2", "--seeds", "1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    import re

    assert re.search(message, err), err
    assert "Traceback" not in err
