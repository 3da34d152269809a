"""One iteration of a loop run against its variants: each variant a fork (``ulrec loop --fork-from RUN --fork-at K``)
that changes one setting; the table says what each change did to ULRec at iteration K and to its KTO stage.

    python benchmarks/loop_variants.py runs/headline runs/var-ref-init runs/var-replay0 ... --iteration 2
        [--json benchmarks/results/headline-variants.json]

The first folder is the run the variants forked from (its own iteration K is the control row); every other folder
must be a fork of it at K (its ``fork.json`` says so, and names the changed settings). From each run's
``metrics.json`` it reads the evaluation of ULRec at iteration K (Len and Traj Reward with 95% intervals, on the same
test users) and the logs of the KTO stage that trained it (``evals[].training.train_curve``): the mean implicit
reward of desirable ("chosen") and undesirable ("rejected") completions, their margin, the KL estimate, and in how
many logs the desirable reward was negative or the KL estimate was 0: the symptoms of the iteration that fell back.
Reads files only; runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.loop import policy_evals  # noqa: E402
from ulrec_env.safe_io import read_text_bounded  # noqa: E402


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _read_json(path: Path, what: str) -> Any:
    return json.loads(read_text_bounded(path, what))


def read_run(run: Path, parent: Path | None, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics.json, changed settings)`` of one run; with ``parent``, the run must be its fork at ``iteration``
    (``fork.json``), and the changes are the settings it typed (``--iterations`` aside)."""
    metrics = run / "metrics.json"
    if not metrics.is_file():
        raise SystemExit(f"{run}: no metrics.json; name the folder of a `ulrec loop` run that has evaluated "
                         f"iteration {iteration}.")
    doc = _read_json(metrics, "a run's metrics.json")
    if parent is None:
        return doc, {}
    fork = run / "fork.json"
    if not fork.is_file():
        raise SystemExit(f"{run}: no fork.json; a variant is a fork (`ulrec loop --fork-from {parent} "
                         f"--fork-at {iteration} ...`).")
    info = _read_json(fork, "a fork's fork.json")
    if Path(info["parent"]).resolve() != parent.resolve() or int(info["at"]) != iteration:
        raise SystemExit(f"{run}: forked from {info['parent']} at {info['at']}, not from {parent} at {iteration}.")
    return doc, {k: new for k, (_old, new) in info["changed"].items() if k != "iterations"}


def _ulrec_eval(doc: dict[str, Any], iteration: int) -> dict[str, Any] | None:
    """ULRec's newest evaluation at ``iteration``; None without one."""
    evals = policy_evals(doc, "ulrec", iteration)
    return evals[-1] if evals else None


def variant_row(run: Path, doc: dict[str, Any], changes: dict[str, Any], iteration: int) -> dict[str, Any]:
    """The row of one run: what it changed, ULRec at ``iteration`` and the logs of the KTO stage that trained it."""
    e = _ulrec_eval(doc, iteration)
    if e is None:
        raise SystemExit(f"{run}: no evaluation of ulrec at iteration {iteration} in metrics.json yet.")
    training = e.get("training") or {}
    curve = [c for c in training.get("train_curve") or [] if "rewards/chosen" in c]
    chosen = [float(c["rewards/chosen"]) for c in curve]
    kl = [float(c["kl"]) for c in curve if "kl" in c]
    return {
        "run": str(run), "changes": changes, "iteration": iteration,
        "len_mean": e["len_mean"], "len_ci95": e["len_ci95"],
        "return_mean": e["return_mean"], "return_ci95": e["return_ci95"],
        "desirable": training.get("desirable"), "undesirable": training.get("undesirable"),
        "trained_on": training.get("examples"),
        "kto_logs": len(curve),
        "rewards_chosen_mean": _mean(chosen),
        "rewards_rejected_mean": _mean([float(c["rewards/rejected"]) for c in curve if "rewards/rejected" in c]),
        "rewards_margins_mean": _mean([float(c["rewards/margins"]) for c in curve if "rewards/margins" in c]),
        "kl_mean": _mean(kl),
        "logs_chosen_negative": sum(v < 0 for v in chosen),
        "logs_kl_zero": sum(v == 0 for v in kl),
        "train_seconds": training.get("train_seconds"),
    }


