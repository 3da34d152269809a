"""The `ulrec` command line: bench, rollout, label, tune, loop, compare, demo."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, Sequence

from train.labeling import BALANCE_BY as BALANCE_CHOICES
from train.options import parse_episodes
from train.tune import LR_SCHEDULES

__all__ = ["main", "build_parser", "parse_command", "loop_settings_from_args", "settings_for_command"]


_WORLD_HELP = ("synthetic | synthetic:SEED | ml-100k | ml-100k:PATH | billp:PATH:DATASET:SPLIT | "
               "ratings:RATINGS.csv[:ITEMS.csv][:key=value...] (from_ratings' options, e.g. user_col=uid)")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, wrapping lines only at spaces: names with hyphens (``genre-cycle-words``) stay whole,
    so that ``--help`` lists each registered policy name as it is typed."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import re
        import textwrap

        return textwrap.wrap(re.sub(r"\s+", " ", text).strip(), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`_HelpFormatter`; its sub-commands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_env_options(p: argparse.ArgumentParser, *, world_and_horizon: bool = True) -> None:
    """``ULRec-v0``'s settings, one option per :class:`~ulrec_env.config.EnvConfig` field (not ``split``: the
    commands choose their users themselves), with ``--world`` and ``--max-episode-steps`` unless the command's
    settings dataclass has them."""
    from train.options import add_dataclass_options
    from ulrec_env.config import EnvConfig

    g = p.add_argument_group("environment (ULRec-v0 settings; defaults come from the world)")
    if world_and_horizon:
        g.add_argument("--world", default="synthetic", help=_WORLD_HELP)
        g.add_argument("--max-episode-steps", type=int, default=100, help="horizon (default 100)")
    add_dataclass_options(g, EnvConfig, skip=_ENV_SKIP, default_text="default: the world's, else {}")
    _add_trust_options(g)


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    from agents.prompting import PromptFormat
    from train.options import add_dataclass_options

    g = p.add_argument_group("prompt format (default: the --llm-adapter's, else the values shown)")
    add_dataclass_options(g, PromptFormat)


def _prompt_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The prompt-format fields typed on the command line (``None``: none typed, the adapter's format)."""
    from agents.prompting import PromptFormat
    from train.options import typed_values

    return typed_values(args, PromptFormat) or None


def _add_dtype_option(p: Any) -> None:
    from agents.models import DTYPE_CHOICES

    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="compute dtype of the LLM: auto (default) = bfloat16 on a GPU or a CPU with AMX/AVX512-BF16, "
                        "else float32")


def _add_engine_option(p: Any) -> None:
    from agents.vllm_engine import ENGINES

    p.add_argument("--engine", default="transformers", choices=ENGINES,
                   help="where the llm policy decodes: transformers (default, in this process) or vllm (needs "
                        "`pip install 'ulrec[vllm]'`; engine arguments from $ULREC_VLLM_OPTIONS, a JSON object)")


def _add_trust_options(g: Any) -> None:
    g.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="trust pickles in the world's folder, model or adapter (a pickle can run code; "
                        "default: numpy arrays from pickles, safetensors weights only)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code that a model folder ships (transformers' trust_remote_code; default off)")


