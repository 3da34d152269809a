"""Fault injection: a tiny `ulrec loop` killed with -9 at ten seeded moments, each time resumed to the end, ends as
an uninterrupted run does (data files byte for byte, adapters within float tolerance, metrics equal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from tests.train.test_loop import _stages, adapter_weights, comparable_evals  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["references", "iter0/eval", "iter1/rollout", "iter1/label", "iter1/tune-ulrec-p", "iter1/eval-ulrec-p",
          "iter1/tune-ulrec", "iter1/eval-ulrec"]
DATA_FILES = ["iter1/rollout/steps.jsonl", "iter1/labels/examples.jsonl"]
ADAPTERS = ["iter1/ulrec-p", "iter1/ulrec"]


def _argv(model, out):
    return [sys.executable, "-m", "train.cli", "loop", "--world", "synthetic:3", "--model", model, "--iterations", "1",
            "--episodes", "10", "--eval-episodes", "8", "--max-episode-steps", "6", "--max-steps", "5",
            "--save-steps", "1", "--train-batch-size", "4", "--gen-batch-size", "3", "--min-positives", "1",
            "--min-rating", "3.0", "--temperature", "1.0", "--references", "greedy", "--out", str(out), "--no-progress"]


def _journal_lines(out, stage):
    p = out / ".journals" / (stage.replace("/", "__") + ".jsonl")
    return len(p.read_text().splitlines()) if p.is_file() else 0


def _moments():
    """Ten kill moments: inside each journaled stage once a batch of sessions is kept, inside each tuning stage once
    a checkpoint is written, and three at seeded times; each with a seeded extra delay."""
    inside = [("iter0/eval", "journal"), ("iter1/rollout", "journal"), ("iter1/tune-ulrec-p", "checkpoint"),
              ("iter1/eval-ulrec-p", "journal"), ("iter1/tune-ulrec", "checkpoint"), ("iter1/eval-ulrec", "journal"),
              ("references", "start")]
    return inside + [(None, "time")] * 3


def test_kill_9_at_ten_moments_then_resume(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = tmp_path / "whole"
    t0 = time.time()
    subprocess.run(_argv(tiny_model_dir, whole), env=env, cwd=ROOT, check=True, capture_output=True)
    total = time.time() - t0
    rng = np.random.default_rng(0)
    report = []
    for i, (stage, trigger) in enumerate(_moments()):
        out = tmp_path / f"kill{i}"
        proc = subprocess.Popen(_argv(tiny_model_dir, out), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        t_start = time.time()
        if trigger == "time":
            time.sleep(float(rng.uniform(0.2, 0.95)) * total)
        else:
            ckpt = out / "iter1" / f".{stage.split('tune-')[-1]}.checkpoints"
            while proc.poll() is None and time.time() - t_start < 300:
                if trigger == "start" and (out / "settings.json").is_file():
                    break
                if trigger == "journal" and _journal_lines(out, stage) >= 2:
                    break
                if trigger == "checkpoint" and any(ckpt.glob("checkpoint-*/trainer_state.json")):
                    break
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 0.05)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = _stages(out)
        during = next((s for s in STAGES if s not in done), "finished")
        checkpoints = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in (out / "iter1").glob(".*.checkpoints/checkpoint-*/trainer_state.json")) if (out / "iter1").is_dir() else []
        journals = sorted(p.name for p in (out / ".journals").glob("*.jsonl")) if (out / ".journals").is_dir() else []
        res = subprocess.run(_argv(tiny_model_dir, out) + ["--resume"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        mismatches = [f for f in DATA_FILES if (out / f).read_bytes() != (whole / f).read_bytes()]
        for a in ADAPTERS:
            wa, wb = adapter_weights(whole / a), adapter_weights(out / a)
            if wa.keys() != wb.keys() or not all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa):
                mismatches.append(a)
        if comparable_evals(out) != comparable_evals(whole):
            mismatches.append("metrics.json evals")
        report.append({"kill": i, "target": stage, "trigger": trigger, "during": during, "checkpoints": checkpoints,
                       "journals": journals, "mismatches": mismatches})
    print(json.dumps(report))
    assert all(not r["mismatches"] for r in report), report
    # every targeted stage was interrupted while it ran, with its journal or checkpoint on disk
    for r in report[:6]:
        assert r["during"] == r["target"], r
        assert (r["journals"] if r["trigger"] == "journal" else r["checkpoints"]), r
