"""train.loop.paired_steps: which evaluations of a run it pairs, and the rows it leaves out."""

from __future__ import annotations

import numpy as np
import pytest

from agents.evaluation import paired_difference
from train.loop import paired_steps


def _row(policy: str, iteration: int, lens: list[float] | None) -> dict:
    row = {"policy": policy, "iteration": iteration, "len_mean": float(np.mean(lens or [0.0]))}
    if lens is not None:
        row["per_user"] = {"users": list(range(len(lens))), "len": lens, "return": [2 * x for x in lens]}
    return row


def test_each_ulrec_is_paired_with_what_it_was_tuned_from_and_with_ulrec_p():
    evals = [_row("base", 0, [1.0, 2.0, 3.0]), _row("ulrec-p", 1, [2.0, 2.0, 5.0]),
             _row("ulrec", 1, [3.0, 4.0, 5.0]), _row("ulrec", 2, [3.0, 6.0, 8.0])]
    pairs = paired_steps(evals)
    assert [(p["policy"], p["against"]) for p in pairs] == [
        ("ulrec@1", "ulrec-p@1"), ("ulrec@2", "ulrec@1"), ("ulrec@2", "ulrec-p@1")]
    assert pairs[1]["len"] == paired_difference(evals[2], evals[3], "len")
    assert pairs[1]["len"]["mean"] == pytest.approx((0 + 2 + 3) / 3)
    assert pairs[2]["return"]["mean"] == pytest.approx(2 * (1 + 4 + 3) / 3)


def test_without_ulrec_p_the_first_iteration_pairs_with_the_base_model():
    evals = [_row("base", 0, [1.0, 2.0]), _row("ulrec", 1, [2.0, 4.0])]
    pairs = paired_steps(evals)
    assert [(p["policy"], p["against"]) for p in pairs] == [("ulrec@1", "base@0")]
    assert pairs[0]["len"]["mean"] == pytest.approx(1.5)


def test_rows_without_per_user_means_are_left_out():
    # A fork of a run written before ulrec kept per-user means: ULRec-P and iteration 1 copied from the old parent
    # (no per_user), iterations 2 and 3 evaluated by the fork.
    evals = [_row("base", 0, None), _row("ulrec-p", 1, None), _row("ulrec", 1, None),
             _row("ulrec", 2, [3.0, 5.0, 4.0]), _row("ulrec", 3, [4.0, 5.0, 7.0])]
    pairs = paired_steps(evals)
    assert [(p["policy"], p["against"]) for p in pairs] == [("ulrec@3", "ulrec@2")]
    assert pairs[0]["len"]["mean"] == pytest.approx((1 + 0 + 3) / 3)
    assert paired_steps(evals[:3]) == []
