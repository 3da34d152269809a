"""Reading the seed's environment folders, and reproducing the authors' episodes."""

from __future__ import annotations

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest

from tests.ulrec_env.billp_reference import BiLLPReference
from ulrec_env.worlds import from_billp


def write_billp(folder, n_users=12, n_items=30, dataset="steam", split="test", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    titles = [f"Game {i}" for i in range(n_items)]
    (folder / "datamaps.json").write_text(json.dumps({
        "item2id_dict": {t: i for i, t in enumerate(titles)},
        "id2item_dict": {str(i): t for i, t in enumerate(titles)},
    }))
    np.save(folder / f"{dataset}_{split}.npy", rng.uniform(1.0, 5.0, size=(n_users, n_items)))
    pos = rng.uniform(0, 200, size=(n_items, 2))
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    with open(folder / f"{split}_distance_mat.pickle", "wb") as f:
        pickle.dump(dist, f)
    (folder / "list_genre.json").write_text(json.dumps({t: ["Action"] if i % 2 else ["Indie", "RPG"] for i, t in enumerate(titles)}))
    users = [{"userid_encoded": u, "pos_seq_name": list(rng.choice(titles, 15, replace=False))} for u in range(0, n_users, 2)]
    (folder / f"{split}.json").write_text(json.dumps(users))
    return folder


def test_reads_the_folder(tmp_path):
    folder = write_billp(tmp_path / "steam")
    w = from_billp(tmp_path, "steam", "test")
    assert (w.n_users, w.n_items) == (12, 30)
    assert w.test_users.tolist() == list(range(0, 12, 2)) and w.train_users.size == 0
    assert len(w.histories[0]) == 15 and len(w.histories[1]) == 0
    assert w.genres[0] == ("Indie", "RPG")
    assert w.env_defaults == {"window": 4, "distance_threshold": 50.0}
    assert from_billp(folder, "steam", "test").fingerprint() == w.fingerprint()


def test_env_reproduces_the_authors_episodes(tmp_path):
    write_billp(tmp_path / "steam", n_items=60)
    w = from_billp(tmp_path / "steam")
    env = gym.make("ULRec-v0", world=w, leave_rule="billp", window=4, distance_threshold=50.0, min_rating=2.0,
                   max_episode_steps=100)
    ref = BiLLPReference(w.titles, np.load(tmp_path / "steam" / "steam_test.npy"), w.distance, 4, 50.0, 2.0)
    rng = np.random.default_rng(1)
    for u in w.test_users.tolist():
        for _ in range(20):
            env.reset(options={"user": u})
            ref.reset(u)
            for _step in range(100):
                a = int(rng.integers(w.n_items))
                r_ref, leave = ref.step(w.titles[a])
                _, r, term, trunc, _ = env.step(a)
                assert (term, r) == (leave, pytest.approx(r_ref, rel=1e-6))
                if term or trunc:
                    break


def _break(tmp_path, what):
    folder = write_billp(tmp_path / "steam")
    if what == "missing_npy":
        (folder / "steam_test.npy").unlink()
    elif what == "nan":
        m = np.load(folder / "steam_test.npy"); m[3, 4] = np.nan; np.save(folder / "steam_test.npy", m)
    elif what == "shape":
        with open(folder / "test_distance_mat.pickle", "wb") as f:
            pickle.dump(np.zeros((5, 5)), f)
    elif what == "no_title":
        maps = json.loads((folder / "datamaps.json").read_text()); del maps["item2id_dict"]["Game 7"]
        (folder / "datamaps.json").write_text(json.dumps(maps))
    elif what == "bad_user":
        (folder / "test.json").write_text(json.dumps([{"userid_encoded": 99, "pos_seq_name": []}]))
    elif what == "unknown_title":
        (folder / "test.json").write_text(json.dumps([{"userid_encoded": 1, "pos_seq_name": ["Nope"]}]))
    elif what == "no_key":
        (folder / "test.json").write_text(json.dumps([{"user": 1}]))
    elif what == "bad_json":
        (folder / "datamaps.json").write_text("{not json")
    return folder


@pytest.mark.parametrize("what, match", [
    ("missing_npy", "steam_test.npy: file not found"),
    ("nan", "reward\\[3, 4\\] is nan"),
    ("shape", "distance matrix has shape \\(5, 5\\), expected \\(30, 30\\)"),
    ("no_title", "item id\\(s\\) \\[7\\]"),
    ("bad_user", "record 0 has userid_encoded=99"),
    ("unknown_title", "history title 'Nope'"),
    ("no_key", "record 0 has no 'userid_encoded'"),
    ("bad_json", "datamaps.json: not valid JSON"),
])
def test_malformed_folders_name_the_file(tmp_path, what, match):
    folder = _break(tmp_path, what)
    with pytest.raises(ValueError, match=match):
        from_billp(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no datamaps.json"):
        from_billp(tmp_path / "nowhere")
