"""Reader of the seed system's environment folders (BiLLP / ULRec data format)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ulrec_env.world import World

__all__ = ["from_billp", "BILLP_THRESHOLDS"]

#: The distance thresholds the seed's results were produced with (window 4, at most 100 steps).
BILLP_THRESHOLDS = {"steam": 50.0, "amazon": 15.0}


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: file not found; a BiLLP dataset folder holds datamaps.json, "
                         "{dataset}_{split}.npy, {split}_distance_mat.pickle and {split}.json.")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # The users file is sometimes JSON lines.
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
        return records


def _dataset_dir(path: Path, dataset: str, split: str) -> Path:
    if (path / "datamaps.json").is_file():
        return path
    if (path / dataset / "datamaps.json").is_file():
        return path / dataset
    raise ValueError(
        f"{path}: no datamaps.json here or in {path / dataset}; pass the dataset folder of the authors' "
        f"environment data (e.g. .../env/{dataset})."
    )


def _load_distance(path: Path, n_items: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: file not found (the pickled items x items distance matrix).")
    with path.open("rb") as f:
        try:
            obj = pickle.load(f)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ValueError(f"{path}: could not unpickle the distance matrix ({type(e).__name__}: {e}).") from None
    if hasattr(obj, "detach"):  # a torch tensor
        obj = obj.detach().cpu().numpy()
    arr = np.asarray(obj, dtype=np.float32)
    if arr.shape != (n_items, n_items):
        raise ValueError(f"{path}: distance matrix has shape {arr.shape}, expected ({n_items}, {n_items}) "
                         "(one row and column per item of datamaps.json).")
    if not np.isfinite(arr).all():
        r, c = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{path}: distance[{r}, {c}] is {arr[r, c]}; distances must be finite.")
    return arr


def from_billp(path: str | Path, dataset: str = "steam", split: str = "test") -> World:
    """Read one split of the authors' environment data into a :class:`World`.

    The folder (``path`` itself or ``path/dataset``) holds ``datamaps.json`` (``item2id_dict`` title -> id,
    ``id2item_dict`` str(id) -> title), ``{dataset}_{split}.npy`` (users x items reward matrix),
    ``{split}_distance_mat.pickle`` (items x items), ``{split}.json`` (user records with ``userid_encoded``, the
    row of the reward matrix, and ``pos_seq_name``, the history titles) and optionally ``list_genre.json``
    (title -> genres). Actions are the ids of ``item2id_dict`` (columns of the reward matrix).

    The listed users of ``split`` become the world's ``test_users`` (split ``"test"``/``"valid"``) or
    ``train_users`` (split ``"train"``). ``env_defaults`` carries the seed's settings for the dataset
    (window 4; threshold 50 for Steam, 15 for Amazon).

    Raises:
        ValueError: naming the file and the record or key at fault.
    """
    if split not in ("train", "valid", "val", "test"):
        raise ValueError(f"`split` must be 'train', 'valid' or 'test', got {split!r}.")
    folder = _dataset_dir(Path(path), dataset, split)

    maps_path = folder / "datamaps.json"
    maps = _load_json(maps_path)
    if not isinstance(maps, dict) or ("item2id_dict" not in maps and "id2item_dict" not in maps):
        raise ValueError(f"{maps_path}: expected an object with 'item2id_dict' and 'id2item_dict'.")
    item2id = maps.get("item2id_dict")
    if item2id is None:
        item2id = {t: int(i) for i, t in maps["id2item_dict"].items()}
    try:
        item2id = {str(t): int(i) for t, i in item2id.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{maps_path}: item2id_dict values must be integer ids.") from None

    ratings_path = folder / f"{dataset}_{split}.npy"
    if not ratings_path.is_file():
        raise ValueError(f"{ratings_path}: file not found (the users x items reward matrix of split {split!r}).")
    try:
        ratings = np.load(ratings_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{ratings_path}: not a numpy array file ({e}).") from None
    if ratings.ndim != 2:
        raise ValueError(f"{ratings_path}: reward matrix must be 2-D (users x items), got shape {ratings.shape}.")
    ratings = ratings.astype(np.float32)
    n_users, n_items = ratings.shape
    if not np.isfinite(ratings).all():
        r, c = np.argwhere(~np.isfinite(ratings))[0]
        raise ValueError(f"{ratings_path}: reward[{r}, {c}] is {ratings[r, c]}; the matrix must be finite.")

    titles: list[str | None] = [None] * n_items
    for t, i in item2id.items():
        if not 0 <= i < n_items:
            raise ValueError(f"{maps_path}: item {t!r} has id {i}, outside the {n_items} columns of {ratings_path.name}.")
        titles[i] = t
    missing = [i for i, t in enumerate(titles) if t is None]
    if missing:
        raise ValueError(f"{maps_path}: item id(s) {missing[:5]} (of {len(missing)}) have no title in item2id_dict; "
                         f"every column of {ratings_path.name} needs one.")

    genres_path = folder / "list_genre.json"
    genre_map = _load_json(genres_path) if genres_path.is_file() else {}
    genres = [tuple(str(g) for g in (genre_map.get(t) or ())) for t in titles]

    distance = _load_distance(folder / f"{split}_distance_mat.pickle", n_items)

    users_path = folder / f"{split}.json"
    records = _load_json(users_path)
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list):
        raise ValueError(f"{users_path}: expected a list of user records.")
    histories: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(n_users)]
    listed: list[int] = []
    for k, rec in enumerate(records):
        if not isinstance(rec, dict) or "userid_encoded" not in rec:
            raise ValueError(f"{users_path}: record {k} has no 'userid_encoded' (the row of the reward matrix).")
        u = rec["userid_encoded"]
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not float(u).is_integer() or not 0 <= int(u) < n_users:
            raise ValueError(f"{users_path}: record {k} has userid_encoded={u!r}, not a row of {ratings_path.name} "
                             f"(0..{n_users - 1}).")
        u = int(u)
        hist_titles = rec.get("pos_seq_name", [])
        ids = []
        for t in hist_titles:
            if t not in item2id:
                raise ValueError(f"{users_path}: record {k} (user {u}) has history title {t!r} that is not in "
                                 f"{maps_path.name}.")
            ids.append(item2id[t])
        histories[u] = np.asarray(ids, dtype=np.int64)
        listed.append(u)
    if not listed:
        raise ValueError(f"{users_path}: no user records.")
    listed_arr = np.unique(np.asarray(listed, dtype=np.int64))
    empty = np.zeros(0, np.int64)
    train, test = (listed_arr, empty) if split == "train" else (empty, listed_arr)

    lo, hi = float(ratings.min()), float(ratings.max())
    scale = (min(1.0, math.floor(lo)), max(5.0, math.ceil(hi)))
    defaults: dict[str, Any] = {"window": 4}
    if dataset in BILLP_THRESHOLDS:
        defaults["distance_threshold"] = BILLP_THRESHOLDS[dataset]
    return World(
        name=f"billp-{dataset}-{split}",
        titles=tuple(t for t in titles if t is not None),
        genres=tuple(genres),
        ratings=ratings,
        distance=distance,
        histories=tuple(histories),
        train_users=train,
        test_users=test,
        rating_scale=scale,
        env_defaults=defaults,
        source=str(folder),
    )
