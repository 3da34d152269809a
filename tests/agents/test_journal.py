"""run_policy's journal: finished batches of sessions survive an interruption and are not played twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.baselines import RandomPolicy
from agents.evaluation import run_policy

STOCHASTIC = {"stochastic": True}


class CountingRandom(RandomPolicy):
    """Counts the decisions it is asked for."""

    acted = 0

    def _act_batch(self, obs):
        CountingRandom.acted += len(obs["user"])
        return super()._act_batch(obs)


def _run(world, users, journal=None, on_step=None, seed=3):
    return run_policy(CountingRandom(seed=0), world, users, seed=seed, env_settings=STOCHASTIC, max_episode_steps=8,
                      batch_size=4, keep_records=True, on_step=on_step, journal=journal)


def _same(a, b):
    assert a.lengths.tolist() == b.lengths.tolist() and a.leave_reasons == b.leave_reasons
    assert np.allclose(a.returns, b.returns)
    assert [i.tolist() for i in a.items] == [i.tolist() for i in b.items]
    assert [{k: v for k, v in r.items() if k != "record"} for r in a.records] == \
           [{k: v for k, v in r.items() if k != "record"} for r in b.records]


def test_interrupted_run_resumes_from_its_journal(small_world, tmp_path):
    users = np.arange(10)  # world rows: three batches of 4, 4, 2
    whole = _run(small_world, users)
    path = tmp_path / "j.jsonl"
    seen = []

    def stop_in_third_batch(n):
        seen.append(n)
        if len(path.read_text().splitlines()) == 3:  # batches 0 and 1 are written: stop inside batch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(small_world, users, path, stop_in_third_batch)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["key"]["users"] == users.tolist() and len(lines) >= 2
    done = {json.loads(x)["chunk"] for x in lines[1:]}
    assert done == {0, 1}
    played = []
    CountingRandom.acted = 0
    resumed = _run(small_world, users, path, played.append)
    _same(resumed, whole)
    # the journaled batches were read back, not played: only batch 2's sessions (users 8 and 9) asked the policy
    assert CountingRandom.acted == len(whole.items[8]) + len(whole.items[9])
    assert sum(played) == sum(len(i) for i in whole.items)  # progress still counts every step
    assert len(path.read_text().splitlines()) == 1 + 3
    CountingRandom.acted = 0
    _same(_run(small_world, users, path, None), whole)  # a finished journal replays nothing
    assert CountingRandom.acted == 0


def test_journal_of_another_call_or_a_cut_line_is_not_trusted(small_world, tmp_path):
    users = np.arange(8)
    path = tmp_path / "j.jsonl"
    other = _run(small_world, users, path, seed=4)
    fresh = _run(small_world, users, path, seed=3)  # another seed: the journal is started anew
    _same(fresh, _run(small_world, users, seed=3))
    assert json.loads(path.read_text().splitlines()[0])["key"]["seed"] == 3
    text = path.read_text().splitlines()
    path.write_text(text[0] + "\n" + text[1] + "\n" + text[2][: len(text[2]) // 2])  # a crash mid-write
    _same(_run(small_world, users, path, seed=3), fresh)
    assert other.lengths.size == 8


def test_a_cut_line_is_dropped_before_the_next_entry_and_records_must_match(small_world, tmp_path):
    users = np.arange(12)
    path = tmp_path / "j.jsonl"
    whole = _run(small_world, users, path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the last batch's line cut by a crash
    _same(_run(small_world, users, path), whole)
    assert all(json.loads(x) for x in path.read_text().splitlines())  # the replayed entry starts its own line
    CountingRandom.acted = 0
    _same(_run(small_world, users, path), whole)
    assert CountingRandom.acted == 0
    # a journal written without records is not used by a call that keeps them
    run_policy(CountingRandom(seed=0), small_world, users, seed=3, env_settings=STOCHASTIC, max_episode_steps=8,
               batch_size=4, keep_records=False, journal=path)
    assert len(_run(small_world, users, path).records) == len(whole.records)