def _env_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ULRec-v0`` settings typed on the command line."""
    from train.options import typed_values
    from ulrec_env.config import EnvConfig

    return typed_values(args, EnvConfig, skip=_ENV_SKIP)


def _policy_help() -> str:
    from agents.registry import registered

    return (", ".join(registered()) + "; or package.module:Class or path/to/file.py:Class, each with optional "
            ":key=value options; llm:NAME=ADAPTER for an adapter's row (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ulrec", description="Long-term LLM recommendation: simulate, benchmark, tune.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bench", help="benchmark policies in the environment; prints a table, writes JSON and a plot")
    _add_env_options(b)
    b.add_argument("--split", default="test", choices=["train", "test", "all"])
    b.add_argument("--policies", default="random,popular,greedy,mmr,oracle",
                   help="comma-separated policy specs: " + _policy_help())
    b.add_argument("--episodes", type=parse_episodes(), default=200, help="sessions per seed, or 'all' users of the split")
    b.add_argument("--per-session", action="store_true",
                   help="the JSON lists every session (user, seed, length, return, items; raw data ids where the world has them)")
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    b.add_argument("--batch-size", type=int, default=256, help="sessions stepped together")
    b.add_argument("--llm-model", default=None, help="model of the llm policy (default SmolLM2-135M-Instruct)")
    b.add_argument("--llm-adapter", default=None, help="LoRA adapter folder for the llm policy")
    _add_dtype_option(b)
    _add_engine_option(b)
    _add_prompt_options(b)
    b.add_argument("--json", default=None, help="write the results here")
    b.add_argument("--plot", default=None, help="write a PNG plot here")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_bench)

    r = sub.add_parser("rollout", help="run a policy on train users and save every step (prompt, item, feedback)")
    _add_env_options(r)
    r.add_argument("--policy", default="llm", help="a policy spec (default llm): " + _policy_help())
    r.add_argument("--llm-model", default=None, help="model of the llm policy, and tokenizer of prompts written for baselines")
    r.add_argument("--llm-adapter", default=None, help="LoRA adapter folder for the llm policy")
    _add_dtype_option(r)
    _add_engine_option(r)
    r.add_argument("--episodes", type=parse_episodes(), default=256, help="sessions, or 'all' users of the split")
    r.add_argument("--sessions-per-user", type=int, default=1, metavar="N",
                   help="play each chosen user N times (sampled sessions differ; for --keep-best)")
    r.add_argument("--split", default="train", choices=["train", "test", "all"])
    r.add_argument("--temperature", type=float, default=1.0, help="llm sampling temperature (exploration)")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--out", required=True, help="folder to write (steps.jsonl, summary.json)")
    r.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out")
    r.add_argument("--no-progress", action="store_true")
    _add_prompt_options(r)
    r.set_defaults(func=_cmd_rollout)

    lab = sub.add_parser("label", help="turn a rollout into unpaired desirable/undesirable examples")
    lab.add_argument("rollout", help="folder written by `ulrec rollout`")
    lab.add_argument("--out", required=True, help="folder to write (examples.jsonl, meta.json)")
    lab.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out")
    lab.add_argument("--min-positives", type=int, default=2, help="episodes with fewer positives give none (seed: 2)")
    lab.add_argument("--extra-negatives", type=int, default=0, help="also label the k steps before a redundant/bored leave undesirable")
    lab.add_argument("--length-weighting", action="store_true", help="weight examples by their session's length")
    lab.add_argument("--keep-best", type=int, default=0, metavar="K",
                     help="only each user's K longest sessions give desirable examples (0: all do)")
    lab.set_defaults(func=_cmd_label)

    t = sub.add_parser("tune", help="fine-tune the recommender on labelled examples (sft: ULRec-P, kto: ULRec)")
    t.add_argument("--stage", required=True, choices=["sft", "kto"])
    t.add_argument("--data", required=True, help="folder written by `ulrec label`")
    t.add_argument("--model", default=None, help="base model (default SmolLM2-135M-Instruct)")
    t.add_argument("--init-adapter", default=None, help="adapter to continue from (ULRec-P's for the kto stage)")
    t.add_argument("--out", required=True, help="adapter folder to write; `--llm-adapter` accepts it")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    t.add_argument("--epochs", type=float, default=None)
    t.add_argument("--learning-rate", type=float, default=None)
    t.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES,
                   help="cosine: 10%% warm-up, then cosine decay to 0 (default); constant: the learning rate from "
                        "the first step to the last, no warm-up")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--beta", type=float, default=None, help="KTO beta")
    t.add_argument("--sft-alpha", type=float, default=None, help="weight of the SFT term in the kto stage (0 turns it off)")
    t.add_argument("--balance-by", default="weights", choices=BALANCE_CHOICES,
                   help="kto stage: balance desirable against undesirable examples by TRL's loss weights (weights) "
                        "or by a seeded subset of the commoner label with weights 1 (subsample)")
    t.add_argument("--no-shuffle", action="store_true",
                   help="kto stage: train on the rows in the data's order (by default they are shuffled once, seeded "
                        "by --seed, since the KTO trainer batches them in order to form its KL pairs)")
    t.add_argument("--full-finetune", action="store_true", help="train all weights instead of LoRA")
    t.add_argument("--lora-layers", type=int, default=None,
                   help="LoRA only in the last N transformer blocks (about 2x faster steps on a CPU with 10 of 30); default all")
    t.add_argument("--overwrite", action="store_true", help="replace --out (and discard checkpoints of an interrupted run)")
    t.add_argument("--save-steps", type=int, default=None, help="write a checkpoint every N optimizer steps")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its newest checkpoint")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true", help="no progress bars (training, model loading)")
    _add_dtype_option(t)
    _add_trust_options(t)
    t.set_defaults(func=_cmd_tune)

    for cmd, helptext in (("loop", "rollout -> label -> tune -> evaluate, for several iterations; resumable"),
                          ("compare", "the paper's table: base, ULRec-P, ULRec, ablations, baselines (trains what it needs)")):
        lp = sub.add_parser(cmd, help=helptext)
        _add_loop_options(lp)
        if cmd == "loop":
            lp.add_argument("--fork-from", default=None, metavar="RUN",
                            help="start as a copy of run folder RUN up to iteration --fork-at, with RUN's settings "
                                 "and the options typed here (those acting from that iteration on: a variant of "
                                 "one setting costs only the iterations it changes); writes fork.json")
            lp.add_argument("--fork-at", default=None, type=int, metavar="K",
                            help="the first iteration the fork runs itself (with --fork-from)")
        if cmd == "compare":
            lp.add_argument("--json", default=None, help="write the table in the `ulrec bench` JSON format")
            lp.add_argument("--plot", default=None, help="write a PNG plot of the table")
        lp.set_defaults(func=_cmd_loop if cmd == "loop" else _cmd_compare)

    cb = sub.add_parser("convert-billp", help="rewrite a BiLLP folder's distance pickles as .npy, after which no pickle is read")
    cb.add_argument("path", help="the dataset folder (holding datamaps.json) or its parent")
    cb.add_argument("--dataset", default="steam", help="dataset name when PATH is the parent folder (default steam)")
    cb.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="read pickles that hold more than numpy arrays (only for files you trust)")
    cb.set_defaults(func=_cmd_convert_billp)

    d = sub.add_parser("demo", help="a short loop with SmolLM2 on the default world; prints the before/after table")
    d.add_argument("--out", default=None, help="run folder (default runs/demo)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return parser


#: EnvConfig fields without an option: ``split`` says which users ``reset`` draws, and every command chooses its
#: users itself (``--split``, the loop's train/test users).
_ENV_SKIP = ("split",)


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; for `loop` and `compare` also list the settings fields the typed options set
    (``args.typed``, what :func:`settings_for_command` lays over a preset or a resumed run's settings and records
    as ``preset_overrides``), even one typed with the default's value: settings options have no parsed default,
    so only typed ones are in the namespace."""
    args = build_parser().parse_args(list(argv))
    if args.command in ("loop", "compare"):
        args.typed = sorted(_typed_settings(args))
    return args


