"""ULRec's KTO stage on a tiny offline model: masking, the SFT term, TRL's loss at alpha 0, and that training moves
the adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from datasets import Dataset
from peft import LoraConfig

from train.kto import ULRecKTOConfig, ULRecKTOTrainer
from train.logprobs import (
    align_right,
    aligned_completion_logps,
    completion_logps,
    kl_logps_from_prompt_cache,
    output_cache,
)
from train.tune import _checkpointing_field


def make_examples(world, n=8):
    return [
        {
            "prompt": f"History: {world.titles[i]}, {world.titles[i + 1]}. Recommended:",
            "completion": " " + world.titles[i + 2],
            "label": i % 3 != 0,
        }
        for i in range(n)
    ]


def make_trainer(model, tokenizer, examples, tmp_path, **kw):
    args = ULRecKTOConfig(
        output_dir=str(tmp_path / "kto"),
        per_device_train_batch_size=kw.pop("batch_size", 4),
        max_steps=kw.pop("max_steps", 3),
        learning_rate=kw.pop("learning_rate", 1e-2),
        report_to=[],
        **{_checkpointing_field(): False},  # activation_checkpointing from transformers 5.20 on (vLLM's venv: 5.19)
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=kw.pop("seed", 0),
        **kw,
    )
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return ULRecKTOTrainer(
        model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer, peft_config=peft
    )


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def test_kto_steps_change_lora_weights(tiny_model, tiny_tokenizer, default_world, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, make_examples(default_world), tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert before
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    logged = [h for h in trainer.state.log_history if "loss/sft" in h]
    assert logged and all(h["loss/sft"] > 0 for h in logged)


def test_masked_logprob_is_sum_over_title_tokens(tiny_model, tiny_tokenizer, default_world, tmp_path):
    examples = make_examples(default_world, 4)
    trainer = make_trainer(tiny_model, tiny_tokenizer, examples, tmp_path, shuffle_train=False)  # rows in order
    batch = first_batch(trainer)
    model = trainer.model.eval()
    with torch.no_grad():
        seq, _, _ = completion_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], fused=True
        )
        for i, ex in enumerate(examples):
            p = tiny_tokenizer(ex["prompt"])["input_ids"]
            c = tiny_tokenizer(ex["completion"], add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float().log_softmax(-1)
            by_hand = sum(logits[len(p) - 1 + j, tok].item() for j, tok in enumerate(c))
            assert seq[i].item() == pytest.approx(by_hand, abs=1e-4)
            assert int(batch["completion_mask"][i].sum()) == len(c)  # the title tokens only: no EOS, no prompt


def uneven_examples(world, n=4):
    """Prompts and completions of different lengths, so rows pad differently."""
    return [
        {
            "prompt": "History: " + ", ".join(world.titles[i : i + 1 + i % 3]) + ". Recommended:",
            "completion": " " + " ".join(world.titles[i + 5 : i + 6 + (i % 2)]),
            "label": i % 2 == 0,
        }
        for i in range(n)
    ]


def test_prompt_cache_path_gives_the_same_log_probs(tiny_model, tiny_tokenizer, default_world, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, uneven_examples(default_world), tmp_path)
    batch = first_batch(trainer)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # rows of different lengths
    model = trainer.model.eval()
    with torch.no_grad():
        full, _, _ = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], fused=False)
        aligned = align_right(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        fast, per_token, out = aligned_completion_logps(model, aligned, use_cache=True)
        assert torch.allclose(fast, full, atol=1e-4)
        assert int(aligned.target_mask.sum()) == int(batch["completion_mask"].sum()) and per_token.shape[1] == aligned.width
        # the mismatched KL pairs, from the prompts' cache, against a full forward over KL_input_ids
        kl_full, _, _ = completion_logps(
            model, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"], fused=False
        )
        kl_fast = kl_logps_from_prompt_cache(
            model, output_cache(out), aligned, batch["KL_input_ids"], batch["KL_attention_mask"],
            batch["KL_completion_mask"], tiny_tokenizer.pad_token_id or 0,
        )  # fmt: skip
        assert torch.allclose(kl_fast, kl_full, atol=1e-4)
        assert not torch.allclose(kl_full, full, atol=1e-2)  # the KL pairs really are other sequences


def test_the_fast_path_hands_the_head_contiguous_inputs(tiny_model, tiny_tokenizer, default_world, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, uneven_examples(default_world), tmp_path)
    batch = first_batch(trainer)
    model = trainer.model.eval()
    aligned = align_right(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        first, _, _ = aligned_completion_logps(model, aligned)  # registers the head's hook on a model built by hand
        seen = []
        model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
        again, _, _ = aligned_completion_logps(model, aligned)
    assert seen == [True] and torch.equal(first, again)


def test_prompt_cache_on_and_off_give_the_same_loss(tiny_model_factory, tiny_tokenizer, default_world, tmp_path):
    losses = []
    for on in (True, False):
        trainer = make_trainer(
            tiny_model_factory(0), tiny_tokenizer, uneven_examples(default_world), tmp_path / str(on), prompt_cache=on
        )
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, first_batch(trainer)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_align_right_refuses_a_completion_that_is_not_the_tail():
    ids = torch.tensor([[5, 6, 7, 8, 0]])
    am = torch.tensor([[1, 1, 1, 1, 0]])
    assert align_right(ids, am, torch.tensor([[0, 0, 1, 0, 0]])) is None
    a = align_right(ids, am, torch.tensor([[0, 0, 1, 1, 0]]))
    assert a.input_ids.tolist() == [[0, 5, 6, 7, 8]] and a.position_ids.tolist() == [[0, 0, 1, 2, 3]] and a.width == 2


def test_sft_term_zero_without_desirable_examples(tiny_model, tiny_tokenizer, default_world, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, make_examples(default_world, 4), tmp_path)
    batch = first_batch(trainer)
    trainer.model.train()

    def loss_with(labels, alpha):
        trainer.sft_alpha = alpha
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, {**batch, "label": labels})
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
        return loss.detach(), grads, trainer._metrics["train"]["loss/sft"][-1]

    neg = torch.zeros(4, dtype=torch.bool)
    l0, g0, _ = loss_with(neg, 0.0)
    l1, g1, sft = loss_with(neg, 0.1)
    assert sft == 0.0 and torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    mixed = torch.tensor([True, False, True, False])
    m0, _, _ = loss_with(mixed, 0.0)
    m1, _, sft = loss_with(mixed, 0.1)
    assert sft > 0 and m1.item() == pytest.approx(m0.item() + 0.1 * sft, rel=1e-5)


def test_precomputed_reference_gives_same_loss(tiny_model_factory, tiny_tokenizer, default_world, tmp_path):
    examples = make_examples(default_world, 8)
    losses = []
    for pre in (False, True):
        trainer = make_trainer(
            tiny_model_factory(0), tiny_tokenizer, examples, tmp_path / str(pre), precompute_ref_log_probs=pre
        )
        batch = first_batch(trainer)
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_kto_batch_size_one_raises(tiny_model, tiny_tokenizer, default_world, tmp_path):
    with pytest.raises(ValueError, match="batch size"):
        make_trainer(tiny_model, tiny_tokenizer, make_examples(default_world), tmp_path, batch_size=1)


@pytest.mark.parametrize("prompt_cache", [True, False])
def test_loss_at_alpha_zero_equals_trl_kto_trainer(tiny_model_factory, tiny_tokenizer, default_world, tmp_path,
                                                  prompt_cache):
    """With ``sft_alpha=0`` ULRec's loss is TRL's stock ``KTOTrainer`` loss: same batch, same KL term, same number.

    TRL appends EOS to every completion and tokenizes prompt + completion in one go; ULRec tokenizes them separately
    and adds nothing. Completions that already end in EOS and start on a token boundary make the two token streams
    the same (asserted), so what is compared is the loss, the KL reference point and the masking.
    """
    from trl import KTOConfig, KTOTrainer

    eos = tiny_tokenizer.eos_token
    examples = [{**e, "completion": e["completion"] + eos} for e in uneven_examples(default_world, 6)]
    common = dict(per_device_train_batch_size=6, beta=0.5, desirable_weight=1.25, undesirable_weight=1.0,
                  report_to=[], bf16=False, use_cpu=True, save_strategy="no", seed=0, **{_checkpointing_field(): False})
    ours = ULRecKTOTrainer(
        tiny_model_factory(1), ref_model=tiny_model_factory(0), processing_class=tiny_tokenizer,
        args=ULRecKTOConfig(output_dir=str(tmp_path / "ours"), sft_alpha=0.0, prompt_cache=prompt_cache,
                            shuffle_train=False, **common),  # TRL's trainer keeps the rows' order
        train_dataset=Dataset.from_list(examples),
    )
    stock = KTOTrainer(
        tiny_model_factory(1), ref_model=tiny_model_factory(0), processing_class=tiny_tokenizer,
        args=KTOConfig(output_dir=str(tmp_path / "trl"), **common), train_dataset=Dataset.from_list(examples),
    )
    b_ours, b_trl = first_batch(ours), first_batch(stock)
    for key in ("input_ids", "attention_mask", "completion_mask", "KL_input_ids", "KL_attention_mask",
                "KL_completion_mask", "label"):
        assert torch.equal(b_ours[key], b_trl[key]), key
    assert 0 < int(b_trl["label"].sum()) < len(examples)
    losses, kls = [], []
    for trainer, batch in ((ours, b_ours), (stock, b_trl)):
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
        kls.append(trainer._metrics["eval"]["kl"][-1])
    assert kls[1] > 0  # the reference point is not clamped away: the KL term takes part
    assert kls[0] == pytest.approx(kls[1], rel=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_loss_terms_keep_each_example_to_its_term(tiny_model_factory, tiny_tokenizer, default_world, tmp_path):
    """An example with ``loss_terms`` "sft" enters the SFT term and nothing else; one with "kto" the KTO term (its
    weighted mean over the batch's KTO examples, and the reward metrics) and nothing else."""
    examples = make_examples(default_world, 4)  # labels False, True, True, False
    examples = [{**e, "loss_terms": "sft" if i == 1 else "kto"} for i, e in enumerate(examples)]
    trainer = ULRecKTOTrainer(
        tiny_model_factory(1), ref_model=tiny_model_factory(0), processing_class=tiny_tokenizer,
        args=ULRecKTOConfig(output_dir=str(tmp_path / "kto"), per_device_train_batch_size=4, sft_alpha=0.5,
                            loss_type="apo_zero_unpaired", desirable_weight=0.5, undesirable_weight=1.0, report_to=[],
                            bf16=False, use_cpu=True, save_strategy="no", seed=0, **{_checkpointing_field(): False}),
        train_dataset=Dataset.from_list(examples),
    )
    batch = first_batch(trainer)
    in_kto, in_sft = batch["in_kto"] > 0, batch["in_sft"] > 0
    assert int(in_kto.sum()) == 3 and int(in_sft.sum()) == 1 and not torch.any(in_kto & in_sft)
    trainer.model.eval()
    metrics = trainer._metrics["eval"]

    def run(b):
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, b).item()
        return loss, metrics["loss/kto"][-1], metrics["loss/sft"][-1], metrics["rewards/chosen"][-1]

    loss, kto, sft, chosen = run(batch)
    assert loss == pytest.approx(kto + 0.5 * sft, rel=1e-5)
    plain = {k: v for k, v in batch.items() if k not in ("in_kto", "in_sft")}
    # the KTO term: the same loss as a batch of the KTO examples alone (APO-zero has no batch-wide KL term)
    only_kto = {k: v[in_kto] if isinstance(v, torch.Tensor) else v for k, v in plain.items()}
    _, kto_alone, _, chosen_alone = run(only_kto)
    assert kto == pytest.approx(kto_alone, rel=1e-5) and chosen == pytest.approx(chosen_alone, rel=1e-5)
    # the SFT term: that of the whole batch with the SFT example as its only desirable one
    _, _, sft_alone, _ = run({**plain, "label": plain["label"].bool() & in_sft})
    assert sft > 0 and sft == pytest.approx(sft_alone, rel=1e-5)
    # and neither equals the default, where every example enters both terms
    _, kto_both, sft_both, _ = run(plain)
    assert kto_both != pytest.approx(kto, rel=1e-3) and sft_both != pytest.approx(sft, rel=1e-3)


