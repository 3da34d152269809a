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


def test_trainers_see_the_agents_tokens(tiny_tokenizer, tiny_model, small_world, tmp_path):
    """What both trainers train on is ``encode_prompt + encode_completion`` of the agent's own text."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig

    from agents.prompting import build_completion, build_prompt, encode_completion, encode_prompt
    from train.kto import ULRecKTOConfig, ULRecKTOTrainer
    from train.sft import sft_dataset

    examples = [
        {"prompt": build_prompt(small_world, [i, i + 1], [i + 2], [3.5], tokenizer=tiny_tokenizer),
         "completion": build_completion(small_world.titles[i + 3]), "label": i % 2 == 0}
        for i in range(4)
    ]
    expected = [encode_prompt(tiny_tokenizer, e["prompt"]) + encode_completion(tiny_tokenizer, e["completion"])
                for e in examples]
    rows, _ = encode_examples(examples, tiny_tokenizer)
    assert [r["prompt_ids"] + r["completion_ids"] for r in rows] == expected
    sft, _ = sft_dataset(examples, tiny_tokenizer, None)
    assert sft["input_ids"] == [ids for ids, e in zip(expected, examples) if e["label"]]
    args = ULRecKTOConfig(output_dir=str(tmp_path / "kto"), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                          bf16=False, shuffle_train=False)  # the rows in their order, to compare
    kto = ULRecKTOTrainer(tiny_model, ref_model=None, args=args, train_dataset=Dataset.from_list(examples),
                          processing_class=tiny_tokenizer,
                          peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    seen = [p + c for p, c in zip(kto.train_dataset["prompt_ids"], kto.train_dataset["completion_ids"])]
    assert seen == expected
    assert kto.train_dataset["completion_ids"] == [encode_completion(tiny_tokenizer, e["completion"]) for e in examples]
