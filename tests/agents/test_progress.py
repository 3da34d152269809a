"""Progress output: each stage ends with one final line, never a second copy of its final bar."""

from __future__ import annotations

import io
import json
import re

import pytest

from agents.baselines import GreedyPolicy
from agents.evaluation import run_policy
from agents.progress import Progress
from train.cli import main


def _segments(text: str) -> list[str]:
    """What was written between carriage returns and newlines: every state a bar was drawn in."""
    return [s for s in re.split(r"[\r\n]", text) if s.strip()]


def _final_lines(text: str, desc: str) -> list[str]:
    return [s for s in _segments(text) if re.fullmatch(rf"{re.escape(desc)}: [\d,]+ user-steps? in \d+\.\ds", s)]


def test_bench_prints_each_stage_final_line_once(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--world", "synthetic:3", "--policies", "random,greedy,mmr", "--episodes", "5",
                 "--seeds", "2", "--max-episode-steps", "10", "--per-session", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    doc = json.loads(out.read_text())
    for row in doc["results"]:
        finals = _final_lines(err, f"bench {row['policy']}")
        assert len(finals) == 1, err
        steps = sum(len(s["items"]) for s in row["sessions"])
        assert finals[0].startswith(f"bench {row['policy']}: {steps:,} user-step")  # the stage's own count
    assert not [s for s in _segments(err) if s.startswith("bench ") and s not in
                {f for row in doc["results"] for f in _final_lines(err, f"bench {row['policy']}")}], err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_is_cleared_and_followed_by_one_final_line(small_world):
    pytest.importorskip("tqdm")
    screen = _Terminal()
    with Progress(None, "eval greedy", unit="user-step", file=screen) as bar:
        sessions = run_policy(GreedyPolicy(), small_world, list(range(4)), max_episode_steps=10, batch_size=2,
                              on_step=bar.update)
    steps = sum(len(i) for i in sessions.items)
    text = screen.getvalue()
    assert "eval greedy: 0user-step" in text  # tqdm drew the bar while the stage ran
    finals = _final_lines(text, "eval greedy")
    assert len(finals) == 1 and finals[0].startswith(f"eval greedy: {steps:,} user-steps in ")
    before_final = re.split(r"\r", text[: text.index(finals[0])])
    assert before_final[-2].strip() == ""  # the bar's line was blanked, not drawn again at its final state
    assert text.count(f"{steps}user-step") <= 1 and text.endswith(finals[0] + "\n")


def test_plain_lines_on_a_pipe_and_no_final_line_after_an_error():
    pipe = io.StringIO()
    with Progress(None, "rollout greedy", unit="user-step", file=pipe, interval=0.0) as bar:
        bar.update(3)
        bar.update(1)
    lines = pipe.getvalue().splitlines()
    assert lines[0] == "rollout greedy: 3 user-steps" and len(lines) == 2  # no \r animation, no line at 4 but the last
    assert _final_lines(pipe.getvalue(), "rollout greedy") == lines[1:] and lines[1].startswith("rollout greedy: 4 ")
    assert "\r" not in pipe.getvalue()

    broken = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with Progress(None, "eval base", unit="user-step", file=broken) as bar:
            bar.update(2)
            raise KeyboardInterrupt
    assert broken.getvalue() == ""  # an unfinished stage claims no final count
    bar.close()
    assert broken.getvalue() == ""  # closing again prints nothing


def test_disabled_progress_prints_nothing():
    quiet = _Terminal()
    with Progress(None, "bench random", file=quiet, enabled=False) as bar:
        bar.update(5)
    assert quiet.getvalue() == "" and bar.n == 0
