"""Policies by spec: registered names, package.module:Class, path/file.py:Class with options, entry points, and
every command that takes a policy."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from agents import registry
from agents.baselines import GreedyPolicy
from agents.benchmark import make_policy
from agents.policy import Policy
from train.cli import main

PLUGIN = textwrap.dedent('''
    import numpy as np
    from agents.policy import Policy

    class LowestUnseen(Policy):
        """Recommends the lowest item id not yet shown in the session (plus an offset)."""

        def __init__(self, offset=0, label="x"):
            super().__init__()
            self.offset, self.label = offset, label

        def _act_batch(self, obs):
            out = []
            for rec in np.asarray(obs["recommended"]):
                shown = set(int(i) for i in rec if i >= 0)
                item = self.offset
                while item in shown:
                    item += 1
                out.append(item % self.world.n_items)
            return np.asarray(out)

    class NotAPolicy:
        pass
''')


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_policies.py"
    path.write_text(PLUGIN)
    return path


def test_file_spec_with_options(plugin_file, small_world):
    p = registry.make(f"{plugin_file}:LowestUnseen")
    assert type(p).__name__ == "LowestUnseen" and p.name == "LowestUnseen" and p.offset == 0
    q = registry.make(f"{plugin_file}:LowestUnseen:offset=2:label=soft")
    assert (q.offset, q.label, q.name) == (2, "soft", "LowestUnseen:offset=2:label=soft")
    q.bind(small_world)
    obs = {"user": np.array([0]), "recommended": np.array([[2, -1]]), "step": np.array([[1]])}
    assert q.act_batch(obs).tolist() == [3]


def test_module_spec_and_registered_names(plugin_file):
    assert isinstance(registry.make("agents.baselines:GreedyPolicy"), GreedyPolicy)
    sys.path.insert(0, str(plugin_file.parent))
    try:
        registry.register("lowest-unseen", "my_policies:LowestUnseen", kwargs={"offset": 1}, override=True)
        p = registry.make("lowest-unseen")
        assert p.name == "lowest-unseen" and p.offset == 1
        assert registry.make("lowest-unseen:offset=4").offset == 4  # spec options over registered defaults
        assert "lowest-unseen" in registry.registered()
        with pytest.raises(ValueError, match="already registered"):
            registry.register("lowest-unseen", "my_policies:LowestUnseen")
    finally:
        sys.path.remove(str(plugin_file.parent))
        registry._REGISTRY.pop("lowest-unseen", None)
    # the built-ins take the command's context; spec options win over it
    assert make_policy("genre-cycle", window=1).window == 1
    assert make_policy("genre-cycle:window=3", window=1).window == 3


def test_entry_point_plugins(tmp_path, monkeypatch, plugin_file):
    dist = tmp_path / "ulrec_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ulrec-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ulrec.policies]\nlowest = my_policies:LowestUnseen\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "lowest" in registry.registered()
    assert type(registry.make("lowest:offset=5")).__name__ == "LowestUnseen"


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown policy 'nope'; registered: random, popular, greedy"),
    ("missing.py:X", "policy file missing.py not found"),
    ("{dir}/my_policies.py", "names a file but no class"),
    ("{dir}/my_policies.py:Nothing", "has no 'Nothing'; its Policy classes: LowestUnseen"),
    ("{dir}/my_policies.py:NotAPolicy", "made a NotAPolicy, not an agents.Policy"),
    ("{dir}/my_policies.py:LowestUnseen:speed=3", "constructing it with speed=3 failed"),
    ("{dir}/my_policies.py:LowestUnseen:offset", "option 'offset' is not key=value"),
    ("no_such_module_xyz:Policy", "cannot import module 'no_such_module_xyz'"),
    ("llm:adapter=a:colour=red", "unknown llm option"),
])
def test_bad_specs_say_what_to_write(plugin_file, spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.make(spec.format(dir=plugin_file.parent))


def test_llm_row_names():
    assert registry._llm_options({"ulrec": "runs/x/iter1/ulrec"}, "s") == {"name": "ulrec", "adapter": "runs/x/iter1/ulrec"}
    assert registry._llm_options({"adapter": "a", "temperature": 0.5}, "s") == {"adapter": "a", "temperature": 0.5}


def test_cli_bench_and_rollout_take_a_plugin(plugin_file, tmp_path, capsys):
    js = tmp_path / "bench.json"
    assert main(["bench", "--world", "synthetic:3", "--policies", f"{plugin_file}:LowestUnseen:offset=1,greedy",
                 "--episodes", "4", "--seeds", "1", "--max-episode-steps", "5", "--no-progress",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "LowestUnseen:offset=1" in out and "greedy" in out
    assert main(["bench", "--policies", "nope", "--no-progress"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    helptext = capsys.readouterr().out
    assert all(name in helptext for name in registry.registered())


def test_loop_teacher_and_references_take_specs(plugin_file):
    from train.loop import LoopSettings

    s = LoopSettings(teacher=f"{plugin_file}:LowestUnseen", references=("greedy", f"{plugin_file}:LowestUnseen"))
    assert s.teacher.endswith(":LowestUnseen")
    with pytest.raises(ValueError, match="other than the LLM"):
        LoopSettings(teacher="llm")
    with pytest.raises(ValueError, match="unknown policy 'mystery'"):
        LoopSettings(references=("mystery",))
    assert isinstance(make_policy(f"{plugin_file}:LowestUnseen"), Policy)


def test_a_resumed_run_folder_imports_no_code_by_itself(plugin_file, tmp_path):
    import json

    from train.cli import settings_for_command, parse_command
    from train.loop import LoopSettings

    out = tmp_path / "run"
    out.mkdir()
    spec = f"{plugin_file}:LowestUnseen"
    (out / "settings.json").write_text(json.dumps(LoopSettings(teacher=spec).to_dict()))
    with pytest.raises(ValueError, match="names code to run as its teacher.*Type it again to confirm: --teacher"):
        settings_for_command(parse_command(["loop", "--out", str(out), "--resume"]))
    assert settings_for_command(parse_command(["loop", "--out", str(out), "--resume", "--teacher", spec])).teacher == spec
