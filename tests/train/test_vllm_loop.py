"""`ulrec loop --engine vllm`: rollouts and evaluations on one vLLM engine, each new adapter loaded as a LoRA.

Slow, and skipped unless ``vllm`` is importable (CI runs it in the venv of ``.ci/setup-vllm``, with
``tests/agents/test_vllm_engine.py``, whose engine it shares).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

try:
    import vllm  # noqa: F401
except ImportError:  # pragma: no cover - the main CI venv
    pytest.skip("vllm is not importable; run these tests in the venv of `bash .ci/setup-vllm`", allow_module_level=True)

from agents.vllm_engine import ENGINE_STARTS  # noqa: E402
from train.cli import main  # noqa: E402


def test_loop_on_vllm_starts_one_engine_and_loads_each_adapter(tmp_path, capsys):
    out = tmp_path / "run"
    before = len(ENGINE_STARTS)
    assert main(["loop", "--engine", "vllm", "--dtype", "float32", "--world", "synthetic:3", "--iterations", "2",
                 "--episodes", "8", "--eval-episodes", "4", "--max-episode-steps", "4", "--max-steps", "1",
                 "--train-batch-size", "4", "--gen-batch-size", "8", "--min-positives", "1", "--references", "greedy",
                 "--out", str(out), "--no-progress"]) == 0
    assert len(ENGINE_STARTS) - before <= 1  # none when the engine tests ran first in this process
    metrics = json.loads((out / "metrics.json").read_text())
    policies = [(e["iteration"], e["policy"]) for e in metrics["evals"]]
    assert policies == [(0, "base"), (1, "ulrec-p"), (1, "ulrec"), (2, "ulrec")]
    assert all(e["engine"] == "vllm" for e in metrics["evals"])
    for k in (1, 2):
        assert json.loads((out / f"iter{k}" / "rollout" / "summary.json").read_text())["engine"] == "vllm"
    assert json.loads((out / "settings.json").read_text())["engine"] == "vllm"