def _typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~train.loop.LoopSettings` fields typed on a `loop`/`compare` command line (``env`` holds the
    typed ``ULRec-v0`` settings)."""
    from train.loop import LoopSettings
    from train.options import typed_values

    over = typed_values(args, LoopSettings)
    env = _env_settings(args)
    if env:
        over["env"] = env
    return over


def _add_loop_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`~train.loop.LoopSettings` field (its docstring is the help), the ``ULRec-v0``
    settings, and the command's own: ``--preset``, ``--out``, ``--resume``, ``--no-progress``."""
    from train.loop import PRESETS, LoopSettings
    from train.options import add_dataclass_options

    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="start from a named recipe (headline: the README's learning run); options typed with it "
                        "override its values and are recorded")
    _add_env_options(p, world_and_horizon=False)
    g = p.add_argument_group("loop settings (LoopSettings; policy specs: " + _policy_help().replace(" (default: %(default)s)", "") + ")")
    add_dataclass_options(g, LoopSettings)
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished stages")
    p.add_argument("--no-progress", action="store_true")


def loop_settings_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """``base`` (default :class:`~train.loop.LoopSettings()`) with the settings typed on a `loop`/`compare`
    command line laid over it (typed ``ULRec-v0`` settings over ``base.env``)."""
    from train.loop import LoopSettings

    base = LoopSettings() if base is None else base
    over = _typed_settings(args)
    if "env" in over:
        over["env"] = {**base.env, **over["env"]}
    return dataclasses.replace(base, **over)


def _print_evals(doc: dict) -> None:
    from agents.benchmark import format_table

    rows = [{**e, "policy": f"{e['policy']}@{e['iteration']}"} for e in doc["evals"]] + doc.get("references", [])
    s = doc["settings"]
    print(format_table({"results": rows, "world": doc["world"], "settings": {
        "split": "test", "episodes": s["eval_episodes"], "seeds": [s["seed"]],
        "env": {"leave_rule": s["env"].get("leave_rule", "satisfaction")}, "max_episode_steps": s["max_episode_steps"]}}))
    if doc.get("paired"):
        print("Paired on the same users (mean of per-user differences, 95% interval):")
        for p in doc["paired"]:
            d = p["len"]
            print(f"  {p['policy']} - {p['against']}: Len {d['mean']:+.2f} ± {d['ci95']:.2f} ({d['users']} users)")
    if any("per_user" not in e for e in doc["evals"]):
        print("(rows written before ulrec kept per-user means are not paired; "
              "python benchmarks/paired_evals.py RUN evaluates them again and pairs them)")


def settings_for_command(args: argparse.Namespace):
    """The loop settings of this command: a preset's (``--preset``) or the defaults, with the typed options laid
    over them; resuming a run, the saved ones with the typed options laid over them (so `--resume` alone
    continues a run as it was)."""
    from pathlib import Path

    from train.loop import PRESETS, LoopSettings, fork_parent_settings

    path = Path(args.out) / "settings.json"
    resuming = path.is_file() and (args.command == "compare" or args.resume)
    preset = getattr(args, "preset", None)
    typed = sorted(_typed_settings(args))
    fork_from = getattr(args, "fork_from", None)
    if (fork_from is None) != (getattr(args, "fork_at", None) is None):
        raise ValueError("--fork-from and --fork-at go together: --fork-from RUN --fork-at K.")
    if fork_from is not None and not resuming:  # the parent's settings, with the typed options laid over them
        base = fork_parent_settings(fork_from)
        if preset is not None and base.preset != preset:
            raise ValueError(f"--fork-from {fork_from} is a run of "
                             f"{'preset ' + repr(base.preset) if base.preset else 'no preset'}, not --preset {preset}; "
                             "drop --preset (a fork keeps its parent's settings).")
        _confirm_saved_specs(base, typed, fork_from)
        overrides = tuple(sorted(set(base.preset_overrides) | set(typed))) if base.preset else ()
        return dataclasses.replace(loop_settings_from_args(args, base), preset_overrides=overrides)
    if resuming:
        base = LoopSettings.from_run(args.out)
        if preset is not None and base.preset != preset:
            raise ValueError(f"{args.out} holds a run of {'preset ' + repr(base.preset) if base.preset else 'no preset'}, "
                             f"not --preset {preset}; drop --preset to resume it, or choose another --out.")
        _confirm_saved_specs(base, typed, args.out)
        return loop_settings_from_args(args, base)
    if preset is None:
        return loop_settings_from_args(args)
    return dataclasses.replace(loop_settings_from_args(args, PRESETS[preset]), preset=preset,
                               preset_overrides=tuple(typed))


def _confirm_saved_specs(saved, typed, out: str) -> None:
    """A run folder is data: a teacher or reference in its settings that names a file or module (code to run) is
    used only when this command line types it again."""
    from agents.registry import parse_spec

    for name in ("teacher", "references"):
        value = getattr(saved, name)
        specs = [value] if isinstance(value, str) else list(value or ())
        code = [s for s in specs if parse_spec(s)[1] is not None]
        if code and name not in typed:
            flag = "--" + name
            raise ValueError(f"{out}/settings.json names code to run as its {name}: {', '.join(code)}; a run folder does "
                             f"not import code by itself. Type it again to confirm: {flag} {','.join(specs)}")


def _cmd_loop(args: argparse.Namespace) -> int:
    from train.loop import run_loop

    doc = run_loop(settings_for_command(args), args.out, resume=args.resume, progress=not args.no_progress,
                   allow_unsafe_pickle=args.allow_unsafe_pickle, trust_remote_code=args.trust_remote_code,
                   fork_from=args.fork_from, fork_at=args.fork_at)
    _print_evals(doc)
    print(f"run folder: {args.out} (metrics.json, metrics.csv, learning_curve.png)")
    return 0


def _cmd_convert_billp(args: argparse.Namespace) -> int:
    from ulrec_env.worlds.billp import convert_billp

    for path in convert_billp(args.path, args.dataset, allow_unsafe_pickle=args.allow_unsafe_pickle):
        print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from agents.benchmark import format_table, plot_results, write_json
    from train.loop import run_compare

    doc = run_compare(settings_for_command(args), args.out, resume=True, progress=not args.no_progress,
                      allow_unsafe_pickle=args.allow_unsafe_pickle, trust_remote_code=args.trust_remote_code)
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_results(doc, args.plot, title=f"ulrec compare: {doc['world']}")
        print(f"wrote {args.plot}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from train.loop import DEMO_SETTINGS, run_loop

    out = args.out or "runs/demo"
    resume = _holds_demo_run(out, DEMO_SETTINGS) or args.resume
    print("ulrec demo: SmolLM2-135M-Instruct learns from simulated users' continue/leave feedback on the default "
          "world (one round: a prompt-reading rule's sessions -> ULRec-P (SFT) -> ULRec-P's own sessions -> "
          f"ULRec (KTO)); run folder {out}")
    doc = run_loop(DEMO_SETTINGS, out, resume=resume, progress=not args.no_progress)
    _print_evals(doc)
    print(f"learning curve: {out}/learning_curve.png; metrics: {out}/metrics.json")
    return 0


def _holds_demo_run(out: str, settings) -> bool:
    """Whether ``out`` holds a run of these demo settings (to resume); a run of other settings (an earlier
    version's demo) is refused rather than resumed with its old settings."""
    from pathlib import Path

    from train.loop import LoopSettings

    path = Path(out) / "settings.json"
    if not path.is_file():
        return False
    try:
        saved = LoopSettings.from_run(out)
    except (ValueError, TypeError):
        saved = None
    if saved != settings:
        raise ValueError(f"{out} holds a run with other settings than this version's demo (an earlier `ulrec demo`, or "
                         f"another run); remove the folder or pass --out to a new folder.")
    return True


def _cmd_rollout(args: argparse.Namespace) -> int:
    from agents.benchmark import make_policy
    from agents.llm import resolve_prompt_format
    from agents.registry import check_spec
    from train.pipeline import rollout_to_folder, rule_options, writes_own_prompts
    from ulrec_env.worlds.spec import world_from_spec

    check_spec(args.policy)
    _refuse_nonempty(args.out, args.overwrite)
    world = world_from_spec(args.world, allow_unsafe_pickle=args.allow_unsafe_pickle)
    # The format of the prompts of this rollout: the LLM's, or for a baseline the one the adapter (or model) that
    # trains on its steps reads; the prompt-reading rules then read no more than such prompts show.
    fmt = resolve_prompt_format(args.llm_adapter, _prompt_options(args))
    policy = make_policy(args.policy, llm_model=args.llm_model, llm_adapter=args.llm_adapter,
                         llm_batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                         trust_remote_code=args.trust_remote_code, allow_unsafe_pickle=args.allow_unsafe_pickle,
                         dtype=args.dtype, prompt_format=fmt, engine=args.engine, **rule_options(fmt))
    tokenizer = None
    if not writes_own_prompts(policy):  # a baseline: its steps get the prompts the LLM would have been shown
        from agents.models import model_tokenizer

        tokenizer = model_tokenizer(args.llm_model, trust_remote_code=args.trust_remote_code)
    env = _env_settings(args)
    summary = rollout_to_folder(policy, world, args.out, episodes=args.episodes, split=args.split, seed=args.seed,
                                env_settings=env, max_episode_steps=args.max_episode_steps,
                                batch_size=args.batch_size, prompt_format=fmt, tokenizer=tokenizer,
                                sessions_per_user=args.sessions_per_user, progress=not args.no_progress, meta={
                                    "policy": args.policy, "llm_model": args.llm_model, "llm_adapter": args.llm_adapter,
                                    "temperature": args.temperature, "seed": args.seed, "split": args.split,
                                    "env": env, "max_episode_steps": args.max_episode_steps})
    print(f"{summary['episodes']} episodes, {summary['steps']} steps, Len {summary['len_mean']:.2f}, "
          f"return {summary['return_mean']:.1f}, leave reasons {summary['leave_reasons']} -> {args.out}")
    return 0


def _bench_rule_options(args: argparse.Namespace) -> dict[str, Any]:
    """The prompt-reading rules of a bench read what prompts in the typed format (over the --llm-adapter's) show."""
    from agents.llm import resolve_prompt_format
    from train.pipeline import rule_options

    return rule_options(resolve_prompt_format(args.llm_adapter, _prompt_options(args)))


def _refuse_nonempty(out: str, overwrite: bool) -> None:
    """Commands that write a folder refuse one that holds files, unless --overwrite."""
    from pathlib import Path

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder.")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty; choose another folder or pass --overwrite.")


def _cmd_label(args: argparse.Namespace) -> int:
    from train.labeling import LabelOptions, recommend_weights
    from train.pipeline import label_folder

    _refuse_nonempty(args.out, args.overwrite)
    opts = LabelOptions(min_positives=args.min_positives, extra_negatives=args.extra_negatives,
                        length_weighting=args.length_weighting, keep_best=args.keep_best)
    report = label_folder(args.rollout, args.out, opts)
    print(f"{report.desirable} desirable, {report.undesirable} undesirable examples from {report.episodes} episodes "
          f"({report.truncated_episodes} truncated, {report.filtered_episodes} below --min-positives"
          + (f", {report.below_best_episodes} below --keep-best" if args.keep_best else "") + "); "
          f"leave reasons {report.leave_reasons} -> {args.out}")
    if report.desirable and report.undesirable:
        dw, uw = recommend_weights(report.desirable, report.undesirable)
        print(f"KTO weights for TRL's band: desirable_weight={dw:.3f}, undesirable_weight={uw:.3f}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from train.pipeline import stage_trainer_args
    from train.tune import TuneConfig, lr_schedule_args, tune

    if args.stage == "sft" and (args.beta is not None or args.sft_alpha is not None or args.balance_by != "weights"
                                or args.no_shuffle):
        raise SystemExit("ulrec tune: --beta, --sft-alpha, --balance-by and --no-shuffle belong to the kto stage")
    trainer_args = stage_trainer_args(args.stage, args.out, lora=not args.full_finetune, seed=args.seed,
                                      dtype=args.dtype, progress=not args.no_progress, max_steps=args.max_steps,
                                      num_train_epochs=args.epochs, learning_rate=args.learning_rate,
                                      per_device_train_batch_size=args.batch_size, beta=args.beta,
                                      sft_alpha=args.sft_alpha, shuffle_train=False if args.no_shuffle else None,
                                      **lr_schedule_args(args.lr_schedule))
    result = tune(args.stage, args.data, args.model, out=args.out, init_adapter=args.init_adapter,
                  max_steps=args.max_steps, seed=args.seed,
                  config=TuneConfig(trainer_args=trainer_args, full_finetune=args.full_finetune, overwrite=args.overwrite,
                                    lora_top_layers=args.lora_layers, trust_remote_code=args.trust_remote_code,
                                    save_steps=args.save_steps, resume=args.resume, balance_by=args.balance_by,
                                    allow_unsafe_pickle=args.allow_unsafe_pickle))
    print(f"{args.stage}: {result.n_train_examples} examples, {result.global_step} steps in {result.train_seconds:.1f}s "
          f"({result.examples_per_second:.2f} examples/s) -> {result.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from agents.benchmark import benchmark, format_table, plot_results, write_json
    from agents.registry import check_spec, registered
    from ulrec_env.worlds.spec import world_from_spec

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not names:
        raise SystemExit(f"ulrec bench: no policy given; registered: {', '.join(registered())}")
    for spec in names:
        check_spec(spec)  # before loading the world: a typo fails at once
    if args.seeds < 1:
        raise SystemExit("ulrec bench: --seeds must be >= 1")
    world = world_from_spec(args.world, allow_unsafe_pickle=args.allow_unsafe_pickle)
    doc = benchmark(world, names, split=args.split, episodes=args.episodes, seeds=args.seeds,
                    env_settings=_env_settings(args), max_episode_steps=args.max_episode_steps,
                    batch_size=args.batch_size, progress=not args.no_progress,
                    policy_options={"llm_model": args.llm_model, "llm_adapter": args.llm_adapter,
                                    "trust_remote_code": args.trust_remote_code, "dtype": args.dtype,
                                    "engine": args.engine, "allow_unsafe_pickle": args.allow_unsafe_pickle,
                                    "prompt_format": _prompt_options(args), **_bench_rule_options(args)},
                    per_session=args.per_session)
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_results(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so that the command ends like on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _resume_hint(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """What was kept, and the command that continues, for an interrupted command."""
    import shlex

    cmd = "ulrec " + shlex.join(argv)
    if args.command in ("loop", "compare", "demo"):
        out = getattr(args, "out", None) or "runs/demo"
        again = cmd if "--resume" in argv or args.command == "compare" else cmd + " --resume"
        return f"finished stages and tuning checkpoints are kept in {out}; continue with: {again}"
    if args.command == "tune":
        from train.tune import checkpoint_dir, last_checkpoint

        ckpt = last_checkpoint(checkpoint_dir(args.out))
        if ckpt is None:
            return f"no checkpoint was written (pass --save-steps N to keep some); run again: {cmd}"
        again = cmd if "--resume" in argv else cmd + " --resume"
        return f"checkpoint {ckpt.name} is kept in {ckpt.parent}; continue with: {again}"
    out = getattr(args, "out", None)
    if out and args.command in ("rollout", "label"):
        again = cmd if "--overwrite" in argv else cmd + " --overwrite"
        return f"{out} may hold part of the output; run again: {again}"
    return f"nothing was kept; run again: {cmd}"


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command(argv)
    from agents.progress import quiet_third_party

    quiet_third_party(progress=not getattr(args, "no_progress", False))
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        pass
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"ulrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated) as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"\nulrec {args.command}: {what}; {_resume_hint(args, argv)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
