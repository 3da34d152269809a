"""The learning runs side by side, one row each, against the goals of the learning issue.

    python benchmarks/learning_runs.py headline=benchmarks/results/headline-amx-metrics.json \\
        genres-title=benchmarks/results/gt-metrics.json ... --base-len 4.08 [--json OUT]

Each argument is ``NAME=PATH`` of a loop run's ``metrics.json`` (a run folder's, or a copy kept under
``benchmarks/results``). From it the row takes the base model's, ULRec-P's and each ULRec iteration's Len (mean and
95% interval on the run's test users), and the oracle's Traj Reward from the run's reference rows. Then it checks
the goals, each as the issue words it:

* **never falls**: ULRec's Len at each iteration is at least the previous iteration's (point estimates);
* **apart from ULRec-P**: the last ULRec's interval lies above ULRec-P's (``mean - ci > mean + ci``);
* **x base**: the last ULRec's Len over the base model's (``--base-len`` sets one base for every row, e.g. the title
  preset's 4.08 for runs whose own base model writes another completion; otherwise each run's own); **x own base**
  always over the run's own base model;
* **oracle share**: the last ULRec's Traj Reward over the oracle's, on the same users.

``machine`` is the first entry of the run's ``sessions`` record (CPU and the dtype ``auto`` resolved to) where the
run wrote one. Reads files only; runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.loop import policy_evals, reference_row  # noqa: E402
from ulrec_env.safe_io import read_text_bounded  # noqa: E402

GOAL_X_BASE = 3.6
GOAL_ORACLE_SHARE = 0.70


def _row(name: str, doc: dict[str, Any], base_len: float | None) -> dict[str, Any]:
    base, ulrec_p, ulrec = (policy_evals(doc, p) for p in ("base", "ulrec-p", "ulrec"))
    if not ulrec:
        raise SystemExit(f"{name}: no ULRec evaluation in its metrics.json; name a run that finished an iteration.")
    oracle = reference_row(doc, "oracle")
    last = ulrec[-1]
    denominator = base_len if base_len is not None else (base[0]["len_mean"] if base else None)
    lens = [e["len_mean"] for e in ulrec]
    sessions = doc.get("sessions") or []
    machine = f"{sessions[0].get('cpu')}, {sessions[0].get('dtype')}" if sessions else None
    row = {
        "run": name,
        "base": base[0]["len_mean"] if base else None,
        "ulrec_p": ulrec_p[0]["len_mean"] if ulrec_p else None,
        "ulrec_p_ci95": ulrec_p[0]["len_ci95"] if ulrec_p else None,
        "ulrec": lens,
        "ulrec_ci95": [e["len_ci95"] for e in ulrec],
        "never_falls": all(b >= a for a, b in zip(lens, lens[1:])),
        "apart_from_ulrec_p": (last["len_mean"] - last["len_ci95"] > ulrec_p[0]["len_mean"] + ulrec_p[0]["len_ci95"])
        if ulrec_p else None,
        "x_base": last["len_mean"] / denominator if denominator else None,
        "x_own_base": last["len_mean"] / base[0]["len_mean"] if base else None,
        "oracle_share": last["return_mean"] / oracle["return_mean"] if oracle else None,
        "machine": machine,
    }
    return row


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "" if v is None else format(v, spec)


def _yes(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")


def table(rows: list[dict[str, Any]]) -> str:
    n = max(len(r["ulrec"]) for r in rows)
    head = (["run", "base", "ULRec-P"] + [f"ULRec @{k}" for k in range(1, n + 1)]
            + ["never falls", "apart from ULRec-P", "x base", "x own base", "oracle share", "machine"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], _fmt(r["base"]),
                 f"{_fmt(r['ulrec_p'])} ± {_fmt(r['ulrec_p_ci95'])}" if r["ulrec_p"] is not None else ""]
        cells += [f"{m:.2f} ± {c:.2f}" for m, c in zip(r["ulrec"], r["ulrec_ci95"])] + [""] * (n - len(r["ulrec"]))
        share = "" if r["oracle_share"] is None else f"{100 * r['oracle_share']:.1f}%"
        cells += [_yes(r["never_falls"]), _yes(r["apart_from_ulrec_p"]), _fmt(r["x_base"]), _fmt(r["x_own_base"]),
                  share, r["machine"] or "not recorded"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=PATH", help="a name for the row and a loop run's metrics.json")
    ap.add_argument("--base-len", type=float, default=None,
                    help="one base Len for every row's 'x base' (default: each run's own base model)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    rows = []
    for arg in a.runs:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{arg!r}: give each run as NAME=PATH (a name for the row, then its metrics.json).")
        p = Path(path)
        if p.is_dir():
            p = p / "metrics.json"
        if not p.is_file():
            raise SystemExit(f"{path}: no such metrics.json; name a loop run's folder or its metrics.json.")
        rows.append(_row(name, json.loads(read_text_bounded(p, "a run's metrics.json")), a.base_len))
    print(table(rows))
    doc = {"base_len": a.base_len, "goals": {"x_base": GOAL_X_BASE, "oracle_share": GOAL_ORACLE_SHARE}, "rows": rows}
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
