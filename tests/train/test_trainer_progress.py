"""A tuning stage's progress: the Trainer's log lines as before, and its final bar once, as one final line."""

from __future__ import annotations

import re

from tests.train.test_tune import data_dir, small_args  # noqa: F401  (data_dir is a fixture)
from train.tune import TuneConfig, tune


def test_tune_prints_its_final_line_once_and_keeps_the_log_lines(data_dir, tiny_model_factory, tiny_tokenizer,
                                                                 tmp_path, capfd):
    result = tune("sft", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "p", max_steps=4,
                  config=TuneConfig(trainer_args=small_args("sft", logging_steps=2)))
    out, err = capfd.readouterr()
    assert result.global_step == 4
    lines = re.split(r"[\r\n]", err)
    assert len([s for s in lines if re.fullmatch(r"tune sft: 4 steps in \d+\.\ds", s)]) == 1, err
    assert not [s for s in lines if "4/4" in s], err  # neither a plain line nor the Trainer's bar repeats the end
    logs = [line for line in out.splitlines() if line.startswith("{")]
    assert len(logs) == 3 and "'loss'" in logs[0] and "'train_runtime'" in logs[-1] and "total_flos" not in out
