"""Evaluate an adapter trained outside a loop run exactly as that run evaluates its own: same world, test users,
prompt format, dtype, greedy decoding and seed (``train.loop.evaluate_llm`` with the run's ``settings.json``).

    ulrec tune --stage sft --data runs/gtt/iter1/labels --init-adapter runs/gtt/iter1/ulrec-p \\
        --max-steps 80 --learning-rate 5e-4 --out runs/gtt-sft80
    python benchmarks/eval_adapter.py runs/gtt runs/gtt-sft80 --name sft80 [--json OUT]

Prints the row (Len and Traj Reward with 95% intervals, leave reasons) and writes it as JSON with ``--json``; the
row's ``"trained"`` keeps what the adapter's ``ulrec_adapter.json`` says it was trained with (stage, starting
adapter, hyperparameters, label counts), when the folder has one.

``--temperature T`` (T > 0) samples instead of decoding greedily, seeded by the run's seed, to ask what greedy
decoding costs a model; the row records ``"temperature"``. The loop's own evaluations are always greedy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.loop import LoopSettings, eval_users, evaluate_llm  # noqa: E402


def run_evaluation_setup(run: Path, adapter: Path | None) -> tuple[LoopSettings, Any, Any]:
    """``(settings, world, test users)`` with which loop run ``run`` evaluates, after checking that ``run`` is a
    loop run's folder and ``adapter`` (``None``: the base model) an adapter folder (``SystemExit`` naming the fix)."""
    if not (run / "settings.json").is_file():
        raise SystemExit(f"{run}: no settings.json; name the folder of a `ulrec loop` run.")
    if adapter is not None and not adapter.is_dir():
        raise SystemExit(f"{adapter}: no such adapter folder; name what `ulrec tune --out` or a loop wrote.")
    from ulrec_env.worlds.spec import world_from_spec

    settings = LoopSettings.from_run(run)
    world = world_from_spec(settings.world)
    return settings, world, eval_users(world, settings)


def evaluate(run: Path, adapter: Path | None, name: str, progress: bool = False,
             temperature: float = 0.0) -> dict[str, Any]:
    """The evaluation row of ``adapter`` (``None``: the run's base model) on the test users of loop run ``run``,
    with that run's settings (greedy unless ``temperature > 0``)."""
    settings, world, users = run_evaluation_setup(run, adapter)
    adapter_path = None if adapter is None else str(adapter)
    row = evaluate_llm(world, settings, users, adapter_path, name, progress=progress, temperature=temperature)
    row.update(run=str(run), adapter=adapter_path, trained=None if adapter is None else trained_with(adapter),
               temperature=float(temperature))
    return row


def trained_with(adapter: Path) -> dict[str, Any] | None:
    """What ``adapter``'s ``ulrec_adapter.json`` records of its training, or ``None`` for a folder without one."""
    from train.tune import read_sidecar

    try:
        side = read_sidecar(adapter)
    except FileNotFoundError:
        return None
    keys = ("stage", "init_adapter", "hyperparameters", "label_counts", "n_train_examples", "global_step",
            "final_train_loss")
    return {k: side[k] for k in keys if k in side}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the loop run whose settings and test users to use")
    ap.add_argument("adapter", type=Path, help="the adapter folder to evaluate")
    ap.add_argument("--name", default="adapter", help="the row's policy name")
    ap.add_argument("--json", type=Path, default=None, help="also write the row here")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sample at this temperature instead of decoding greedily (default 0: greedy, as the loop)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if not a.temperature >= 0:
        ap.error(f"--temperature must be >= 0 (0 is greedy), got {a.temperature}.")
    row = evaluate(a.run, a.adapter, a.name, progress=not a.no_progress, temperature=a.temperature)
    reasons = ", ".join(f"{k} {v:g}" for k, v in sorted(row["leave_reasons"].items(), key=lambda kv: -kv[1]))
    print(f"| {a.name} | {row['len_mean']:.2f} ± {row['len_ci95']:.2f} | {row['return_mean']:.1f} ± "
          f"{row['return_ci95']:.1f} | {reasons} |")
    if a.json is not None:
        from agents.benchmark import write_json

        write_json(row, a.json)
    return row


if __name__ == "__main__":
    main()
