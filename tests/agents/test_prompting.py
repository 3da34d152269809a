import numpy as np
import pytest

from agents.prompting import (
    COMPLETION_TERMINATOR,
    INSTRUCTION,
    PromptFormat,
    build_completion,
    build_messages,
    build_prompt,
    encode_completion,
    encode_prompt,
    format_item,
    genres_part,
    item_completion,
    parse_completion,
)


def test_plain_prompt_shows_history_session_and_instruction(small_world):
    w = small_world
    hist = np.array([3, 4, 5, -1, -1])
    prompt = build_prompt(w, hist, [7, 8, -1], [4.25, 3.0, 0.0])
    assert prompt.startswith(INSTRUCTION)
    for i in (3, 4, 5):
        assert format_item(w, i) in prompt
    assert f"1. {format_item(w, 7)}: continued, rating 4.2" in prompt
    assert f"2. {format_item(w, 8)}: continued, rating 3.0" in prompt
    assert "\n3. " not in prompt.split("Session:")[1]
    assert prompt.endswith("Answer: ")
    # genres are shown with the titles
    assert all(g in prompt for g in w.genres[3])


def test_max_history_and_max_session(small_world):
    w = small_world
    prompt = build_prompt(w, [0, 1, 2, 3], [5, 6, 7], [4, 4, 4], prompt_format=PromptFormat(max_history=2, max_session=1))
    assert w.titles[0] not in prompt.split("Session:")[0] and w.titles[1] not in prompt.split("Session:")[0]
    assert format_item(w, 2) in prompt and format_item(w, 3) in prompt
    assert w.titles[5] not in prompt and "3. " + format_item(w, 7) in prompt
    assert "(none)" in build_prompt(w, [], prompt_format={"max_history": 5})


def test_chat_template_is_used_when_present(small_world, tiny_tokenizer):
    prompt = build_prompt(small_world, [1, 2], tokenizer=tiny_tokenizer)
    assert prompt.startswith("<|im_start|>system\n" + INSTRUCTION)
    assert prompt.endswith("<|im_start|>assistant\n")
    msgs = build_messages(small_world, [1, 2])
    assert [m["role"] for m in msgs] == ["system", "user"]


def test_prompt_is_pure(small_world, tiny_tokenizer):
    a = build_prompt(small_world, [1, 2], [3], [4.0], tokenizer=tiny_tokenizer)
    b = build_prompt(small_world, np.array([1, 2]), np.array([3, -1]), np.array([4.0, 0.0], np.float32), tokenizer=tiny_tokenizer)
    assert a == b


def test_completion_roundtrip_and_tokens(small_world, tiny_tokenizer):
    title = small_world.titles[0]
    comp = build_completion(title)
    assert comp == title + COMPLETION_TERMINATOR
    assert parse_completion(comp) == title
    ids = encode_completion(tiny_tokenizer, comp)
    assert tiny_tokenizer.decode(ids) == comp
    prompt = build_prompt(small_world, [1], tokenizer=tiny_tokenizer)
    assert encode_prompt(tiny_tokenizer, prompt) == tiny_tokenizer(prompt).input_ids


@pytest.mark.parametrize("title", ["", "   ", "a\nb", None])
def test_bad_completion_titles(title):
    with pytest.raises(ValueError, match="title"):
        build_completion(title)


def test_bad_prompt_arguments(small_world):
    with pytest.raises(ValueError, match="shown_rewards"):
        build_prompt(small_world, [1], [2, 3], [4.0])
    with pytest.raises(ValueError, match="history_ids"):
        build_prompt(small_world, [small_world.n_items])
    with pytest.raises(ValueError, match="max_history"):
        build_prompt(small_world, [1], prompt_format={"max_history": -1})
    with pytest.raises(ValueError, match="max_session"):
        build_prompt(small_world, [1], prompt_format=PromptFormat(max_session=-2))


