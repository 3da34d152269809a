"""`ulrec bench`: the table, the JSON format, the plot, and one-line errors."""

from __future__ import annotations

import json

import pytest

from train.cli import main


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "--world", "synthetic:3", "--policies", "random,greedy,mmr", "--episodes", "30", "--seeds", "2",
               "--json", str(out), "--plot", str(png), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Len (95% CI)" in text and "greedy *" in text
    doc = json.loads(out.read_text())
    assert doc["world"] == "synthetic-3" and doc["settings"]["seeds"] == [0, 1]
    row = {r["policy"]: r for r in doc["results"]}["greedy"]
    for key in ("episodes", "len_mean", "len_ci95", "return_mean", "return_ci95", "reward_per_step", "leave_reasons",
                "invalid_actions", "user_steps_per_s"):
        assert key in row
    assert row["episodes"] == 60
    assert png.stat().st_size > 1000


def test_bench_overrides_env_settings(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--world", "synthetic:3", "--policies", "greedy", "--episodes", "all", "--seeds", "1",
                 "--leave-rule", "billp", "--window", "2", "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["env"]["leave_rule"] == "billp" and doc["settings"]["env"]["window"] == 2
    assert set(doc["results"][0]["leave_reasons"]) <= {"repeat", "low_rating", "redundant", "horizon"}


@pytest.mark.parametrize("argv, msg", [
    (["bench", "--policies", "greedy,nope", "--no-progress"], "unknown policy 'nope'; registered: random, popular"),
    (["bench", "--world", "mars", "--no-progress"], "unknown world spec 'mars'; valid: synthetic"),
    (["bench", "--window", "-2", "--policies", "greedy", "--no-progress"], "`window` must be >= 1"),
])
def test_bench_errors_are_one_line(argv, msg, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
        err = str(e.code)
    else:
        err = capsys.readouterr().err
    assert rc != 0
    assert msg in str(err)


def test_bench_rejects_bad_episodes(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--episodes", "many"])
    assert "--episodes takes a positive integer or 'all'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "rollout", "loop", "compare"])
def test_help_lists_every_registered_policy_name_whole(command, capsys, monkeypatch):
    import re

    from agents.registry import registered

    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: long help lines wrap
    with pytest.raises(SystemExit):
        main([command, "--help"])
    options = re.split(r"\n  (?=-)", capsys.readouterr().out)  # one block per option
    takes_specs = [block for block in options if "policy spec" in block]  # --policies, --policy, --teacher, ...
    assert takes_specs
    for block in takes_specs:
        words = set(re.split(r"[\s,;:]+", block))
        missing = [name for name in registered() if name not in words]
        assert not missing, f"{command} --help: {block.split()[0]} splits or omits {missing}"


@pytest.mark.parametrize("n", [1, 3, 10, 11, 20, 21, 40])
def test_policy_colours_are_distinct_for_any_number_of_policies(n):
    matplotlib = pytest.importorskip("matplotlib")
    from agents.benchmark import policy_colours

    colours = policy_colours(n)
    assert len(colours) == n
    assert len({matplotlib.colors.to_rgba(c) for c in colours}) == n  # no two policies of a plot share a colour
    if n <= 10:
        assert colours == [f"C{i}" for i in range(n)]  # the default cycle, as before, where it suffices
