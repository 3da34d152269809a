"""Recommender policies for ULRec-v0: baselines and the LLM recommender."""

from agents.baselines import GreedyPolicy, MMRPolicy, PopularPolicy, RandomPolicy
from agents.oracle import OraclePolicy
from agents.policy import Policy

__all__ = ["Policy", "RandomPolicy", "PopularPolicy", "GreedyPolicy", "MMRPolicy", "OraclePolicy",
           "LLMRecommender", "DecodeRecord", "load_model_and_tokenizer", "resolve_model_path"]

# LLM names load lazily: `import agents` must not import torch (the baselines stay torch-free).
_LLM_NAMES = {
    "LLMRecommender": "agents.llm",
    "DecodeRecord": "agents.llm",
    "load_model_and_tokenizer": "agents.models",
    "resolve_model_path": "agents.models",
}


def __getattr__(name: str):
    if name in _LLM_NAMES:
        import importlib

        return getattr(importlib.import_module(_LLM_NAMES[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
