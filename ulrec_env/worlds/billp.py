"""Reader of the seed system's environment folders (BiLLP / ULRec data format)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ulrec_env.storage import atomic_write_bytes
from ulrec_env.safe_io import load_pickle_array, read_text_bounded
from ulrec_env.world import World

__all__ = ["from_billp", "convert_billp", "BILLP_THRESHOLDS"]

#: The distance thresholds the seed's results were produced with (window 4, at most 100 steps).
BILLP_THRESHOLDS = {"steam": 50.0, "amazon": 15.0}


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: file not found; a BiLLP dataset folder holds datamaps.json, "
                         "{dataset}_{split}.npy, {split}_distance_mat.pickle and {split}.json.")
    text = read_text_bounded(path, "a BiLLP JSON file")
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


def _distance_paths(folder: Path, split: str) -> tuple[Path, Path]:
    """The split's distance matrix as the authors ship it (pickle) and as :func:`convert_billp` writes it (.npy)."""
    return folder / f"{split}_distance_mat.pickle", folder / f"{split}_distance_mat.npy"


def _read_distance_file(folder: Path, split: str, allow_unsafe_pickle: bool) -> tuple[Any, Path]:
    pickled, npy = _distance_paths(folder, split)
    if npy.is_file():
        try:
            return np.load(npy, allow_pickle=False), npy
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{npy}: not a numpy array file ({e}).") from None
    if not pickled.is_file():
        raise ValueError(f"{pickled}: file not found (the pickled items x items distance matrix; "
                         f"or {npy.name}, as `ulrec convert-billp` writes it).")
    return _pickled_matrix(pickled, allow_unsafe_pickle), pickled


def _pickled_matrix(pickled: Path, allow_unsafe_pickle: bool) -> np.ndarray:
    """The float32 matrix a distance pickle holds (a torch tensor only with ``allow_unsafe_pickle``)."""
    obj = load_pickle_array(pickled, allow_unsafe_pickle=allow_unsafe_pickle)
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    try:
        return np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{pickled}: the distance matrix is not numeric ({e}).") from None


def _load_distance(folder: Path, split: str, n_items: int, allow_unsafe_pickle: bool = False) -> np.ndarray:
    obj, path = _read_distance_file(folder, split, allow_unsafe_pickle)
    try:
        arr = np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError) as e:  # a .npy of another dtype
        raise ValueError(f"{path}: the distance matrix is not numeric ({e}).") from None
    if arr.shape != (n_items, n_items):
        raise ValueError(f"{path}: distance matrix has shape {arr.shape}, expected ({n_items}, {n_items}) "
                         "(one row and column per item of datamaps.json).")
    if not np.isfinite(arr).all():
        r, c = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{path}: distance[{r}, {c}] is {arr[r, c]}; distances must be finite.")
    return arr


def convert_billp(path: str | Path, dataset: str = "steam", *, allow_unsafe_pickle: bool = False) -> list[Path]:
    """Write each ``{split}_distance_mat.pickle`` of a BiLLP dataset folder as ``{split}_distance_mat.npy``.

    After this one-time conversion :func:`from_billp` reads the ``.npy`` files (with ``allow_pickle=False``) and
    no pickle is opened again. The pickles are read with the same restricted unpickler as :func:`from_billp`;
    pass ``allow_unsafe_pickle=True`` only for a folder you trust (e.g. one whose pickles hold torch tensors).

    Returns:
        The ``.npy`` files written, one per split found.

    Raises:
        ValueError: no pickled distance matrix in the folder, or one that is not a numeric matrix.
        UnsafeFileError: a pickle that would run code (nothing of it ran).
    """
    folder = _dataset_dir(Path(path), dataset, "test")
    written = []
    for pickled in sorted(folder.glob("*_distance_mat.pickle")):
        split = pickled.name[: -len("_distance_mat.pickle")]
        arr = _pickled_matrix(pickled, allow_unsafe_pickle)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"{pickled}: expected a square items x items matrix, got shape {arr.shape}.")
        npy = _distance_paths(folder, split)[1]
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(npy, buf.getvalue())
        written.append(npy)
    if not written:
        raise ValueError(f"{folder}: no *_distance_mat.pickle files to convert.")
    return written


def from_billp(path: str | Path, dataset: str = "steam", split: str = "test", *,
               allow_unsafe_pickle: bool = False) -> World:
    """Read one split of the authors' environment data into a :class:`World`.

    The folder (``path`` itself or ``path/dataset``) holds ``datamaps.json`` (``item2id_dict`` title -> id,
    ``id2item_dict`` str(id) -> title), ``{dataset}_{split}.npy`` (users x items reward matrix),
    ``{split}_distance_mat.pickle`` (items x items), ``{split}.json`` (user records with ``userid_encoded``, the
    row of the reward matrix, and ``pos_seq_name``, the history titles) and optionally ``list_genre.json``
    (title -> genres). Actions are the ids of ``item2id_dict`` (columns of the reward matrix).

    The listed users of ``split`` become the world's ``test_users`` (split ``"test"``/``"valid"``) or
    ``train_users`` (split ``"train"``). ``env_defaults`` carries the seed's settings for the dataset
    (window 4; threshold 50 for Steam, 15 for Amazon).

    The distance pickle is read by a restricted unpickler that admits only numpy arrays and numbers, so a
    hostile file cannot run code; ``allow_unsafe_pickle=True`` lifts that for a folder you trust. When
    ``{split}_distance_mat.npy`` exists (see :func:`convert_billp`) it is read instead and no pickle is opened.

    Raises:
        ValueError: naming the file and the record or key at fault.
        UnsafeFileError: the distance pickle names code to run (refused before anything ran).
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

    distance = _load_distance(folder, split, n_items, allow_unsafe_pickle)

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
