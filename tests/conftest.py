"""Shared fixtures: small worlds, and tiny language models built offline (no hub, no download)."""

from __future__ import annotations

import numpy as np
import pytest

from ulrec_env import World
from ulrec_env.worlds import synthetic

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def default_world() -> World:
    return synthetic()


@pytest.fixture(scope="session")
def small_world() -> World:
    """A 120-item, 40-user synthetic world: fast enough for exhaustive checks."""
    return synthetic(seed=3, n_items=120, n_users=40)


def make_tiny_world(n_items: int = 6, n_users: int = 3) -> World:
    """A hand-sized world with readable numbers, for rule-by-rule tests."""
    rng = np.random.default_rng(0)
    pos = np.arange(n_items, dtype=np.float32) * 10.0  # items on a line, 10 apart
    return World(
        name="tiny",
        titles=tuple(f"Item {i}" for i in range(n_items)),
        genres=tuple(("g%d" % (i % 2),) for i in range(n_items)),
        ratings=rng.uniform(2.5, 5.0, size=(n_users, n_items)).astype(np.float32),
        distance=np.abs(pos[:, None] - pos[None, :]),
        histories=tuple(np.array([0, 1]) for _ in range(n_users)),
        train_users=np.arange(n_users - 1),
        test_users=np.array([n_users - 1]),
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(default_world):
    """A real (byte-level BPE) fast tokenizer trained in a second on the default world's titles."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = list(default_world.titles) + [
        "The user enjoyed these items before. Recommend one item at a time; the user leaves when bored. "
        "History: Session so far: Recommended: continued, rating Genres: system user assistant"
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_tokenizer):
    """Builds a fresh 2-layer Llama with random weights (seeded) that matches ``tiny_tokenizer``."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=len(tiny_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            pad_token_id=tiny_tokenizer.pad_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg).eval()

    return make


@pytest.fixture
def tiny_model(tiny_model_factory):
    return tiny_model_factory(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_factory, tiny_tokenizer) -> str:
    """The tiny model and tokenizer saved as a local model folder (what `--model PATH` takes)."""
    pytest.importorskip("trl")
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model_factory(0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return str(d)


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
