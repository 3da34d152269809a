"""ULRec-P's trainer: the completion-only loss through the fast path equals TRL's own loss."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from peft import LoraConfig

from train.sft import ULRecSFTTrainer, build_sft_trainer, sft_dataset
from train.tune import default_trainer_args


def examples(world, n=4):
    return [
        {
            "prompt": "History: " + ", ".join(world.titles[i : i + 1 + i % 3]) + ". Recommended:",
            "completion": " " + " ".join(world.titles[i + 5 : i + 6 + (i % 2)]),
            "label": True,
        }
        for i in range(n)
    ]


def test_fast_loss_equals_trl_loss(tiny_model, tiny_tokenizer, default_world, tmp_path):
    args = default_trainer_args("sft", str(tmp_path / "sft"), per_device_train_batch_size=4, use_cpu=True, max_steps=1)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, _ = build_sft_trainer(tiny_model, tiny_tokenizer, examples(default_world), args, peft_config=peft)
    assert isinstance(trainer, ULRecSFTTrainer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    trainer.model.eval()
    with torch.no_grad():
        fast = trainer.compute_loss(trainer.model, dict(batch)).item()
        trl_loss = super(ULRecSFTTrainer, trainer).compute_loss(trainer.model, dict(batch)).item()
    assert fast == pytest.approx(trl_loss, rel=1e-4)
    # the hand computation: mean NLL over the completion tokens of the batch
    ds, _ = sft_dataset(examples(default_world), tiny_tokenizer, None)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in ds:
            logp = trainer.model(input_ids=torch.tensor([row["input_ids"]])).logits[0].float().log_softmax(-1)
            for t, lab in enumerate(row["labels"]):
                if lab != -100:
                    total -= logp[t - 1, lab].item()
                    count += 1
    assert fast == pytest.approx(total / count, rel=1e-4)
