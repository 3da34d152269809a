"""LoopSettings: validation, per-stage step caps, settings files of earlier versions, and the CLI's mapping."""

from __future__ import annotations

import pytest

from train.cli import _loop_settings, build_parser
from train.loop import LoopSettings


def test_stage_caps_fall_back_to_max_steps():
    s = LoopSettings(max_steps=50)
    assert (s.stage_max_steps("sft"), s.stage_max_steps("kto")) == (50, 50)
    s = LoopSettings(max_steps=50, sft_max_steps=20)
    assert (s.stage_max_steps("sft"), s.stage_max_steps("kto")) == (20, 50)
    s = LoopSettings(kto_max_steps=7)
    assert (s.stage_max_steps("sft"), s.stage_max_steps("kto")) == (None, 7)


@pytest.mark.parametrize("name", ["max_steps", "sft_max_steps", "kto_max_steps"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_step_caps_are_validated(name, bad):
    with pytest.raises(ValueError, match=f"`{name}` must be None or a positive integer"):
        LoopSettings(**{name: bad})


def test_settings_saved_before_the_stage_caps_still_load():
    d = LoopSettings(max_steps=80).to_dict()
    del d["sft_max_steps"], d["kto_max_steps"]
    s = LoopSettings.from_dict(d)
    assert (s.sft_max_steps, s.kto_max_steps, s.stage_max_steps("kto")) == (None, None, 80)
    with pytest.raises(ValueError, match="unknown field"):
        LoopSettings.from_dict({**d, "not_a_setting": 1})


def test_cli_maps_the_stage_caps():
    args = build_parser().parse_args(["loop", "--out", "x", "--max-steps", "9", "--sft-max-steps", "4",
                                      "--kto-max-steps", "6"])
    s = _loop_settings(args)
    assert (s.max_steps, s.sft_max_steps, s.kto_max_steps) == (9, 4, 6)
    assert s.to_dict()["kto_max_steps"] == 6
