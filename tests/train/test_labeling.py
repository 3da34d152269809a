"""Labelling rules on hand-written trajectories, weights, and the data folder round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.labeling import (
    TRL_WEIGHT_BAND,
    LabelOptions,
    label_counts,
    label_steps,
    load_examples,
    recommend_weights,
    save_examples,
    subsample_to_band,
    weighted_ratio,
)
from train.records import StepRecord


def episode(ep: int, feedbacks: str, reason: str | None = None, truncated: bool = False) -> list[StepRecord]:
    """Steps of one episode from a string like "ccl" (c = continue, l = leave)."""
    n_cont = feedbacks.count("c")
    out = []
    for k, f in enumerate(feedbacks):
        leave = f == "l"
        out.append(
            StepRecord(
                episode=ep,
                user=ep,
                step=k,
                prompt=f"p{ep}.{k}",
                completion=f"t{ep}.{k}",
                item=10 * ep + k,
                title=f"t{ep}.{k}",
                rating=4.0,
                reward=0.0 if leave else 4.0,
                feedback="leave" if leave else "continue",
                leave_reason=reason if leave else None,
                truncated=truncated and k == len(feedbacks) - 1,
                session_len=n_cont,
                session_return=4.0 * n_cont,
            )
        )
    return out


def labels(examples):
    return [(e["episode"], e["step"], e["label"]) for e in examples]


def test_leave_at_first_step_gives_one_negative():
    ex, rep = label_steps(episode(0, "l", "low_rating"))
    assert labels(ex) == [(0, 0, False)]
    assert ex[0]["prompt"] == "p0.0" and ex[0]["completion"] == "t0.0" and ex[0]["reason"] == "low_rating"
    assert (rep.desirable, rep.undesirable, rep.leave_reasons) == (0, 1, {"low_rating": 1})


def test_continued_steps_positive_leave_negative():
    ex, rep = label_steps(episode(3, "cccl", "repeat"))
    assert labels(ex) == [(3, 0, True), (3, 1, True), (3, 2, True), (3, 3, False)]
    assert rep.leave_reasons == {"repeat": 1} and rep.episodes == 1 and rep.steps == 4


def test_truncated_session_has_no_negative():
    ex, rep = label_steps(episode(1, "ccc", truncated=True))
    assert labels(ex) == [(1, 0, True), (1, 1, True), (1, 2, True)]
    assert rep.undesirable == 0 and rep.truncated_episodes == 1


def test_repeats_within_episode_are_each_labelled():
    steps = episode(0, "ccl", "repeat")
    # the leave step repeats the first item: still one negative, the first occurrence stays positive
    steps[2] = StepRecord(**{**steps[2].to_dict(), "item": steps[0].item, "completion": steps[0].completion})
    ex, _ = label_steps(steps)
    assert labels(ex) == [(0, 0, True), (0, 1, True), (0, 2, False)]
    assert ex[0]["completion"] == ex[2]["completion"]


def test_min_positives_filter_drops_positives_keeps_negative():
    steps = episode(0, "cl", "bored") + episode(1, "ccl", "bored")
    ex, rep = label_steps(steps)  # seed default: min_positives=2
    assert labels(ex) == [(0, 1, False), (1, 0, True), (1, 1, True), (1, 2, False)]
    assert (rep.filtered_episodes, rep.filtered_positives) == (1, 1)
    ex_off, _ = label_steps(steps, LabelOptions(min_positives=0))
    assert labels(ex_off)[0] == (0, 0, True) and len(ex_off) == 5


def test_extra_negatives_only_for_named_reasons():
    steps = episode(0, "ccccl", "redundant") + episode(1, "ccccl", "low_rating")
    ex, rep = label_steps(steps, LabelOptions(extra_negatives=2))
    assert labels(ex) == [
        (0, 0, True), (0, 1, True), (0, 2, False), (0, 3, False), (0, 4, False),
        (1, 0, True), (1, 1, True), (1, 2, True), (1, 3, True), (1, 4, False),
    ]  # fmt: skip
    assert [e["reason"] for e in ex[:5]] == [None, None, "extra:redundant", "extra:redundant", "redundant"]
    assert rep.extra_negatives == 2 and rep.undesirable == 4


def test_extra_negatives_longer_than_episode_and_min_positives_after():
    ex, rep = label_steps(episode(0, "ccl", "bored"), LabelOptions(extra_negatives=5))
    assert labels(ex) == [(0, 0, False), (0, 1, False), (0, 2, False)]
    ex, rep = label_steps(episode(0, "cccl", "bored"), LabelOptions(extra_negatives=2))
    # one positive left after relabelling: below min_positives=2, dropped
    assert labels(ex) == [(0, 1, False), (0, 2, False), (0, 3, False)]
    assert rep.filtered_positives == 1


def of_user(steps: list[StepRecord], user: int) -> list[StepRecord]:
    return [StepRecord(**{**s.to_dict(), "user": user}) for s in steps]


def test_keep_best_keeps_the_desirable_steps_of_each_users_longest_sessions():
    # user 7 plays three sessions (2, 4 and 3 continued steps), user 8 one (2 continued steps)
    steps = (of_user(episode(0, "ccl", "bored"), 7) + of_user(episode(1, "ccccl", "bored"), 7)
             + of_user(episode(2, "cccl", "low_rating"), 7) + of_user(episode(3, "ccl", "bored"), 8))
    ex, rep = label_steps(steps, LabelOptions(keep_best=1))
    assert labels(ex) == [
        (0, 2, False),
        (1, 0, True), (1, 1, True), (1, 2, True), (1, 3, True), (1, 4, False),
        (2, 3, False),
        (3, 0, True), (3, 1, True), (3, 2, False),
    ]  # fmt: skip
    assert (rep.below_best_episodes, rep.below_best_positives) == (2, 5)
    assert (rep.desirable, rep.undesirable) == (6, 4)
    assert "2 episodes (5 positives) below keep_best" in str(rep)
    # the two longest of user 7's sessions; a user with fewer sessions than keep_best keeps them all
    ex2, rep2 = label_steps(steps, LabelOptions(keep_best=2))
    assert {e["episode"] for e in ex2 if e["label"]} == {1, 2, 3}
    assert (rep2.below_best_episodes, rep2.below_best_positives) == (1, 2)
    # off by default: every session gives its positives, as without the option
    assert labels(label_steps(steps)[0]) == labels(label_steps(steps, LabelOptions(keep_best=0))[0])
    assert label_steps(steps)[1].below_best_episodes == 0


def test_keep_best_breaks_ties_by_return_then_episode():
    a, b, c = (of_user(episode(e, "ccl", "bored"), 5) for e in (4, 2, 9))
    b = [StepRecord(**{**s.to_dict(), "session_return": 99.0}) for s in b]
    ex, _ = label_steps(a + b + c, LabelOptions(keep_best=1))
    assert {e["episode"] for e in ex if e["label"]} == {2}  # same length: the higher return
    ex, _ = label_steps(c + a, LabelOptions(keep_best=1))
    assert {e["episode"] for e in ex if e["label"]} == {4}  # same length and return: the lower episode id


def test_keep_best_ranks_by_outcome_before_min_positives():
    # the longer session ends bored and keeps one positive after the extra negatives, below min_positives=2;
    # it is still the user's best, so the shorter one's three positives are not kept
    steps = of_user(episode(0, "cccccl", "bored"), 4) + of_user(episode(1, "cccl", "low_rating"), 4)
    ex, rep = label_steps(steps, LabelOptions(extra_negatives=4, keep_best=1))
    assert not any(e["label"] for e in ex)
    assert (rep.filtered_episodes, rep.below_best_episodes, rep.below_best_positives) == (1, 1, 3)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "1"])
def test_keep_best_must_be_a_count(bad):
    with pytest.raises(ValueError, match="keep_best"):
        LabelOptions(keep_best=bad)


def test_length_weighting_mean_one_per_label():
    steps = episode(0, "cl", "bored") + episode(1, "ccccl", "bored") + episode(2, "ccc", truncated=True)
    ex, _ = label_steps(steps, LabelOptions(min_positives=0, length_weighting=True))
    for lab in (True, False):
        w = [e["weight"] for e in ex if e["label"] is lab]
        assert sum(w) / len(w) == pytest.approx(1.0)
    long_pos = [e["weight"] for e in ex if e["episode"] == 1 and e["label"]]
    short_pos = [e["weight"] for e in ex if e["episode"] == 0 and e["label"]]
    assert long_pos[0] > short_pos[0]
    ex_off, _ = label_steps(steps, LabelOptions(min_positives=0))
    assert {e["weight"] for e in ex_off} == {1.0}


def test_dicts_accepted_and_order_independent():
    steps = episode(0, "ccl", "bored") + episode(1, "l", "repeat")
    ex1, _ = label_steps(steps)
    ex2, _ = label_steps([s.to_dict() for s in reversed(steps)])
    assert ex1 == ex2


def test_bad_trajectories_raise():
    steps = episode(0, "clc", "bored")
    with pytest.raises(ValueError, match="last step"):
        label_steps(steps)
    with pytest.raises(ValueError, match="duplicate"):
        label_steps(episode(0, "cl", "bored") + episode(0, "cl", "bored"))
    with pytest.raises(TypeError):
        label_steps([42])
    with pytest.raises(ValueError, match="min_positives"):
        LabelOptions(min_positives=-1)


@pytest.mark.parametrize("n_des,n_und", [(10, 10), (100, 7), (7, 100), (13, 10), (1, 1000)])
def test_recommend_weights_in_trl_band(n_des, n_und):
    dw, uw = recommend_weights(n_des, n_und)
    assert 0 < dw <= 1 and 0 < uw <= 1 and (dw == 1 or uw == 1)
    lo, hi = TRL_WEIGHT_BAND
    assert lo - 1e-9 <= weighted_ratio(n_des, n_und, dw, uw) <= hi + 1e-9


def test_recommend_weights_needs_both_labels():
    with pytest.raises(ValueError, match="both label counts"):
        recommend_weights(5, 0)


@pytest.mark.parametrize("n_des,n_und", [(100, 7), (7, 100), (4427, 569), (1, 50), (50, 1)])
def test_subsample_to_band_keeps_the_rarer_label_and_cuts_the_other_into_the_band(n_des, n_und):
    ex = [{"label": True, "i": i} for i in range(n_des)] + [{"label": False, "i": n_des + i} for i in range(n_und)]
    ex = [ex[i] for i in np.random.default_rng(1).permutation(len(ex))]  # labels interleaved
    kept = subsample_to_band(ex, seed=3)
    k_des, k_und = label_counts(kept)
    lo, hi = TRL_WEIGHT_BAND
    assert lo <= k_des / k_und <= hi
    assert (k_und == n_und) if n_des > n_und else (k_des == n_des)  # every example of the rarer label stays
    assert [e["i"] for e in kept] == [e["i"] for e in ex if e in kept]  # original order
    assert kept == subsample_to_band(ex, seed=3)  # seeded
    if max(k_des, k_und) > 1 and max(n_des, n_und) > max(k_des, k_und) + 1:
        assert kept != subsample_to_band(ex, seed=4)


def test_subsample_to_band_leaves_balanced_data_and_needs_both_labels():
    ex = [{"label": True}] * 7 + [{"label": False}] * 6
    assert subsample_to_band(ex) == ex
    with pytest.raises(ValueError, match="both label counts"):
        subsample_to_band([{"label": True}] * 3)
    with pytest.raises(ValueError, match="`target` must lie in TRL's band"):
        subsample_to_band(ex * 2 + [{"label": True}] * 20, target=2.0)


def test_save_load_round_trip(tmp_path):
    ex, rep = label_steps(episode(0, "ccl", "bored") + episode(1, "cc", truncated=True))
    save_examples(ex, tmp_path / "d", world_fingerprint="abc", report=rep, options=LabelOptions())
    data = load_examples(tmp_path / "d")
    assert data.examples == ex and data.world_fingerprint == "abc"
    assert data.meta["n_desirable"] == 4 and data.meta["n_undesirable"] == 1
    assert label_counts(data.examples) == (4, 1)
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.endswith(".tmp")]


def test_load_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_examples"):
        load_examples(tmp_path)
    ex, _ = label_steps(episode(0, "ccl", "bored"))
    save_examples(ex, tmp_path)
    with (tmp_path / "examples.jsonl").open("a") as f:
        f.write("{broken\n")
    with pytest.raises(ValueError, match="line 4"):
        load_examples(tmp_path)
    with pytest.raises(ValueError, match="label"):
        save_examples([{"prompt": "p", "completion": "c", "label": 1}], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # a refused save writes nothing
    assert json.loads((tmp_path / "meta.json").read_text())["n_examples"] == len(ex)
