"""Command-line options come from the settings dataclasses: every field has its option, parsed to its type."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from agents.prompting import PromptFormat
from train.cli import build_parser, loop_settings_from_args, parse_command
from train.loop import LoopSettings
from train.options import add_dataclass_options, field_docs, typed_values
from ulrec_env.config import EnvConfig


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def _sub(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", ["bench", "rollout", "loop", "compare"])
def test_every_env_setting_has_an_option(command):
    names = {f.name for f in dataclasses.fields(EnvConfig)} - {"split"}  # commands choose their users themselves
    assert names <= _dests(_sub(command))


@pytest.mark.parametrize("command", ["loop", "compare"])
def test_every_loop_setting_has_an_option(command):
    names = {f.name for f in dataclasses.fields(LoopSettings)} - {"env", "preset", "preset_overrides"}
    assert names <= _dests(_sub(command))


@pytest.mark.parametrize("command", ["bench", "rollout"])
def test_prompt_format_options(command):
    assert {f.name for f in dataclasses.fields(PromptFormat)} <= _dests(_sub(command))


def test_typed_options_parse_to_the_field_types():
    args = parse_command(["loop", "--out", "x", "--max-session", "none", "--no-sft-first", "--references", "",
                          "--eval-episodes", "7", "--tolerance", "0.5,1.0", "--no-stochastic", "--model", "smollm2",
                          "--lora-layers", "4", "--top-p", "0.9", "--teacher", "mmr", "--trait-seed", "3"])
    s = loop_settings_from_args(args)
    assert (s.max_session, s.sft_first, s.references, s.eval_episodes) == (None, False, (), 7)
    assert (s.model, s.lora_layers, s.top_p, s.teacher) == (None, 4, 0.9, "mmr")
    assert s.env == {"tolerance": [0.5, 1.0], "stochastic": False, "trait_seed": 3}  # settings.json's form
    assert args.typed == ["env", "eval_episodes", "lora_layers", "max_session", "model", "references", "sft_first",
                          "teacher", "top_p"]
    # nothing typed: the dataclass's defaults
    assert loop_settings_from_args(parse_command(["loop", "--out", "x"])) == LoopSettings()


@pytest.mark.parametrize("argv, message", [
    (["--max-session", "many"], "invalid int value"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1"),
    (["--session-window", "tumbling"], "invalid choice"),
    (["--tolerance", "1"], "LOW,HIGH"),
])
def test_bad_values_are_refused_with_the_option_named(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_command(["loop", "--out", "x", *argv])
    err = capsys.readouterr().err
    assert message in err and argv[0] in err


def test_help_comes_from_the_docstring_or_the_metadata():
    docs = field_docs(LoopSettings)
    assert docs["kto_lr_decay"].startswith("The KTO learning rate of iteration k")
    helps = {a.dest: a.help for a in _sub("loop")._actions}
    assert helps["kto_lr_decay"].startswith(docs["kto_lr_decay"].replace("%", "%%")[:40])
    assert helps["window"].startswith(EnvConfig.__dataclass_fields__["window"].metadata["help"])
    assert "(default: 1.0)" in helps["kto_lr_decay"]


def test_a_field_without_a_parser_is_named():
    @dataclasses.dataclass
    class Odd:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="Odd.table"):
        add_dataclass_options(argparse.ArgumentParser(), Odd)
    p = argparse.ArgumentParser()
    add_dataclass_options(p, Odd, skip=("table",))
    assert typed_values(p.parse_args([]), Odd) == {}
