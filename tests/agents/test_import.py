"""`import agents` must resolve to this repository (PyPI's openai-agents also installs a top-level `agents`)."""

import subprocess
import sys
from pathlib import Path

import agents

REPO = Path(__file__).resolve().parents[2]


def test_agents_is_this_repos_package():
    assert Path(agents.__file__).resolve().parent == REPO / "agents"


def test_import_agents_does_not_import_torch():
    code = "import sys, agents, agents.policy; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_llm_names_are_lazy_attributes():
    import agents.llm
    import agents.models

    assert agents.LLMRecommender is agents.llm.LLMRecommender
    assert agents.load_model_and_tokenizer is agents.models.load_model_and_tokenizer
    try:
        agents.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:  # pragma: no cover
        raise AssertionError("missing attribute did not raise")
