"""Model folders and adapters from others: no shipped code runs, no pickled weights are read unless opted in."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest

from ulrec_env.safe_io import UnsafeFileError

pytest.importorskip("transformers")


class _Gadget:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _adapter_dir(tmp_path, tiny_model):
    """A real LoRA adapter of the tiny model, saved by PEFT (safetensors)."""
    from peft import LoraConfig, get_peft_model

    d = tmp_path / "adapter"
    get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(d)
    return d


def test_adapter_with_pickled_weights_is_refused(tmp_path, tiny_model, tiny_model_dir):
    from agents.llm import LLMRecommender

    d = _adapter_dir(tmp_path, tiny_model)
    assert LLMRecommender.from_pretrained(tiny_model_dir, adapter=d, device="cpu") is not None  # benign loads
    marker = tmp_path / "pwned"
    (d / "adapter_model.safetensors").unlink()
    (d / "adapter_model.bin").write_bytes(pickle.dumps(_Gadget(marker)))
    with pytest.raises(UnsafeFileError) as e:
        LLMRecommender.from_pretrained(tiny_model_dir, adapter=d, device="cpu")
    assert not marker.exists()
    assert "adapter_model.bin" in str(e.value) and "allow_unsafe_pickle=True" in str(e.value)


def test_adapter_folder_without_weights_or_config(tmp_path, tiny_model):
    from agents.models import check_adapter_folder

    d = _adapter_dir(tmp_path, tiny_model)
    assert check_adapter_folder(d) == d
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter weights"):
        check_adapter_folder(d)
    (d / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        check_adapter_folder(d)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        check_adapter_folder(tmp_path / "nowhere")


def test_tune_refuses_a_pickled_init_adapter(tmp_path, tiny_model, tiny_tokenizer):
    from train.tune import tune

    d = _adapter_dir(tmp_path, tiny_model)
    (d / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(_Gadget(marker)))
    examples = [{"prompt": "History: a. Recommended:", "completion": " Item", "label": True}]
    with pytest.raises(UnsafeFileError, match="adapter_model.bin"):
        tune("sft", examples, tiny_model, tokenizer=tiny_tokenizer, out=tmp_path / "out", init_adapter=d)
    assert not marker.exists() and not (tmp_path / "out").exists()


def _pickled_model_dir(tmp_path, tiny_model_dir):
    """A copy of the tiny model whose only weights are a hostile pickle; ``(folder, marker it would create)``."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    marker = tmp_path / "pwned"
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Gadget(marker)))
    return d, marker


def test_model_folder_with_only_pickled_weights_is_refused(tmp_path, tiny_model_dir):
    from agents.models import load_model_and_tokenizer

    d, marker = _pickled_model_dir(tmp_path, tiny_model_dir)
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin"):
        load_model_and_tokenizer(str(d), device="cpu")
    assert not marker.exists()


def test_model_code_runs_only_with_trust_remote_code(tmp_path, tiny_model_dir):
    from agents.models import load_model_and_tokenizer

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    marker = tmp_path / "pwned"
    (d / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    # Without the opt-in the folder's code is never imported: transformers' own Llama class is used.
    lm, _ = load_model_and_tokenizer(str(d), device="cpu")
    assert not marker.exists() and type(lm).__name__ == "LlamaForCausalLM"
    lm, _ = load_model_and_tokenizer(str(d), device="cpu", trust_remote_code=True)
    assert marker.exists() and type(lm).__name__ == "EvilModel"


def test_a_stray_safetensors_file_does_not_open_the_pickled_weights(tmp_path, tiny_model_dir):
    from agents.models import load_model_and_tokenizer

    d, marker = _pickled_model_dir(tmp_path, tiny_model_dir)
    (d / "junk.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match="no file named model.safetensors"):  # told to read nothing else
        load_model_and_tokenizer(str(d), device="cpu")
    assert not marker.exists()
