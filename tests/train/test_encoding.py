"""Separate tokenization of prompt and completion, and the left-side prompt cut."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from train.encoding import encode_examples, encode_pair


def test_prompt_and_completion_tokenized_separately(tiny_tokenizer, default_world):
    title = default_world.titles[5]
    p, c, cut = encode_pair(tiny_tokenizer, "History: x. Recommended:", " " + title)
    assert p == tiny_tokenizer("History: x. Recommended:")["input_ids"]
    assert c == tiny_tokenizer(" " + title, add_special_tokens=False)["input_ids"]
    assert not cut and tiny_tokenizer.eos_token_id not in c


def test_long_prompts_cut_from_the_left_and_counted(tiny_tokenizer, default_world):
    history = ", ".join(default_world.titles[:40])
    examples = [
        {"prompt": f"History: {history}. Recommended:", "completion": " " + default_world.titles[50], "label": True},
        {"prompt": "History: a. Recommended:", "completion": " " + default_world.titles[51], "label": False},
    ]
    full = tiny_tokenizer(examples[0]["prompt"])["input_ids"]
    rows, report = encode_examples(examples, tiny_tokenizer, max_length=40)
    assert report.n_truncated == 1 and report.n_examples == 2 and report.max_prompt_tokens == len(full)
    r = rows[0]
    assert r["truncated"] and len(r["prompt_ids"]) + len(r["completion_ids"]) == 40
    assert r["prompt_ids"] == full[-len(r["prompt_ids"]) :]  # the end of the prompt (latest history) is kept
    assert r["completion_ids"] == tiny_tokenizer(examples[0]["completion"], add_special_tokens=False)["input_ids"]
    assert not rows[1]["truncated"]


def test_completion_too_long_or_empty_raises(tiny_tokenizer, default_world):
    with pytest.raises(ValueError, match="max_length"):
        encode_pair(tiny_tokenizer, "p", " " + default_world.titles[0] * 5, max_length=3)
    with pytest.raises(ValueError, match="example 0.*non-empty"):
        encode_examples([{"prompt": "p", "completion": ""}], tiny_tokenizer)
