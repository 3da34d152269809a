"""LoopSettings: validation, per-stage step caps, settings files of earlier versions, and the CLI's mapping."""

from __future__ import annotations

import dataclasses

import pytest

from train.cli import build_parser, loop_settings_from_args, main
from train.loop import DEMO_SETTINGS, LoopSettings


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
    s = loop_settings_from_args(args)
    assert (s.max_steps, s.sft_max_steps, s.kto_max_steps) == (9, 4, 6)
    assert s.to_dict()["kto_max_steps"] == 6


def test_sessions_per_user_and_keep_best_are_validated_and_mapped():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`sessions_per_user` must be a positive integer"):
            LoopSettings(sessions_per_user=bad)
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError, match="`keep_best` must be a non-negative integer"):
            LoopSettings(keep_best=bad)
    with pytest.raises(ValueError, match="keeps every one of a user's 2 session.*--sessions-per-user"):
        LoopSettings(sessions_per_user=2, keep_best=2)
    with pytest.raises(ValueError, match="at temperature 0 plays the same greedy session.*--temperature"):
        LoopSettings(sessions_per_user=2, temperature=0.0)
    args = build_parser().parse_args(["loop", "--out", "x", "--sessions-per-user", "4", "--keep-best", "1"])
    s = loop_settings_from_args(args)
    assert (s.sessions_per_user, s.keep_best) == (4, 1)
    opts = s.label_options()
    assert (opts.keep_best, opts.min_positives, opts.extra_negatives) == (1, s.min_positives, s.extra_negatives)
    assert s.label_options(own=False) == dataclasses.replace(opts, keep_best=0)  # the teacher's sessions
    # settings saved before the options load with them off
    d = s.to_dict()
    del d["sessions_per_user"], d["keep_best"]
    old = LoopSettings.from_dict(d)
    assert (old.sessions_per_user, old.keep_best) == (1, 0)


def test_sft_data_is_validated_and_mapped():
    with pytest.raises(ValueError, match="`sft_data` must be one of all, teacher"):
        LoopSettings(sft_data="own")
    with pytest.raises(ValueError, match="`sft_data` 'teacher' .* needs `teacher_replay`.*--sft-data all"):
        LoopSettings(teacher="genre-cycle", sft_data="teacher")
    args = build_parser().parse_args(["loop", "--out", "x", "--teacher", "genre-cycle", "--teacher-replay",
                                      "--sft-data", "teacher"])
    assert loop_settings_from_args(args).sft_data == "teacher"
    d = LoopSettings().to_dict()
    del d["sft_data"]
    assert LoopSettings.from_dict(d).sft_data == "all"  # settings saved before the option


def test_kto_scores_is_validated_and_mapped():
    with pytest.raises(ValueError, match="`kto_scores` must be one of completion, genres"):
        LoopSettings(kto_scores="title")
    teacher = dict(teacher="genre-cycle", teacher_replay=True)
    for bad in (dict(teacher, sft_data="teacher"), dict(teacher, completion="genres-title")):
        with pytest.raises(ValueError, match="`kto_scores` 'genres' .* needs `completion` 'genres-title' and "
                                             "`sft_data` 'teacher'.*--kto-scores completion"):
            LoopSettings(kto_scores="genres", **bad)
    args = build_parser().parse_args(["loop", "--out", "x", "--teacher", "genre-cycle", "--teacher-replay",
                                      "--sft-data", "teacher", "--completion", "genres-title",
                                      "--kto-scores", "genres"])
    assert loop_settings_from_args(args).kto_scores == "genres"
    d = LoopSettings().to_dict()
    del d["kto_scores"]
    assert LoopSettings.from_dict(d).kto_scores == "completion"  # settings saved before the option


@pytest.mark.parametrize("saved", [LoopSettings(max_steps=4).to_dict(), {"not_a_setting": 1}])
def test_demo_refuses_a_folder_of_other_settings(tmp_path, capsys, saved):
    import json

    (tmp_path / "settings.json").write_text(json.dumps(saved))
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]  # nothing was run or written


def test_demo_settings_round_trip():
    # The demo compares a folder's saved settings with DEMO_SETTINGS, so saving must not change them.
    import json

    assert LoopSettings.from_dict(json.loads(json.dumps(DEMO_SETTINGS.to_dict()))) == DEMO_SETTINGS


def test_dtype_setting_is_validated_and_reaches_the_trainer(monkeypatch):
    import agents.models as models
    from train.loop import LoopSettings
    from train.tune import default_trainer_args

    assert LoopSettings().dtype == "auto" and LoopSettings(dtype="float32").dtype == "float32"
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        LoopSettings(dtype="int8")
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert default_trainer_args("kto", "/tmp/x", dtype="auto").bf16 is True
    assert default_trainer_args("sft", "/tmp/x", dtype="float32").bf16 is False
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert default_trainer_args("kto", "/tmp/x", dtype="auto").bf16 is False