def _ulrec_p_row(doc: dict[str, Any]) -> dict[str, Any] | None:
    """ULRec-P's evaluation (iteration 1), the adapter iteration 1's KTO stage starts from; None without one."""
    evals = policy_evals(doc, "ulrec-p")
    if not evals:
        return None
    e = evals[-1]
    return {"policy": "ulrec-p", "iteration": int(e["iteration"]), "len_mean": e["len_mean"], "len_ci95": e["len_ci95"],
            "return_mean": e["return_mean"], "return_ci95": e["return_ci95"]}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def format_rows(rows: list[dict[str, Any]], before: dict[str, Any] | None) -> str:
    head = ("| variant | Len (95% CI) | Traj Reward (95% CI) | vs control | desirable / undesirable | chosen reward "
            "| rejected reward | margin | KL | logs: chosen < 0, KL = 0 |")
    lines = [head, "|" + "---|" * 10]
    control = rows[0]
    if before is not None:
        what = "ULRec-P" if before.get("policy") == "ulrec-p" else f"iteration {before['iteration']}"
        lines.append(f"| {what} (before) | {before['len_mean']:.2f} ± {before['len_ci95']:.2f} "
                     f"| {before['return_mean']:.1f} ± {before['return_ci95']:.1f} | | | | | | | |")
    for i, r in enumerate(rows):
        name = ("control (the run's own)" if i == 0
                else ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "nothing changed (a rerun)")
        delta = "" if i == 0 else f"{r['len_mean'] - control['len_mean']:+.2f}"
        counts = f"{r['desirable']} / {r['undesirable']}"
        if r.get("trained_on") is not None and r["desirable"] is not None and r["undesirable"] is not None \
                and r["trained_on"] != r["desirable"] + r["undesirable"]:
            counts += f" (trained on {r['trained_on']})"  # a subset: --kto-balance subsample
        lines.append(
            f"| {name} | {r['len_mean']:.2f} ± {r['len_ci95']:.2f} | {r['return_mean']:.1f} ± {r['return_ci95']:.1f} "
            f"| {delta} | {counts} | {_fmt(r['rewards_chosen_mean'])} "
            f"| {_fmt(r['rewards_rejected_mean'])} | {_fmt(r['rewards_margins_mean'])} | {_fmt(r['kl_mean'])} "
            f"| {r['logs_chosen_negative']}/{r['kto_logs']}, {r['logs_kl_zero']}/{r['kto_logs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="the parent run, then its forks at --iteration")
    ap.add_argument("--iteration", type=int, default=2, help="the iteration the forks start at (--fork-at)")
    ap.add_argument("--json", default=None, help="where to write the rows (JSON)")
    args = ap.parse_args(argv)
    if args.iteration < 1:
        raise SystemExit(f"--iteration {args.iteration}: must be 1 or more (the iteration the forks start at).")
    parent = args.runs[0]
    parent_doc, _ = read_run(parent, None, args.iteration)
    rows = [variant_row(parent, parent_doc, {}, args.iteration)]
    rows += [variant_row(run, *read_run(run, parent, args.iteration), args.iteration) for run in args.runs[1:]]
    # what the forked KTO stage started from: the parent's previous iteration, or ULRec-P at iteration 1
    before = (variant_row(parent, parent_doc, {}, args.iteration - 1)
              if _ulrec_eval(parent_doc, args.iteration - 1) is not None else _ulrec_p_row(parent_doc))
    print(format_rows(rows, before))
    doc = {"parent": str(parent), "iteration": args.iteration, "before": before, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
