"""The LLM recommender on a tiny offline model: valid actions, masking, faithful records, seeding, errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.llm import DecodeRecord, LLMRecommender  # noqa: E402
from agents.prompting import PromptFormat, build_completion, encode_completion, item_completion  # noqa: E402
from ulrec_env import ULRecVectorEnv, World  # noqa: E402


def make_agent(model, tokenizer, world, **kw):
    return LLMRecommender(model, tokenizer, **kw).bind(world)


def first_obs(world, n=5, seed=0):
    env = ULRecVectorEnv(num_envs=n, world=world, autoreset_mode="disabled")
    obs, _ = env.reset(seed=seed)
    return env, obs


def test_constrained_actions_are_catalog_items_and_records_match(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, batch_size=3)
    env, obs = first_obs(small_world, n=5)
    for _ in range(3):
        active = ~env.done
        sub = {k: v[active] for k, v in obs.items()}
        items, records = agent.decode_batch(sub)
        assert items.dtype == np.int64 and items.shape == (int(active.sum()),)
        assert len(records) == len(items)
        for item, rec, prompt in zip(items, records, agent.prompts(sub)):
            assert isinstance(rec, DecodeRecord)
            assert 0 <= item < small_world.n_items and rec.item == item
            assert rec.title == small_world.titles[item]
            assert rec.completion == build_completion(rec.title)
            assert rec.prompt == prompt
            assert rec.n_tokens == len(encode_completion(tiny_tokenizer, rec.completion))
            assert rec.grounding == "constrained"
            # the log-probability training recomputes (prompt and completion tokenized separately)
            assert rec.logprob == pytest.approx(agent.completion_logprob(rec.prompt, rec.completion), abs=1e-4)
        actions = np.zeros(env.num_envs, np.int64)
        actions[active] = items
        obs, *_ = env.step(actions)
        if env.done.all():
            break
    assert agent.invalid_actions == 0


def test_genres_title_agent_decodes_genres_then_a_catalog_title(tiny_model, tiny_tokenizer, small_world):
    fmt = PromptFormat(completion="genres-title")
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, prompt_format=fmt, batch_size=3)
    _, obs = first_obs(small_world, n=5)
    items, records = agent.decode_batch(obs)
    for item, rec in zip(items, records):
        assert rec.completion == item_completion(small_world, item, fmt)
        assert rec.completion.split(": ", 1)[0] == "/".join(small_world.genres[item])
        assert rec.n_tokens == len(encode_completion(tiny_tokenizer, rec.completion))
        assert rec.logprob == pytest.approx(agent.completion_logprob(rec.prompt, rec.completion), abs=1e-4)
    # same prompts as the title-only agent; the first token decoded is no longer a title's
    plain = make_agent(tiny_model, tiny_tokenizer, small_world, batch_size=3)
    assert plain.prompts(obs) == agent.prompts(obs)


def test_batched_greedy_equals_one_by_one(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, batch_size=8)
    _, obs = first_obs(small_world, n=6, seed=1)
    # give the sessions different lengths so the padding differs per row
    obs["recommended"][1, :2] = [5, 6]
    obs["rewards"][1, :2] = [4.0, 3.5]
    obs["recommended"][4, :1] = [9]
    together, rec_t = agent.decode_batch(obs)
    alone = [agent.act({k: v[i] for k, v in obs.items()}) for i in range(6)]
    assert together.tolist() == alone
    single = agent.decode_batch({k: v[:1] for k, v in obs.items()})[1][0]
    assert single.logprob == pytest.approx(rec_t[0].logprob, abs=1e-4)


def test_mask_recommended_excludes_shown_items(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, temperature=1.0, seed=3)
    _, obs = first_obs(small_world, n=4)
    keep = np.array([7, 42, 99])
    masked = np.ones((4, small_world.n_items), bool)
    masked[:, keep] = False
    for _ in range(3):
        records = agent.decode(agent.prompts(obs), masked)
        assert {r.item for r in records} <= set(keep.tolist())
    # through the observation: the greedy pick, once shown, is never picked again
    greedy = make_agent(tiny_model, tiny_tokenizer, small_world)
    first, _ = greedy.decode_batch(obs)
    obs["recommended"][:, 0] = first
    obs["rewards"][:, 0] = 4.0
    second, _ = greedy.decode_batch(obs)
    assert (second != first).all()
    unmasked = make_agent(tiny_model, tiny_tokenizer, small_world, mask_recommended=False)
    assert unmasked.decode_batch(obs)[0].shape == (4,)


def test_no_repeats_within_a_session(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, prompt_format={"max_history": 3, "max_session": 2})
    env = ULRecVectorEnv(num_envs=2, world=small_world, autoreset_mode="disabled", min_rating=0.0, max_episode_steps=6)
    obs, _ = env.reset(seed=0)
    seen = [[], []]
    for _ in range(6):
        active = ~env.done
        if not active.any():
            break
        items, _ = agent.decode_batch({k: v[active] for k, v in obs.items()})
        actions = np.zeros(2, np.int64)
        actions[active] = items
        for r in np.flatnonzero(active):
            seen[r].append(int(actions[r]))
        obs, _, _, _, info = env.step(actions)
        assert "repeat" not in [x for x in info["leave_reason"] if x is not None]
    for s in seen:
        assert len(s) == len(set(s))


def test_all_items_shown_falls_back_without_failing(tiny_model, tiny_tokenizer):
    world = World(
        name="six",
        titles=tuple(f"Item {i}" for i in range(6)),
        genres=((),) * 6,
        ratings=np.full((2, 6), 4.0, np.float32),
        distance=np.abs(np.arange(6.0)[:, None] - np.arange(6.0)[None, :]) * 10,
        histories=(np.array([0]), np.array([1])),
        train_users=np.array([0]),
        test_users=np.array([1]),
    )
    agent = make_agent(tiny_model, tiny_tokenizer, world)
    env, obs = first_obs(world, n=1)
    obs["recommended"][0, :6] = np.arange(6)
    items, _ = agent.decode_batch(obs)
    assert 0 <= items[0] < 6 and agent.stats["mask_exhausted"] == 1


def test_sampling_is_seeded(tiny_model_factory, tiny_tokenizer, small_world):
    model = tiny_model_factory(1)
    _, obs = first_obs(small_world, n=8)
    a = make_agent(model, tiny_tokenizer, small_world, temperature=1.5, seed=11)
    b = make_agent(model, tiny_tokenizer, small_world, temperature=1.5, seed=11)
    ia, ra = a.decode_batch(obs)
    ib, rb = b.decode_batch(obs)
    assert ia.tolist() == ib.tolist()
    assert [r.logprob for r in ra] == [r.logprob for r in rb]
    a.reset(11)
    assert a.decode_batch(obs)[0].tolist() == ia.tolist()
    others = [make_agent(model, tiny_tokenizer, small_world, temperature=1.5, seed=s).decode_batch(obs)[0].tolist() for s in (1, 2)]
    assert any(o != ia.tolist() for o in others)
    greedy = make_agent(model, tiny_tokenizer, small_world).decode_batch(obs)[0]
    nucleus = make_agent(model, tiny_tokenizer, small_world, temperature=1.0, top_p=1e-9, seed=5).decode_batch(obs)[0]
    assert nucleus.tolist() == greedy.tolist()


def test_free_grounding_maps_every_action(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, grounding="free", max_new_tokens=6)
    _, obs = first_obs(small_world, n=4)
    items, records = agent.decode_batch(obs)
    assert ((items >= 0) & (items < small_world.n_items)).all()
    assert sum(agent.grounding_stats.values()) == 4
    for rec in records:
        assert rec.grounding in ("exact", "normalized", "fuzzy", "embedding", "failed")
        assert 1 <= rec.n_tokens <= 6
        assert rec.logprob == pytest.approx(agent.completion_logprob(rec.prompt, rec.completion), abs=1e-3)


def test_free_grounding_of_known_texts(tiny_model, tiny_tokenizer, small_world):
    agent = make_agent(tiny_model, tiny_tokenizer, small_world, grounding="free")
    g = agent.grounder
    t = small_world.titles[10]
    assert (g.ground(t).item, g.ground(t).method) == (10, "exact")
    assert g.ground(t.lower() + "!").method == "normalized"
    assert g.ground(t[:-1]).item == 10
    # anything else lands somewhere through the model's embedding space
    r = g.ground("something else entirely")
    assert r.method == "embedding" and 0 <= r.item < small_world.n_items


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"grounding": "fuzzy"}, "grounding"),
        ({"batch_size": 0}, "batch_size"),
        ({"prompt_format": {"max_history": -1}}, "max_history"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_arguments(tiny_model, tiny_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLMRecommender(tiny_model, tiny_tokenizer, **kwargs)


def test_unbound_agent_raises(tiny_model, tiny_tokenizer, small_world):
    agent = LLMRecommender(tiny_model, tiny_tokenizer)
    _, obs = first_obs(small_world, n=1)
    with pytest.raises(RuntimeError, match="bind"):
        agent.decode_batch(obs)


def test_memory_bounds_do_not_change_results(tiny_model, tiny_tokenizer, small_world):
    _, obs = first_obs(small_world, n=6, seed=2)
    obs["recommended"][2, :3] = [1, 2, 3]
    obs["rewards"][2, :3] = 4.0
    a = make_agent(tiny_model, tiny_tokenizer, small_world, prefill_chunk=None, max_batch_tokens=None)
    b = make_agent(tiny_model, tiny_tokenizer, small_world, prefill_chunk=7, max_batch_tokens=600)
    ia, ra = a.decode_batch(obs)
    ib, rb = b.decode_batch(obs)
    assert ia.tolist() == ib.tolist()
    assert [r.logprob for r in ra] == pytest.approx([r.logprob for r in rb], abs=1e-4)
    assert a.stats["passes"] == 1 and b.stats["passes"] > 1
    with pytest.raises(ValueError, match="prefill_chunk"):
        LLMRecommender(tiny_model, tiny_tokenizer, prefill_chunk=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        LLMRecommender(tiny_model, tiny_tokenizer, max_batch_tokens=-5)


def test_prefix_cache_follows_weight_updates(tiny_model_factory, tiny_tokenizer, small_world):
    model = tiny_model_factory(4)
    agent = make_agent(model, tiny_tokenizer, small_world)
    _, obs = first_obs(small_world, n=2)
    before = agent.decode_batch(obs)[1]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # an in-place update, as an optimizer step makes
    after = agent.decode_batch(obs)[1]
    for rec in after:
        assert rec.logprob == pytest.approx(agent.completion_logprob(rec.prompt, rec.completion), abs=1e-4)
    assert [r.logprob for r in before] != [r.logprob for r in after]


def test_the_llm_honours_the_policy_interface(tiny_model, tiny_tokenizer, small_world):
    """act_batch returns the ids the base class promises; decode_batch the same ids with one record each."""
    agent = make_agent(tiny_model, tiny_tokenizer, small_world)
    _, obs = first_obs(small_world, n=3)
    actions = agent.act_batch(obs)
    assert isinstance(actions, np.ndarray) and actions.dtype == np.int64 and actions.shape == (3,)
    again, records = agent.decode_batch(obs)
    assert again.tolist() == actions.tolist() and [r.item for r in records] == actions.tolist()
    assert agent.act({k: v[0] for k, v in obs.items()}) == int(actions[0])
    with pytest.raises(RuntimeError, match="not bound to a world"):
        LLMRecommender(tiny_model, tiny_tokenizer).act_batch(obs)