def test_merge_adapters_is_validated_and_mapped():
    assert LoopSettings().merge_adapters is False
    with pytest.raises(ValueError, match="`merge_adapters`.*--engine transformers"):
        LoopSettings(merge_adapters=True, engine="vllm")
    args = build_parser().parse_args(["loop", "--out", "x", "--merge-adapters"])
    assert loop_settings_from_args(args).merge_adapters is True
    args = build_parser().parse_args(["loop", "--out", "x"])
    assert loop_settings_from_args(args).merge_adapters is False


def test_resume_with_other_settings_lists_them_or_records_allowed_changes(tmp_path):
    import json

    from train.loop import resume_settings

    saved = LoopSettings(iterations=2, teacher="genre-cycle", max_history=6)
    logs = []
    with pytest.raises(ValueError) as e:
        resume_settings(tmp_path, saved, LoopSettings(iterations=2, teacher=None, max_history=8), logs.append)
    msg = str(e.value)
    assert "teacher: 'genre-cycle' (saved) -> None" in msg and "max_history: 6 (saved) -> 8" in msg
    assert "iterations" in msg.split("only ")[1]  # the allow-list is named
    assert not (tmp_path / "settings_history.json").exists()
    grown = resume_settings(tmp_path, saved, LoopSettings(iterations=4, teacher="genre-cycle", max_history=6,
                                                           kto_max_steps=7), logs.append)
    assert grown.iterations == 4 and grown.kto_max_steps == 7 and grown.teacher == "genre-cycle"
    history = json.loads((tmp_path / "settings_history.json").read_text())
    assert history[-1]["changed"] == {"iterations": [2, 4], "kto_max_steps": [None, 7]}
    assert LoopSettings.from_dict(json.loads((tmp_path / "settings.json").read_text())) == grown
    assert "iterations 2 -> 4" in logs[-1]


def test_cli_resume_lays_typed_options_over_the_saved_settings(tmp_path):
    import json

    from train.cli import settings_for_command

    out = tmp_path / "run"
    out.mkdir()
    saved = LoopSettings(teacher="genre-cycle", max_history=6, kto_learning_rate=5e-4)
    (out / "settings.json").write_text(json.dumps(saved.to_dict()))
    parse = build_parser().parse_args
    assert settings_for_command(parse(["loop", "--out", str(out), "--resume"])) == saved
    more = settings_for_command(parse(["loop", "--out", str(out), "--resume", "--iterations", "5"]))
    assert more.iterations == 5 and more.teacher == "genre-cycle"
    other = settings_for_command(parse(["loop", "--out", str(out), "--resume", "--teacher", "mmr"]))
    assert other.teacher == "mmr"  # then the loop refuses it, listing the difference
    with pytest.raises(ValueError, match="teacher: 'genre-cycle' \\(saved\\) -> 'mmr'"):
        from train.loop import resume_settings

        resume_settings(out, saved, other, print)


def test_session_window_setting_and_what_prompts_record():
    assert "session_window" not in LoopSettings().prompt_format.to_dict()  # absent means sliding, as before the option
    assert LoopSettings(session_window="block").prompt_format.to_dict()["session_window"] == "block"
    with pytest.raises(ValueError, match="session_window"):
        LoopSettings(session_window="tumbling")
    args = build_parser().parse_args(["loop", "--out", "x", "--session-window", "block"])
    assert loop_settings_from_args(args).session_window == "block"


def test_preset_with_typed_options_over_it(tmp_path):
    from train.cli import settings_for_command, parse_command
    from train.loop import HEADLINE_SETTINGS, describe_settings

    out = str(tmp_path / "run")
    plain = settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out]))
    assert plain == HEADLINE_SETTINGS and plain.preset == "headline" and plain.preset_overrides == ()
    # the README's recipe: SmolLM2 with LoRA, the default world, horizon 20, all test users, greedy evaluation
    assert (plain.model, plain.world, plain.max_episode_steps, plain.eval_episodes) == (None, "synthetic", 20, "all")
    assert plain.iterations >= 3 and plain.lora_layers is not None
    # typed options win, even one typed with the default's value (1.0 is LoopSettings' default temperature)
    typed = settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out, "--temperature", "1.0",
                                         "--window", "3", "--no-teacher-replay"]))
    assert (typed.temperature, typed.env, typed.teacher_replay) == (1.0, {"window": 3}, False)
    assert typed.preset_overrides == ("env", "teacher_replay", "temperature")
    assert typed == dataclasses.replace(HEADLINE_SETTINGS, temperature=1.0, env={"window": 3}, teacher_replay=False,
                                        preset_overrides=typed.preset_overrides)
    assert LoopSettings.from_dict(typed.to_dict()) == typed
    line = describe_settings(typed)
    assert line.startswith("settings (preset headline (typed over it: env, teacher_replay, temperature)): ")
    assert all(f"{f.name}=" in line for f in dataclasses.fields(LoopSettings) if not f.name.startswith("preset"))
    assert parse_command(["loop", "--out", out]).typed == []


