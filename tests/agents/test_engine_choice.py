"""Choosing the LLM's decoding engine without vLLM installed: validation, the install hint, the options, the
trie walk the vLLM logits processor runs, and that nothing imports vllm before an engine is made.

The tests that run vLLM are in ``test_vllm_engine.py`` (slow, in the venv of ``.ci/setup-vllm``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from agents.trie import TitleTrie
from agents.vllm_engine import (
    ENGINES,
    OPTIONS_ENV,
    TitleWalk,
    adapter_rank,
    engine_options,
    load_trie_file,
    require_vllm,
    trie_file,
)

STOP = 99


def test_an_unknown_engine_is_named_before_anything_loads():
    from agents.llm import LLMRecommender

    with pytest.raises(ValueError, match=r"`engine` must be one of \('transformers', 'vllm'\), got 'tgi'"):
        LLMRecommender.from_pretrained("no/such/model", engine="tgi")
    with pytest.raises(ValueError, match="engine_options.*engine='vllm'"):
        LLMRecommender.from_pretrained("no/such/model", engine_options={"tensor_parallel_size": 2})


def test_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"ulrec\[vllm\].*\.ci/setup-vllm"):
        require_vllm()


def test_engine_options_layer_the_environment_and_the_call(monkeypatch):
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    assert engine_options()["enforce_eager"] is True
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"tensor_parallel_size": 2, "enforce_eager": False}))
    opts = engine_options({"max_model_len": 1024})
    assert opts["tensor_parallel_size"] == 2 and opts["enforce_eager"] is False and opts["max_model_len"] == 1024
    monkeypatch.setenv(OPTIONS_ENV, "tensor_parallel_size=2")
    with pytest.raises(ValueError, match=OPTIONS_ENV):
        engine_options()
    monkeypatch.setenv(OPTIONS_ENV, "[2]")
    with pytest.raises(ValueError, match="JSON object"):
        engine_options()


def test_adapter_rank_rounds_up_to_a_rank_vllm_takes(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "rank_pattern": {"q_proj": 4}}))
    assert adapter_rank(tmp_path) == 16
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 40}}))
    assert adapter_rank(tmp_path) == 64


def test_loop_settings_and_commands_take_the_engine():
    from train.cli import build_parser
    from train.loop import LoopSettings

    assert LoopSettings().engine == "transformers" and ENGINES == ("transformers", "vllm")
    assert LoopSettings(engine="vllm").to_dict()["engine"] == "vllm"
    with pytest.raises(ValueError, match="`engine` must be one of transformers, vllm, got 'tgi'"):
        LoopSettings(engine="tgi")
    parser = build_parser()
    for argv in (["bench", "--engine", "vllm"], ["rollout", "--engine", "vllm", "--out", "x"]):
        assert parser.parse_args(argv).engine == "vllm"
    assert parser.parse_args(["bench"]).engine == "transformers"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--engine", "tgi"])


def _walk(trie_path, out, masked=(), early=False):
    return TitleWalk.of_request({"ulrec_trie": trie_path, "ulrec_stop": STOP, "ulrec_masked": list(masked),
                                 "ulrec_early": early}, out)


@pytest.fixture
def trie_path(tmp_path):
    # items: 0 = [1, 2, 3], 1 = [1, 2, 4], 2 = [1, 5], 3 = [6]
    return trie_file(TitleTrie([[1, 2, 3], [1, 2, 4], [1, 5], [6]]), tmp_path)


def test_the_trie_walk_allows_exactly_the_title_continuations(trie_path):
    out: list[int] = []
    walk = _walk(trie_path, out)
    assert sorted(walk.allowed()) == [1, 6]
    out.append(1)
    assert sorted(walk.allowed()) == [2, 5]
    out.append(2)
    assert sorted(walk.allowed()) == [3, 4]
    out.append(4)
    assert walk.allowed() == [STOP]  # a complete title: only the stop token
    out.append(STOP)
    assert walk.allowed() == [STOP]
    assert TitleWalk.of_request({"other": 1}, []) is None and TitleWalk.of_request(None, []) is None


def test_the_trie_walk_masks_items_and_stops_early_once_the_item_is_determined(trie_path):
    out: list[int] = []
    walk = _walk(trie_path, out, masked=[0, 3])
    assert walk.allowed() == [1]
    out.extend([1, 2])
    assert walk.allowed() == [4]
    out2: list[int] = []
    early = _walk(trie_path, out2, masked=[0, 3], early=True)
    assert early.allowed() == [1]
    out2.extend([1, 2])
    assert early.allowed() == [STOP]  # only item 1 is left below [1, 2]
    everything = _walk(trie_path, [], masked=[0, 1, 2, 3])
    assert everything.allowed() == []  # the agent sends no mask when nothing is left (repeats allowed)


def test_a_trie_file_is_named_by_its_content(tmp_path):
    trie = TitleTrie([[1, 2], [3]])
    path = trie_file(trie, tmp_path)
    assert trie_file(trie, tmp_path) == path
    loaded, edges = load_trie_file(path)
    assert loaded.sequences == trie.sequences and set(edges[0]) == {1, 3}
    forged = tmp_path / "trie-000000000000000000000000.json"
    forged.write_text("[[1]]")
    with pytest.raises(ValueError, match="does not match its name"):
        load_trie_file(str(forged))


def test_nothing_imports_vllm_or_torch_before_an_engine_is_made():
    code = ("import sys, train.cli, train.loop, agents.vllm_engine, agents.registry; "
            "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_walk_reads_masks_as_numpy_ids(trie_path):
    walk = TitleWalk.of_request({"ulrec_trie": trie_path, "ulrec_stop": STOP, "ulrec_masked": np.array([3])}, [])
    assert walk.allowed() == [1]


def test_free_grounding_on_vllm_is_refused_before_an_engine_starts():
    from agents.llm import LLMRecommender

    with pytest.raises(ValueError, match="`grounding` must be 'constrained' with engine='vllm'"):
        LLMRecommender.from_pretrained("no/such/model", engine="vllm", grounding="free")


def test_token_groups_keep_each_call_within_the_budget():
    from agents.vllm_engine import token_groups

    assert token_groups([100, 200, 300], None) == [(0, 3)]
    assert token_groups([], 500) == []
    assert token_groups([100, 200, 300, 50], 300) == [(0, 2), (2, 3), (3, 4)]
    assert token_groups([700, 10], 300) == [(0, 1), (1, 2)]  # a longer prompt goes alone
    groups = token_groups([250] * 64, 16384)
    assert groups == [(0, 64)]
    groups = token_groups([250] * 200, 16384)
    assert all(sum([250] * (hi - lo)) <= 16384 for lo, hi in groups) and groups[-1][1] == 200