def test_block_session_window_drops_lines_a_block_at_a_time(default_world):
    from agents.prompting import build_messages

    shown = list(range(10, 19))
    rewards = [4.0] * len(shown)

    def steps_shown(n, window):
        text = build_messages(default_world, [1, 2], shown[:n], rewards[:n], PromptFormat(max_session=3, session_window=window))[1]["content"]
        return [int(line.split(".")[0]) for line in text.splitlines() if line[:1].isdigit()]

    assert [steps_shown(n, "block") for n in (2, 3, 5, 6, 8, 9)] == [
        [1, 2], [1, 2, 3], [1, 2, 3, 4, 5], [4, 5, 6], [4, 5, 6, 7, 8], [7, 8, 9]]
    assert steps_shown(5, "sliding") == [3, 4, 5]
    assert steps_shown(9, "block")[-1] == 9 and all(3 <= len(steps_shown(n, "block")) <= 5 for n in range(3, 10))
    # within a block each prompt's session part extends the previous one's
    for n in (4, 5, 7, 8):
        prev = build_messages(default_world, [1], shown[: n - 1], rewards[: n - 1], PromptFormat(max_session=3, session_window="block"))
        cur = build_messages(default_world, [1], shown[:n], rewards[:n], PromptFormat(max_session=3, session_window="block"))
        assert cur[1]["content"].startswith(prev[1]["content"].removesuffix("Next item?"))
    with pytest.raises(ValueError, match="session_window"):
        build_messages(default_world, [1], PromptFormat(session_window="tumbling"))


def test_prompt_format_round_trip_and_validation():
    default = PromptFormat()
    assert default.to_dict() == {"max_history": 15, "max_session": None, "worked_example": True}
    block = PromptFormat(max_history=6, max_session=4, worked_example=False, session_window="block")
    assert PromptFormat.from_dict(block.to_dict()) == block
    assert PromptFormat.from_dict(None) == PromptFormat.from_dict({}) == default == PromptFormat.coerce(None)
    assert PromptFormat.coerce({"max_history": 6}) == PromptFormat(max_history=6)
    with pytest.raises(ValueError, match="unknown prompt option"):
        PromptFormat.from_dict({"max_histroy": 6})
    for bad, match in (({"max_history": True}, "max_history"), ({"max_session": -1}, "max_session"),
                       ({"worked_example": "yes"}, "worked_example"), ({"session_window": "x"}, "session_window")):
        with pytest.raises(ValueError, match=match):
            PromptFormat(**bad)
    with pytest.raises(TypeError, match="prompt_format"):
        PromptFormat.coerce(6)


def test_genres_title_completions_write_the_genres_first(small_world, tiny_tokenizer):
    w = small_world
    fmt = PromptFormat(completion="genres-title")
    item = next(i for i in range(w.n_items) if w.genres[i])
    comp = item_completion(w, item, fmt)
    assert comp == "/".join(w.genres[item]) + ": " + w.titles[item] + COMPLETION_TERMINATOR
    assert parse_completion(comp, fmt) == w.titles[item]
    # the default style is the title alone, as before the option
    assert item_completion(w, item) == build_completion(w.titles[item]) == item_completion(w, item, {"completion": "title"})
    # the prompt is the same text in both styles; only the completion differs
    assert build_prompt(w, [1, 2], [3], [4.0], tiny_tokenizer, fmt) == build_prompt(w, [1, 2], [3], [4.0], tiny_tokenizer)
    # every catalog item still has its own completion, so the agent's trie can tell them apart
    assert len({item_completion(w, i, fmt) for i in range(w.n_items)}) == w.n_items


def test_genres_part_is_the_genres_and_a_token_prefix_of_the_completion(small_world, tiny_tokenizer):
    w = small_world
    fmt = PromptFormat(completion="genres-title")
    for item in range(w.n_items):
        comp = item_completion(w, item, fmt)
        part = genres_part(comp)
        if w.genres[item]:
            assert part == "/".join(w.genres[item]) + ":"
            # the KTO term scores exactly the completion's first tokens (``--kto-scores genres``)
            ids = encode_completion(tiny_tokenizer, comp)
            head = encode_completion(tiny_tokenizer, part)
            assert 0 < len(head) < len(ids) and ids[: len(head)] == head
        else:
            assert part == comp
    with pytest.raises(ValueError, match="no genres before"):
        genres_part(": Moon Base\n")
    with pytest.raises(ValueError, match="`completion` must be a non-empty string"):
        genres_part("")


def test_completion_style_is_recorded_only_when_not_the_default():
    assert "completion" not in PromptFormat().to_dict()
    d = PromptFormat(completion="genres-title").to_dict()
    assert d["completion"] == "genres-title"
    assert PromptFormat.from_dict(d) == PromptFormat(completion="genres-title")
    with pytest.raises(ValueError, match="`completion` must be one of"):
        PromptFormat(completion="genres")
