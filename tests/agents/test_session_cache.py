"""Reusing each live session's prompt key/value cache: the same decisions as recomputing every prompt."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.evaluation import run_policy  # noqa: E402
from agents.llm import LLMRecommender  # noqa: E402
from agents.prompting import PromptFormat  # noqa: E402

# Users who never leave on their own (only the horizon ends a session): long sessions exercise the cache.
STAY = {"min_rating": -float("inf"), "satisfaction_floor": 0.0}


def _sessions(agent, world, users, steps=9, seed=0, batch=5, env=STAY):
    s = run_policy(agent, world, users, seed=seed, env_settings=env, max_episode_steps=steps, batch_size=batch,
                   keep_records=True)
    return [(r["episode"], r["step"], r["item"], r["record"]) for r in s.records]


@pytest.mark.parametrize("max_session, window", [(None, "sliding"), (3, "sliding"), (3, "block")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_reuse_gives_the_same_sessions(tiny_model, tiny_tokenizer, small_world, max_session, window, temperature):
    users = small_world.test_users[:7].tolist() + small_world.train_users[:3].tolist()
    kw = dict(prompt_format=PromptFormat(max_history=4, max_session=max_session, worked_example=False,
                                         session_window=window), temperature=temperature, batch_size=4)
    plain = LLMRecommender(tiny_model, tiny_tokenizer, session_cache_tokens=0, **kw).bind(small_world)
    fast = LLMRecommender(tiny_model, tiny_tokenizer, **kw).bind(small_world)
    a, b = _sessions(plain, small_world, users), _sessions(fast, small_world, users)
    assert len(a) == len(b) == 9 * len(users)
    assert [x[:3] for x in a] == [x[:3] for x in b]
    assert [x[3].prompt for x in a] == [x[3].prompt for x in b]
    assert [x[3].logprob for x in a] == pytest.approx([x[3].logprob for x in b], abs=1e-4)
    assert plain.stats["prompt_tokens_reused"] < fast.stats["prompt_tokens_reused"]
    if max_session is None:  # append-only: after the first step, all but the newest line and the tail is reused
        assert fast.stats["prompt_tokens_reused"] > 0.7 * fast.stats["prompt_tokens"]


def test_cache_is_bounded_and_emptied_by_reset(tiny_model, tiny_tokenizer, small_world):
    users = small_world.test_users[:8]
    agent = LLMRecommender(tiny_model, tiny_tokenizer, session_cache_tokens=700, prompt_format={"max_history": 4}, batch_size=8).bind(small_world)
    _sessions(agent, small_world, users, steps=5, batch=8)
    assert 0 < agent._sessions.tokens <= 700
    agent.reset(0)
    assert len(agent._sessions) == 0 and agent._sessions.tokens == 0


def test_weight_updates_invalidate_the_cache(tiny_model_factory, tiny_tokenizer, small_world):
    model = tiny_model_factory(5)
    agent = LLMRecommender(model, tiny_tokenizer, prompt_format={"max_history": 4}, batch_size=4).bind(small_world)
    users = small_world.test_users[:4]
    _sessions(agent, small_world, users, steps=3, batch=4)
    assert len(agent._sessions) > 0
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3)  # an optimizer step
    reused = _sessions(agent, small_world, users, steps=3, batch=4)
    fresh = _sessions(LLMRecommender(model, tiny_tokenizer, prompt_format={"max_history": 4}, batch_size=4, session_cache_tokens=0)
                      .bind(small_world), small_world, users, steps=3, batch=4)
    assert [x[:3] for x in reused] == [x[:3] for x in fresh]
    assert [x[3].logprob for x in reused] == pytest.approx([x[3].logprob for x in fresh], abs=1e-4)


def test_unscored_decoding_makes_the_same_picks_in_fewer_passes(tiny_model, tiny_tokenizer, small_world):
    users = small_world.test_users[:6]
    scored = LLMRecommender(tiny_model, tiny_tokenizer, prompt_format={"max_history": 4}).bind(small_world)
    quick = LLMRecommender(tiny_model, tiny_tokenizer, prompt_format={"max_history": 4}, score_completions=False).bind(small_world)
    a, b = _sessions(scored, small_world, users, steps=4), _sessions(quick, small_world, users, steps=4)
    assert [x[:3] for x in a] == [x[:3] for x in b]
    assert all(np.isfinite(x[3].logprob) for x in a) and all(np.isnan(x[3].logprob) for x in b)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_session_cache_tokens(tiny_model, tiny_tokenizer, bad):
    with pytest.raises(ValueError, match="session_cache_tokens"):
        LLMRecommender(tiny_model, tiny_tokenizer, session_cache_tokens=bad)


def test_block_window_reuses_more_than_sliding(tiny_model, tiny_tokenizer, small_world):
    users = small_world.test_users[:6]
    share = {}
    for window in ("sliding", "block"):
        agent = LLMRecommender(tiny_model, tiny_tokenizer, prompt_format=PromptFormat(max_history=4, max_session=2, session_window=window),
                               batch_size=6).bind(small_world)
        _sessions(agent, small_world, users, steps=9, batch=6)
        share[window] = agent.stats["prompt_tokens_reused"] / agent.stats["prompt_tokens"]
    assert share["block"] > share["sliding"]
    assert agent.prompt_format.to_dict()["session_window"] == "block"
