"""Ctrl-C and SIGTERM end a command with what was kept and the command that continues; folders are not clobbered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train.cli as cli
from train.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("exc, code, word", [(KeyboardInterrupt, 130, "interrupted"), (cli._Terminated, 143, "terminated")])
def test_interrupt_exit_codes_and_hints(monkeypatch, capsys, tmp_path, exc, code, word):
    def boom(args):
        raise exc()

    monkeypatch.setattr(cli, "_cmd_loop", boom)
    monkeypatch.setattr(cli, "_cmd_rollout", boom)
    out = str(tmp_path / "run")
    assert main(["loop", "--out", out]) == code
    err = capsys.readouterr().err
    assert f"ulrec loop: {word}" in err and f"continue with: ulrec loop --out {out} --resume" in err
    assert "Traceback" not in err
    assert main(["rollout", "--out", out, "--policy", "random"]) == code
    assert "may hold part of the output; run again: ulrec rollout" in capsys.readouterr().err


def test_rollout_and_label_refuse_a_non_empty_folder(tmp_path, capsys):
    ro, lab = tmp_path / "ro", tmp_path / "lab"
    base = ["rollout", "--policy", "random", "--episodes", "3", "--world", "synthetic:3", "--no-progress",
            "--out", str(ro)]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base) == 2
    assert "is not empty; choose another folder or pass --overwrite" in capsys.readouterr().err
    assert main(base + ["--overwrite"]) == 0
    lab.mkdir()
    (lab / "keep.txt").write_text("x")
    assert main(["label", str(ro), "--out", str(lab), "--min-positives", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["label", str(ro), "--out", str(lab), "--min-positives", "0", "--overwrite"]) == 0


def _data(tmp_path, world):
    from tests.train.test_tune import rollout
    from train.labeling import LabelOptions, label_steps, save_examples

    ex, rep = label_steps(rollout(world), LabelOptions(min_positives=0))
    return save_examples(ex, tmp_path / "labels", world_fingerprint=world.fingerprint(), report=rep)


@pytest.mark.slow
def test_sigint_during_tune_keeps_a_checkpoint_and_resume_finishes(tmp_path, tiny_model_dir, default_world):
    data = _data(tmp_path, default_world)
    out = tmp_path / "adapter"
    cmd = [sys.executable, "-m", "train.cli", "tune", "--stage", "sft", "--data", str(data), "--model", tiny_model_dir,
           "--out", str(out), "--max-steps", "400", "--save-steps", "10", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A process started in the background by a non-interactive shell inherits SIGINT as ignored, and Python keeps an
    # ignored SIGINT (so `ulrec ... &` in a script is not stopped by Ctrl-C, as Unix tools are not). Run that way,
    # the child would never see the signal. A caught signal is reset to the default on exec, so catching SIGINT
    # here while the child starts gives it the default, and Python's KeyboardInterrupt, whatever the suite inherited.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    ckpts = out.with_name(f".{out.name}.checkpoints")
    start = time.time()
    deadline = start + 120
    seen = False
    while time.time() < deadline and proc.poll() is None:
        if any(ckpts.glob("checkpoint-*/trainer_state.json")):
            seen = True
            break
        time.sleep(0.05)
    exited_first = proc.poll() is not None
    signalled_after = time.time() - start
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    why = (f"checkpoint seen: {seen}; child exited before the signal: {exited_first}; "
           f"signal sent {signalled_after:.1f}s after start")
    assert proc.returncode == 130, why + "\n" + err[-2000:]
    assert "Traceback" not in err
    assert "ulrec tune: interrupted; checkpoint checkpoint-" in err and "--resume" in err
    assert not out.exists()
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    from train.tune import read_sidecar

    side = read_sidecar(out)
    assert 1 <= side["resumed_from_step"] < 400 and side["global_step"] == 400
    assert not ckpts.exists()