def test_resume_takes_typed_options_and_checks_the_preset(tmp_path):
    import json

    from train.cli import settings_for_command, parse_command
    from train.loop import HEADLINE_SETTINGS

    out = tmp_path / "run"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(HEADLINE_SETTINGS.to_dict()))
    assert settings_for_command(parse_command(["loop", "--out", str(out), "--resume"])) == HEADLINE_SETTINGS
    assert settings_for_command(parse_command(["loop", "--preset", "headline", "--out", str(out), "--resume"])) == HEADLINE_SETTINGS
    # an option typed with the default's value is still a change (then the loop refuses it, listing it)
    assert settings_for_command(parse_command(["loop", "--out", str(out), "--resume", "--temperature", "1.0"])).temperature == 1.0
    (out / "settings.json").write_text(json.dumps(LoopSettings().to_dict()))
    with pytest.raises(ValueError, match="holds a run of no preset, not --preset headline"):
        settings_for_command(parse_command(["loop", "--preset", "headline", "--out", str(out), "--resume"]))


def test_prompt_fields_of_the_loop_are_those_of_the_prompt_format():
    """LoopSettings keeps the prompt format's fields flat (settings.json's layout); they match PromptFormat's."""
    import typing

    from agents.prompting import PromptFormat

    loop, fmt = typing.get_type_hints(LoopSettings), typing.get_type_hints(PromptFormat)
    for f in dataclasses.fields(PromptFormat):
        assert loop[f.name] == fmt[f.name], f.name
        assert LoopSettings.__dataclass_fields__[f.name].metadata.get("choices") == f.metadata.get("choices"), f.name
    s = LoopSettings(max_history=3, max_session=None, worked_example=True, session_window="block")
    assert s.prompt_format == PromptFormat(max_history=3, max_session=None, worked_example=True, session_window="block")


def test_env_pairs_typed_again_on_resume_compare_equal(tmp_path):
    """A (low, high) pair typed on the command line equals the same pair read back from settings.json."""
    import json

    from train.cli import parse_command, settings_for_command

    out = tmp_path / "run"
    argv = ["compare", "--out", str(out), "--tolerance", "0.5,1.0", "--window", "3"]
    first = settings_for_command(parse_command(argv))
    assert first.env == {"tolerance": [0.5, 1.0], "window": 3}
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(first.to_dict()))
    again = settings_for_command(parse_command(argv))  # compare always resumes its folder
    assert again == first and LoopSettings.from_dict(json.loads((out / "settings.json").read_text())) == again


def test_teacher_episodes_on_the_command_line(tmp_path):
    from train.cli import parse_command, settings_for_command

    out = str(tmp_path / "run")
    more = settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out, "--teacher-episodes", "384"]))
    assert (more.teacher_episodes, more.teacher_sessions, more.episodes) == (384, 384, 128)
    assert more.preset_overrides == ("teacher_episodes",)
    plain = settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out]))
    assert plain.teacher_episodes is None and plain.teacher_sessions == plain.episodes
    # without a teacher the option must be cleared too, and the error says how
    with pytest.raises(ValueError, match="--teacher-episodes none"):
        settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out, "--teacher", "none",
                                            "--no-teacher-replay", "--teacher-episodes", "64"]))
    cleared = settings_for_command(parse_command(["loop", "--preset", "headline", "--out", out, "--teacher", "none",
                                                  "--no-teacher-replay", "--teacher-episodes", "none"]))
    assert cleared.teacher is None and cleared.teacher_episodes is None


def test_a_fork_keeps_the_stages_its_changes_do_not_act_on():
    from train.loop import fork_kept_stages

    teacher = LoopSettings(teacher="genre-cycle-words", teacher_episodes=384)
    everything = ("rollout", "label", "tune-ulrec-p", "eval-ulrec-p", "rollout-own", "labels-own")
    assert fork_kept_stages(1, teacher, ["kto_learning_rate", "iterations"]) == everything
    # the temperature acts on ULRec-P's own sessions only: the teacher's sessions and ULRec-P are kept
    assert fork_kept_stages(1, teacher, ["temperature"]) == ("rollout", "label", "tune-ulrec-p", "eval-ulrec-p")
    assert fork_kept_stages(1, teacher, ["episodes", "top_p"]) == ("rollout", "label", "tune-ulrec-p", "eval-ulrec-p")
    # ... but the labelling options relabel the teacher's sessions, ULRec-P's SFT data
    assert fork_kept_stages(1, teacher, ["temperature", "extra_negatives"]) == ()
    # several sessions per user and the best of them kept are ULRec-P's own: the teacher plays each user once
    assert fork_kept_stages(1, teacher, ["sessions_per_user", "keep_best"]) == ("rollout", "label", "tune-ulrec-p",
                                                                              "eval-ulrec-p")
    # with the teacher sized by `episodes`, more episodes are more teacher sessions
    assert fork_kept_stages(1, LoopSettings(teacher="genre-cycle-words"), ["episodes"]) == ()
    # without a teacher, iteration 1's rollout is the base model's own, ULRec-P's SFT data; later iterations have
    # no ULRec-P: any rollout change reruns from the rollout
    assert fork_kept_stages(1, LoopSettings(), ["temperature"]) == ()
    assert fork_kept_stages(2, teacher, ["temperature"]) == ()
