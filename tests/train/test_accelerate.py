"""The tuning stage runs unchanged under `accelerate launch --num_processes 2` (CPU, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from train.labeling import LabelOptions, label_steps, save_examples
from train.records import StepRecord

pytestmark = pytest.mark.slow


def _examples(world):
    steps = []
    for e in range(8):
        n = 3
        for t in range(n + 1):
            leave = t == n
            title = world.titles[(7 * e + t) % world.n_items]
            steps.append(StepRecord(episode=e, user=e, step=t, prompt=f"History: {world.titles[e]}\nNext item?\n",
                                    completion=title + "\n", item=(7 * e + t) % world.n_items, title=title, rating=4.0,
                                    reward=0.0 if leave else 4.0, feedback="leave" if leave else "continue",
                                    leave_reason="bored" if leave else None, truncated=False, session_len=n,
                                    session_return=4.0 * n))
    return label_steps(steps, LabelOptions(min_positives=1))


@pytest.mark.parametrize("stage", ["sft", "kto"])
def test_tune_under_accelerate_two_processes(tmp_path, tiny_model_dir, default_world, stage):
    assert shutil.which("accelerate"), "accelerate's launcher is not on PATH (it comes with the llm extra)"
    model_dir = tiny_model_dir
    examples, report = _examples(default_world)
    save_examples(examples, tmp_path / "data", report=report)
    out = tmp_path / "adapter"
    cmd = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--multi_gpu", "-m", "train.cli", "tune", "--stage", stage, "--data",
           str(tmp_path / "data"), "--model", model_dir, "--out", str(out), "--max-steps", "2", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sidecar = json.loads((out / "ulrec_adapter.json").read_text())
    assert sidecar["stage"] == stage and sidecar["global_step"] == 2
    assert sidecar["num_processes"] == 2  # data-parallel over two CPU processes (gloo)
    assert (out / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter.")]  # no staging folder left behind
