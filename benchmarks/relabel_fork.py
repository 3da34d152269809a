"""A fork of a loop run whose KTO stage at iteration K learns from the same own sessions labelled another way.

``ulrec loop --fork-from RUN --fork-at K --extra-negatives N`` reruns iteration K from its rollout, and at K = 1
that means ULRec-P's SFT again (the teacher's labels change too). To ask only "what if the model's own sessions
were labelled with other options?", this script forks RUN at K keeping every stage before the KTO data (the
teacher's labels and ULRec-P included), relabels the own rollout of iteration K (``iterK/rollout-own`` at K = 1
with a teacher, else ``iterK/rollout``) with the options given (``--extra-negatives``, ``--min-positives``, and
``--keep-best`` for a run that played each user several times), and records that in the fork's ``fork.json``
under ``changed`` (so ``benchmarks/loop_variants.py`` names it). The iterations before K and the teacher's data
that the KTO data replays keep the parent's labels. Then the loop finishes the fork::

    python benchmarks/relabel_fork.py runs/gtt runs/gtt-xneg0 --at 1 --extra-negatives 0
    ulrec loop --fork-from runs/gtt --fork-at 1 --iterations 1 --resume --out runs/gtt-xneg0

(``--iterations`` as given here; the fork's settings are the parent's with that one change.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.loop import LoopSettings, Manifest, fork_run  # noqa: E402
from train.pipeline import label_folder  # noqa: E402
from ulrec_env.storage import atomic_write_text  # noqa: E402


#: The label options this script may change for the own sessions of one iteration (see train.labeling.LabelOptions).
RELABEL_OPTIONS = ("extra_negatives", "min_positives", "keep_best")


def relabel_fork(parent: Path, out: Path, at: int, iterations: int, extra_negatives: int | None,
                 min_positives: int | None, keep_best: int | None = None) -> dict:
    """Fork ``parent`` at ``at`` into ``out`` and relabel iteration ``at``'s own sessions; returns the new report."""
    given = {k: v for k, v in zip(RELABEL_OPTIONS, (extra_negatives, min_positives, keep_best)) if v is not None}
    if not given:
        raise SystemExit("nothing to relabel: give --extra-negatives, --min-positives and/or --keep-best.")
    settings = LoopSettings.from_run(parent)
    settings = dataclasses.replace(settings, iterations=iterations)
    try:  # the loop's own checks of these options (keep_best against the run's sessions_per_user), before any write
        opts = dataclasses.replace(settings, **given).label_options()
    except ValueError as e:
        hint = f" A fork keeps the parent's sessions_per_user ({settings.sessions_per_user})." if keep_best else ""
        raise SystemExit(f"{parent}: {e}{hint}") from None
    fork_run(parent, at, settings, out)
    own = "-own" if at == 1 and settings.teacher is not None else ""
    label_stage = f"iter{at}/labels-own" if own else f"iter{at}/label"
    manifest = Manifest(out)
    if label_stage not in manifest.stages:
        raise SystemExit(f"{parent} has no finished stage {label_stage} to relabel; fork it at another iteration.")
    changed = {f"{k} (own sessions of this iteration only)": [getattr(settings, k), v] for k, v in given.items()}
    folder = out / f"iter{at}" / f"labels{own}"
    shutil.rmtree(folder)
    report = label_folder(out / f"iter{at}" / f"rollout{own}", folder, opts,
                          meta={"iteration": at, "relabelled": {k: v[1] for k, v in changed.items()}})
    # fork_run copies no KTO data of iteration `at`: the loop builds it from these labels
    manifest.record(label_stage, {**manifest.stages[label_stage], "report": report.to_dict(), "path": str(folder)})
    fork_file = out / "fork.json"
    doc = json.loads(fork_file.read_text())
    doc["changed"].update(changed)
    doc["copied_stages"] = sorted(manifest.stages)
    atomic_write_text(fork_file, json.dumps(doc, indent=2))
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parent", type=Path, help="the run to fork (a `ulrec loop` folder)")
    ap.add_argument("out", type=Path, help="the fork's folder (new)")
    ap.add_argument("--at", type=int, required=True, help="the iteration whose own sessions are relabelled")
    ap.add_argument("--iterations", type=int, default=None, help="the fork's iterations (default: --at)")
    ap.add_argument("--extra-negatives", type=int, default=None)
    ap.add_argument("--min-positives", type=int, default=None)
    ap.add_argument("--keep-best", type=int, default=None,
                    help="only each user's K longest own sessions give desirable steps (0: every session)")
    a = ap.parse_args(argv)
    report = relabel_fork(a.parent, a.out, a.at, a.iterations or a.at, a.extra_negatives, a.min_positives,
                          a.keep_best)
    print(json.dumps(report))
    print(f"now: ulrec loop --fork-from {a.parent} --fork-at {a.at} --iterations {a.iterations or a.at} --resume "
          f"--out {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
