"""tune(): both stages end to end on a tiny model, the saved adapter layout, and the checks before training."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from train.labeling import (
    TRL_WEIGHT_BAND,
    LabelOptions,
    label_counts,
    label_steps,
    load_examples,
    save_examples,
    subsample_to_band,
    weighted_ratio,
)
from train.records import StepRecord
from train.tune import (
    SIDECAR_FILE,
    TuneConfig,
    check_examples,
    default_trainer_args,
    lr_schedule_args,
    read_sidecar,
    tune,
)


def rollout(world, n_episodes=4):
    """Hand-made rollout steps: episode e continues e+1 times, then leaves (the last one is truncated)."""
    steps = []
    for e in range(n_episodes):
        n = e + 2
        for k in range(n):
            leave = k == n - 1 and e != n_episodes - 1
            steps.append(
                StepRecord(
                    episode=e, user=e, step=k,
                    prompt=f"History: {world.titles[e]}, {world.titles[k]}. Recommended:",
                    completion=" " + world.titles[10 * e + k], item=10 * e + k, title=world.titles[10 * e + k],
                    rating=4.0, reward=0.0 if leave else 4.0, feedback="leave" if leave else "continue",
                    leave_reason="bored" if leave else None, truncated=(not leave and k == n - 1),
                    session_len=n - 1 if e != n_episodes - 1 else n, session_return=4.0 * n,
                )
            )  # fmt: skip
    return steps


@pytest.fixture
def data_dir(tmp_path, default_world):
    ex, rep = label_steps(rollout(default_world), LabelOptions(min_positives=0))
    return save_examples(ex, tmp_path / "labels", world_fingerprint=default_world.fingerprint(), report=rep)


def small_args(stage, **kw):
    base = dict(per_device_train_batch_size=4, use_cpu=True, logging_steps=1, learning_rate=1e-2)
    base.update(kw)
    return default_trainer_args(stage, "unused", **base)


def test_sft_then_kto_from_the_sft_adapter(data_dir, tiny_model_factory, tiny_tokenizer, default_world, tmp_path):
    from peft import PeftModel

    sft = tune(
        "sft", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "p", max_steps=2,
        config=TuneConfig(trainer_args=small_args("sft")), world=default_world,
    )  # fmt: skip
    files = {p.name for p in sft.out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", SIDECAR_FILE} <= files
    side = read_sidecar(sft.out)
    assert side["stage"] == "sft" and side["label_counts"] == {"desirable": sft.n_desirable, "undesirable": 3}
    assert side["world_fingerprint"] == default_world.fingerprint() and sft.global_step == 2
    assert sft.n_train_examples == sft.n_desirable

    kto = tune(
        "kto", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "u", max_steps=2,
        init_adapter=sft.out, config=TuneConfig(trainer_args=small_args("kto")),
    )  # fmt: skip
    side = read_sidecar(kto.out)
    assert side["stage"] == "kto" and side["init_adapter"] == str(sft.out) and kto.global_step == 2
    assert not (kto.out / "ref").exists()  # TRL's reference copy of the initial adapter is not saved
    lo, hi = TRL_WEIGHT_BAND
    ratio = weighted_ratio(kto.n_desirable, kto.n_undesirable, kto.desirable_weight, kto.undesirable_weight)
    assert lo <= ratio <= hi + 1e-9
    assert side["hyperparameters"]["sft_alpha"] == 0.1 and side["hyperparameters"]["beta"] == 0.1

    loaded = PeftModel.from_pretrained(tiny_model_factory(0), str(kto.out))
    first = PeftModel.from_pretrained(tiny_model_factory(0), str(sft.out))
    w_k = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    w_s = dict(first.named_parameters())
    assert any(not torch.equal(w_k[n], w_s[n]) for n in w_k)  # KTO moved the ULRec-P adapter


def test_full_finetune_saves_a_model(data_dir, tiny_model_factory, tiny_tokenizer, tmp_path):
    model = tiny_model_factory(0)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    res = tune(
        "sft", data_dir, model, tokenizer=tiny_tokenizer, out=tmp_path / "full", max_steps=2,
        config=TuneConfig(trainer_args=small_args("sft", learning_rate=1e-3), full_finetune=True),
    )  # fmt: skip
    assert (res.out / "config.json").is_file() and not (res.out / "adapter_config.json").exists()
    assert read_sidecar(res.out)["adapter"] is False
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight.detach())


def test_lora_top_layers_adapts_only_the_last_blocks(data_dir, tiny_model_factory, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    res = tune(
        "sft", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "top", max_steps=1,
        config=TuneConfig(trainer_args=small_args("sft"), lora_top_layers=1),
    )  # fmt: skip
    cfg = json.loads((res.out / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1]  # the tiny model has 2 blocks
    loaded = PeftModel.from_pretrained(tiny_model_factory(0), str(res.out))
    lora = [n for n, _ in loaded.named_parameters() if "lora_A" in n]
    assert lora and all(".layers.1." in n for n in lora)


def test_default_lora_config_checks_top_layers():
    from train.tune import default_lora_config

    assert default_lora_config().layers_to_transform is None
    assert default_lora_config(3, 30).layers_to_transform == [27, 28, 29]
    with pytest.raises(ValueError, match="`top_layers` is 40 but the model has 30 blocks"):
        default_lora_config(40, 30)
    with pytest.raises(ValueError, match="`num_layers` is required"):
        default_lora_config(3)
    with pytest.raises(ValueError, match="`top_layers` must be None or a positive integer"):
        default_lora_config(0, 30)


def test_checks_before_training(data_dir, tiny_tokenizer, default_world, tmp_path):
    from ulrec_env.worlds import synthetic

    data = load_examples(data_dir)
    kw = dict(tokenizer=tiny_tokenizer, out=tmp_path / "x")
    never = object()  # the checks fail before any model is used
    with pytest.raises(ValueError, match="empty"):
        tune("sft", [], never, **kw)
    with pytest.raises(ValueError, match="fingerprint"):
        tune("kto", data_dir, never, world=synthetic(seed=7, n_items=50, n_users=10), **kw)
    only_pos = [e for e in data.examples if e["label"]]
    with pytest.raises(ValueError, match="KTO needs both labels.*0 undesirable"):
        tune("kto", only_pos, never, **kw)
    with pytest.raises(ValueError, match="batch size of 2"):
        tune("kto", data_dir, never, config=TuneConfig(trainer_args=small_args("kto", per_device_train_batch_size=1)), **kw)
    with pytest.raises(ValueError, match="none of the 3 is desirable"):
        tune("sft", [e for e in data.examples if not e["label"]], never, **kw)
    with pytest.raises(ValueError, match="trl.KTOConfig"):
        tune("kto", data_dir, never, config=TuneConfig(trainer_args=small_args("sft")), **kw)
    with pytest.raises(ValueError, match="stage"):
        check_examples("dpo", data.examples, batch_size=8)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        tune("sft", data_dir, never, tokenizer=tiny_tokenizer, out=tmp_path / "busy")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # staging folders cleaned up
    assert json.loads((data_dir / "meta.json").read_text()) == data.meta  # the refused runs left the data as it was


@pytest.mark.parametrize("stage", ["sft", "kto"])
def test_bf16_mixed_precision_trains_and_is_recorded(stage, data_dir, tiny_model_factory, tiny_tokenizer, default_world,
                                                     tmp_path):
    """dtype="bfloat16": float32 weights (LoRA included) under bf16 autocast; the sidecar says so."""
    res = tune(stage, data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / stage, max_steps=2,
               config=TuneConfig(trainer_args=small_args(stage, dtype="bfloat16")), world=default_world)
    side = read_sidecar(res.out)
    assert side["dtype"] == {"compute": "bfloat16", "weights": "float32"}
    assert res.global_step == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.log_history if "loss" in h)
    f32 = tune(stage, data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / f"{stage}-f32",
               max_steps=1, config=TuneConfig(trainer_args=small_args(stage, dtype="float32")), world=default_world)
    assert read_sidecar(f32.out)["dtype"] == {"compute": "float32", "weights": "float32"}


@pytest.mark.parametrize("stage", ["sft", "kto"])
def test_interrupted_stage_resumes_from_its_checkpoint(stage, data_dir, tiny_model_factory, tiny_tokenizer,
                                                       default_world, tmp_path, monkeypatch):
    """A stage stopped after step 2 of 4 and resumed gives the adapter of an uninterrupted run."""
    from transformers.trainer_callback import CallbackHandler

    from train.tune import checkpoint_dir, last_checkpoint

    def run(out, **cfg):
        return tune(stage, data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=out, max_steps=4,
                    config=TuneConfig(trainer_args=small_args(stage), **cfg), world=default_world)

    whole = run(tmp_path / "whole")
    assert whole.sidecar["resumed_from_step"] is None
    out = tmp_path / "cut"
    original = CallbackHandler.on_step_end

    def stop_at_3(self, args, state, control):
        if state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_end", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(out, save_steps=1)
    steps_run = []

    def count(self, args, state, control):
        steps_run.append(state.global_step)
        return original(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_end", count)
    assert not out.exists()  # nothing half-written where a later run reads the adapter
    ckpt = last_checkpoint(checkpoint_dir(out))
    assert ckpt is not None and ckpt.name == "checkpoint-2"
    with pytest.raises(ValueError, match="interrupted run.*--resume"):
        run(out, save_steps=1)
    resumed = run(out, save_steps=1, resume=True)
    assert resumed.sidecar["resumed_from_step"] == 2 and resumed.global_step == 4
    assert steps_run == [3, 4]  # only the steps after the checkpoint ran
    assert not checkpoint_dir(out).exists()
    from tests.train.test_loop import adapter_weights

    a, b = adapter_weights(whole.out), adapter_weights(resumed.out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_bad_save_steps(data_dir, tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="save_steps"):
        tune("sft", data_dir, tiny_model, tokenizer=tiny_tokenizer, out=tmp_path / "x", config=TuneConfig(save_steps=0))


def test_kto_against_another_reference_adapter(data_dir, tiny_model_factory, tiny_tokenizer, tmp_path):
    """`reference_adapter`: the frozen reference holds that adapter's weights (not the initial one's), which the
    first logged implicit rewards show: zero against the initial adapter itself, non-zero against another. In float32
    everywhere: bf16 autocast (dtype "auto" on a CPU with AMX) rounds the two references differently."""
    def sft(out, lr, **cfg):
        return tune("sft", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / out, max_steps=2,
                    config=TuneConfig(trainer_args=small_args("sft", learning_rate=lr, dtype="float32"), **cfg)).out

    a, b = sft("a", 1e-2), sft("b", 5e-2)

    def kto(out, reference):
        return tune("kto", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / out, max_steps=1,
                    init_adapter=a, config=TuneConfig(trainer_args=small_args("kto", dtype="float32"),
                                                    reference_adapter=reference))

    def first_rewards(result):
        entry = next(h for h in result.log_history if "rewards/chosen" in h or "rewards/rejected" in h)
        return [entry[k] for k in ("rewards/chosen", "rewards/rejected") if k in entry]

    own, other = kto("u-own", None), kto("u-other", b)
    assert all(abs(r) < 1e-5 for r in first_rewards(own))  # policy == reference before the first update
    assert any(abs(r) > 1e-4 for r in first_rewards(other))
    assert read_sidecar(other.out)["reference_adapter"] == str(b) and "reference_adapter" not in read_sidecar(own.out)
    assert not (other.out / "ref").exists()

    same = kto("u-same", a)  # the reference passed as a separate model gives what TRL's own copy gives
    assert first_rewards(same) == pytest.approx(first_rewards(own), abs=1e-5)


def test_kto_balanced_by_subsampling_trains_on_the_subset_with_unit_weights(data_dir, tiny_model_factory,
                                                                          tiny_tokenizer, tmp_path):
    """`balance_by="subsample"`: the stage trains on `subsample_to_band`'s subset (seeded by the trainer's seed),
    with both loss weights 1; the label counts of the data and the balancing are recorded."""
    data = load_examples(data_dir)
    n_des, n_und = label_counts(data.examples)
    assert n_des > 2 * n_und  # the fixture is imbalanced, so something is cut
    args = small_args("kto", seed=5)
    res = tune("kto", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "u", max_steps=1,
               config=TuneConfig(trainer_args=args, balance_by="subsample"))
    subset = subsample_to_band(data.examples, seed=5)
    assert res.n_train_examples == len(subset) < n_des + n_und
    assert (res.desirable_weight, res.undesirable_weight) == (1.0, 1.0)
    assert (res.n_desirable, res.n_undesirable) == (n_des, n_und)
    side = read_sidecar(res.out)
    assert side["balance_by"] == "subsample" and side["n_train_examples"] == len(subset)

    weighted = tune("kto", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "w",
                    max_steps=1, config=TuneConfig(trainer_args=args))
    assert weighted.n_train_examples == n_des + n_und and weighted.desirable_weight < 1.0
    assert read_sidecar(weighted.out)["balance_by"] == "weights"
    with pytest.raises(ValueError, match="`balance_by` must be one of weights, subsample"):
        TuneConfig(balance_by="oversample")


@pytest.mark.parametrize("stage", ["sft", "kto"])
def test_a_constant_schedule_trains_at_its_rate_from_the_first_step(stage, data_dir, tiny_model_factory,
                                                                    tiny_tokenizer, tmp_path):
    """`lr_schedule_args("constant")`: every step at the stage's learning rate (no warm-up, no decay); the default
    cosine schedule decays towards 0. The sidecar records the schedule."""
    def rates(schedule):
        args = small_args(stage, learning_rate=1e-3, **lr_schedule_args(schedule))
        res = tune(stage, data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / schedule,
                   max_steps=10, config=TuneConfig(trainer_args=args))
        hyper = read_sidecar(res.out)["hyperparameters"]
        assert hyper["lr_scheduler_type"] == schedule
        return [h["learning_rate"] for h in res.log_history if "learning_rate" in h]

    constant = rates("constant")
    assert len(constant) == 10 and constant == pytest.approx([1e-3] * 10)
    cosine = rates("cosine")
    assert len(cosine) == 10 and cosine[-1] < 1e-4 and max(cosine) <= 1e-3 * (1 + 1e-6)
    with pytest.raises(ValueError, match="`schedule` must be one of cosine, constant"):
        lr_schedule_args("linear")


def test_no_progress_prints_no_training_lines(data_dir, tiny_model_factory, tiny_tokenizer, tmp_path, capsys):
    """Without a bar (`--no-progress`), the Trainer prints no log lines in its place; the logs stay in the result."""
    result = tune("sft", data_dir, tiny_model_factory(0), tokenizer=tiny_tokenizer, out=tmp_path / "p", max_steps=2,
                  config=TuneConfig(trainer_args=small_args("sft", disable_tqdm=True)))
    out = capsys.readouterr()
    assert "'loss'" not in out.out and "'loss'" not in out.err
    assert any("loss" in h for h in result.log_history)