def test_an_undesirable_example_cannot_be_sft_only(tiny_model, tiny_tokenizer, default_world, tmp_path):
    """``loss_terms`` is checked when the data is prepared: a known value, and "sft" on desirable examples only."""
    examples = [{**e, "loss_terms": "sft"} for e in make_examples(default_world, 4)]
    with pytest.raises(ValueError, match="undesirable with loss_terms 'sft'"):
        make_trainer(tiny_model, tiny_tokenizer, examples, tmp_path)
    examples = [{**e, "loss_terms": "kt0"} for e in make_examples(default_world, 4)]
    with pytest.raises(ValueError, match="loss_terms 'kt0'"):
        make_trainer(tiny_model, tiny_tokenizer, examples, tmp_path)


def test_training_rows_are_shuffled_once_by_the_seed(tiny_model_factory, tiny_tokenizer, default_world, tmp_path):
    """TRL's KTO reads its rows in order (its KL pairs are neighbours in a batch): the trainer shuffles them once,
    by the seed, so a step-capped stage does not train on its data's first rows only; the KL completions are the
    shuffled rows' neighbours."""
    examples = make_examples(default_world, 24)
    completions = [tiny_tokenizer(e["completion"], add_special_tokens=False)["input_ids"] for e in examples]

    def order(seed, **kw):
        trainer = make_trainer(tiny_model_factory(0), tiny_tokenizer, examples, tmp_path / f"{seed}-{kw}", seed=seed,
                               **kw)
        assert trainer.args.train_sampling_strategy == "sequential"  # the only shuffle is the trainer's own
        data = trainer.train_dataset
        rows = [completions.index(c) for c in data["completion_ids"]]
        for start in range(0, len(rows), 4):  # batch size 4: each row's KL completion is its batch neighbour's
            block = data["completion_ids"][start:start + 4]
            assert data["KL_completion_ids"][start:start + 4] == block[-1:] + block[:-1]
        return rows

    assert order(0, shuffle_train=False) == list(range(24))
    first = order(0)
    assert sorted(first) == list(range(24)) and first != list(range(24))
    assert order(0) == first and order(1) != first

