"""Examples/s of the tuning stages on CPU with SmolLM2-135M-Instruct and LoRA.

Rows:
* ``sft``: ULRec-P (``train.sft``), TRL ``SFTTrainer`` on the desirable examples.
* ``kto-trl-defaults``: TRL's ``KTOTrainer`` as shipped (its defaults: activation checkpointing on, bf16 autocast,
  reference log-probs recomputed every step with the adapter disabled).
* ``kto-trl-fp32-nockpt``: TRL's ``KTOTrainer`` with fp32 and no activation checkpointing (isolates those two).
* ``ulrec-kto``: ``train.kto.ULRecKTOTrainer`` as ``train.tune`` runs it: fp32, no checkpointing, reference
  log-probs precomputed once per data set (their cost is included in the time), KTO + 0.1 * SFT.
* ``ulrec-kto-top10`` / ``sft-top10``: the same with LoRA only in the last 10 of the 30 blocks
  (``default_lora_config(top_layers=10)``, ``ulrec loop --lora-layers 10``): the backward pass stops there.

Every row: same model, same examples (prompts from ``agents.prompting.build_prompt`` on the synthetic world, history
shortened to about 100 tokens), LoRA r=16 on all linear layers, batch 8, ``--epochs`` passes over ``--examples``
examples. Time covers dataset preparation, reference precompute and training (model loading excluded).

* ``*-noshare``: the same without running the prompt prefix a batch shares once (``share_prompt_prefix=False``).

    python benchmarks/bench_tuning.py [--examples 16] [--epochs 2] [--prompts long|loop] [--rows sft,kto-trl-defaults,...]
    python benchmarks/bench_tuning.py --whole-process ...   # each row its own process, timed from outside

``--whole-process`` writes ``benchmarks/results/tuning-whole.json``.

Prints a table and writes ``benchmarks/results/tuning.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.provenance import cpu_model  # noqa: E402

ROWS = ("sft", "sft-top10", "kto-trl-defaults", "kto-trl-fp32-nockpt", "ulrec-kto", "ulrec-kto-top10",
        "ulrec-kto-noshare", "ulrec-kto-top10-noshare", "sft-noshare")

#: How the examples' prompts are written: ``long`` as the earlier rows of this benchmark (3 history items and the
#: worked example, about 200 tokens), ``loop`` as the loop's learning recipe (6 history items, 4 session steps, no
#: worked example).
PROMPT_STYLES = {"long": {"max_history": 3}, "loop": {"max_history": 6, "max_session": 4, "worked_example": False}}


def make_examples(tokenizer, n: int, seed: int = 0, style: str = "long"):
    import numpy as np

    from agents.prompting import build_completion, build_prompt
    from ulrec_env.worlds import synthetic

    world = synthetic()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user = int(world.train_users[i % world.train_users.size])
        hist = world.histories[user]
        shown = rng.choice(world.n_items, size=2, replace=False)
        prompt = build_prompt(world, hist, shown, [4.0, 3.5], tokenizer=tokenizer, prompt_format=PROMPT_STYLES[style])
        item = int(rng.integers(world.n_items))
        out.append({"prompt": prompt, "completion": build_completion(world.titles[item]), "label": i % 4 != 3})
    return out, world


def run_row(row: str, examples, epochs: int, batch: int, workdir: str):
    import copy

    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from agents.models import load_model_and_tokenizer
    from train.kto import ULRecKTOConfig, ULRecKTOTrainer
    from train.sft import build_sft_trainer
    from train.tune import default_lora_config, default_trainer_args

    model, tok = load_model_and_tokenizer(None, device="cpu")
    model.train()
    common = dict(
        output_dir=os.path.join(workdir, row),
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        learning_rate=5e-5,
    )
    share = not row.endswith("-noshare")
    row_kind = row.removesuffix("-noshare")
    lora = default_lora_config(10, model.config.num_hidden_layers) if row_kind.endswith("-top10") else default_lora_config()
    t0 = time.perf_counter()
    if row_kind in ("sft", "sft-top10"):
        args = default_trainer_args("sft", common.pop("output_dir"), **common)
        trainer, _ = build_sft_trainer(model, tok, examples, args, peft_config=lora)
        trainer.share_prompt_prefix = share
        n_seen = sum(e["label"] for e in examples) * epochs
    elif row.startswith("kto-trl"):
        extra = {} if row == "kto-trl-defaults" else dict(bf16=False, activation_checkpointing=False)
        args = KTOConfig(**common, **extra)
        ds = Dataset.from_list([{k: e[k] for k in ("prompt", "completion", "label")} for e in examples])
        trainer = KTOTrainer(model, args=args, train_dataset=ds, processing_class=tok, peft_config=copy.deepcopy(lora))
        n_seen = len(examples) * epochs
    elif row_kind in ("ulrec-kto", "ulrec-kto-top10"):
        args = default_trainer_args("kto", common.pop("output_dir"), share_prompt_prefix=share, **common)
        assert isinstance(args, ULRecKTOConfig) and args.precompute_ref_log_probs
        ds = Dataset.from_list([{k: e[k] for k in ("prompt", "completion", "label")} for e in examples])
        trainer = ULRecKTOTrainer(model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
        n_seen = len(examples) * epochs
    else:
        raise ValueError(f"unknown row {row!r}; choose from {ROWS}.")
    t_prep = time.perf_counter() - t0
    trainer.train()
    total = time.perf_counter() - t0
    return {
        "row": row,
        "examples_trained": n_seen,
        "steps": trainer.state.global_step,
        "prep_s": round(t_prep, 2),
        "total_s": round(total, 2),
        "examples_per_s": round(n_seen / total, 3),
        "train_only_examples_per_s": round(n_seen / (total - t_prep), 3),
        "bf16": bool(trainer.args.bf16),
        "activation_checkpointing": bool(trainer.args.gradient_checkpointing),
        "precompute_ref_log_probs": bool(getattr(trainer.args, "precompute_ref_log_probs", False)),
        "share_prompt_prefix": share if row_kind.startswith(("ulrec", "sft")) else False,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--prompts", default="long", choices=sorted(PROMPT_STYLES), help="how prompts are written")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tuning.json"))
    ap.add_argument("--whole-process", action="store_true",
                    help="run each row in its own Python process and also report examples/s over the process's whole "
                         "wall time (interpreter start, imports, model loading, data, training), as a user runs it")
    a = ap.parse_args()
    if a.whole_process:
        return whole_process(a)
    try:
        import agents.models  # noqa: F401
        import agents.prompting  # noqa: F401
    except ImportError as e:
        print(f"agents.models / agents.prompting not available ({e}); this benchmark needs SmolLM2 through them.")
        sys.exit(1)
    import torch
    import transformers
    import trl

    from agents.models import load_model_and_tokenizer
    from ulrec_env.storage import atomic_write_text

    _, tok = load_model_and_tokenizer(None, device="cpu")
    examples, _ = make_examples(tok, a.examples, style=a.prompts)
    p_tok = [len(tok(e["prompt"])["input_ids"]) for e in examples]
    c_tok = [len(tok(e["completion"], add_special_tokens=False)["input_ids"]) for e in examples]
    print(
        f"SmolLM2-135M-Instruct, LoRA r=16 all-linear, batch {a.batch}, {a.examples} examples x {a.epochs} epochs; "
        f"prompt tokens mean {sum(p_tok) / len(p_tok):.0f} (min {min(p_tok)}, max {max(p_tok)}), completion tokens "
        f"mean {sum(c_tok) / len(c_tok):.1f}; torch {torch.__version__} threads {torch.get_num_threads()}"
    )
    results = []
    with tempfile.TemporaryDirectory() as work:
        for row in a.rows.split(","):
            r = run_row(row.strip(), examples, a.epochs, a.batch, work)
            results.append(r)
            print(json.dumps(r), flush=True)
    base = next((r for r in results if r["row"] == "kto-trl-defaults"), None)
    base = base or next((r for r in results if r["row"] == "kto-trl-fp32-nockpt"), None)
    print()
    print(f"| stage | examples/s | train-only ex/s | steps | total s | vs {base['row'] if base else 'TRL KTO'} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        rel = f"{r['examples_per_s'] / base['examples_per_s']:.2f}x" if base and not r["row"].startswith("sft") else ""
        print(
            f"| {r['row']} | {r['examples_per_s']:.3f} | {r['train_only_examples_per_s']:.3f} | {r['steps']} | "
            f"{r['total_s']:.1f} | {rel} |"
        )
    payload = {
        "benchmark": "tuning",
        "device": "cpu",
        "machine": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "settings": {
            "examples": a.examples,
            "epochs": a.epochs,
            "batch": a.batch,
            "prompts": a.prompts,
            "prompt_tokens_mean": sum(p_tok) / len(p_tok),
            "completion_tokens_mean": sum(c_tok) / len(c_tok),
        },
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(a.out, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {a.out}")


def whole_process(a: argparse.Namespace) -> None:
    """Each row timed as a whole process (this script with one row); the rows' own figures come with it."""
    import subprocess

    from ulrec_env.storage import atomic_write_text

    results, payload = [], None
    with tempfile.TemporaryDirectory() as work:
        for row in a.rows.split(","):
            out = Path(work) / f"{row}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--rows", row, "--examples", str(a.examples),
                   "--epochs", str(a.epochs), "--batch", str(a.batch), "--prompts", a.prompts, "--out", str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            payload = json.loads(out.read_text())
            r = payload["results"][0]
            r.update(process_s=wall, process_examples_per_s=a.examples * a.epochs / wall)
            results.append(r)
            print(json.dumps(r), flush=True)
    base = next((r for r in results if r["row"].startswith("kto-trl")), None)
    print(f"\n| stage | whole-process s | examples/s (process) | examples/s (stage) | vs {base['row'] if base else 'TRL'} (process) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        rel = f"{r['process_examples_per_s'] / base['process_examples_per_s']:.2f}x" if base else ""
        print(f"| {r['row']} | {r['process_s']:.1f} | {r['process_examples_per_s']:.3f} | {r['examples_per_s']:.3f} | {rel} |")
    payload = {**(payload or {}), "benchmark": "tuning-whole-process", "results": results,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    target = a.out if a.out.endswith("whole.json") else a.out.replace(".json", "-whole.json")
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
