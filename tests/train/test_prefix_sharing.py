"""Trainers run the prompt prefix a batch shares once: same losses, same gradients, same KL and reference terms."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from peft import LoraConfig

from tests.train.test_kto import first_batch, make_trainer
from train.logprobs import align_right, split_shared_prefix
from train.sft import build_sft_trainer
from train.tune import default_trainer_args

SYSTEM = ("The user enjoyed these items before. Recommend one item at a time; the user leaves when bored. "
          "History: ")


def shared_examples(world, n=8):
    """Prompts that share a long instruction, then differ (different lengths); labels of both kinds."""
    return [
        {
            "prompt": SYSTEM + ", ".join(world.titles[i : i + 1 + i % 3]) + ". Session so far: Recommended:",
            "completion": " " + world.titles[20 + i],
            "label": i % 3 != 0,
        }
        for i in range(n)
    ]


def test_split_finds_the_shared_prefix_and_keeps_a_token_per_row():
    ids = torch.tensor([[0, 0, 7, 8, 9, 5, 1], [7, 8, 9, 6, 6, 5, 2]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    cm = torch.tensor([[0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1]])
    aligned = align_right(ids, am, cm)
    sp = split_shared_prefix(aligned, min_tokens=1)
    assert sp.ids.tolist() == [7, 8, 9] and sp.length == 3
    assert sp.rest.input_ids.tolist() == [[0, 0, 5, 1], [6, 6, 5, 2]]
    assert sp.rest.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert sp.rest.position_ids[:, -1].tolist() == [4, 6]
    assert sp.layout.input_ids.tolist() == [[7, 8, 9, 0, 0, 5, 1], [7, 8, 9, 6, 6, 5, 2]]
    assert split_shared_prefix(aligned, min_tokens=4) is None  # too short to pay
    # a row whose prompt is only the prefix keeps its last prompt token for itself
    short = align_right(torch.tensor([[7, 8, 9, 1], [7, 8, 9, 2]]), torch.ones(2, 4, dtype=torch.long),
                        torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1]]))
    assert split_shared_prefix(short, min_tokens=1).length == 2


def _loss_and_grads(trainer, batch, share):
    trainer.args.share_prompt_prefix = share
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def test_kto_loss_gradients_and_kl_are_the_same_with_a_shared_prefix(tiny_model, tiny_tokenizer, default_world, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, shared_examples(default_world), tmp_path, batch_size=8)
    batch = first_batch(trainer)
    aligned = align_right(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert split_shared_prefix(aligned).length >= 16
    trainer.model.train()
    l0, g0, m0 = _loss_and_grads(trainer, batch, False)
    l1, g1, m1 = _loss_and_grads(trainer, batch, True)
    assert l1.item() == pytest.approx(l0.item(), rel=1e-5, abs=1e-6)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)
    # the KL estimate (mismatched pairs through the cache) and the reference rewards agree too
    assert m1["kl"] == pytest.approx(m0["kl"], abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "loss/sft"):
        assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-6)
    with torch.no_grad():
        trainer.args.share_prompt_prefix = False
        ref0, kl0 = trainer.compute_ref_log_probs(trainer.model, batch)
        trainer.args.share_prompt_prefix = True
        ref1, kl1 = trainer.compute_ref_log_probs(trainer.model, batch)
    torch.testing.assert_close(ref1, ref0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kl1, kl0, rtol=1e-5, atol=1e-4)


def test_sft_loss_and_gradients_are_the_same_with_a_shared_prefix(tiny_model, tiny_tokenizer, default_world, tmp_path):
    args = default_trainer_args("sft", str(tmp_path / "sft"), per_device_train_batch_size=6, use_cpu=True, max_steps=1)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    examples = [e for e in shared_examples(default_world, 9) if e["label"]]
    trainer, _ = build_sft_trainer(tiny_model, tiny_tokenizer, examples, args, peft_config=peft)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    assert split_shared_prefix(align_right(batch["input_ids"], batch["attention_mask"], (labels != -100).long())).length >= 16
    trainer.model.train()
    out = {}
    for share in (False, True):
        trainer.share_prompt_prefix = share
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        out[share] = (loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    for n, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][n], g, rtol=1e-4, atol=1e-6)
