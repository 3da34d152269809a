"""Worlds from any ratings log: a fitted reward model, item distances, user histories and a disk cache.

:func:`from_ratings` reads a delimited log of ``user, item, rating[, timestamp]`` (and optionally an items
file with titles and genres); :func:`build_world` turns parsed ratings into a :class:`~ulrec_env.World`, and
:func:`ulrec_env.worlds.movielens_100k` reuses it for MovieLens. How a world is built:

1. **Held-out ratings.** A seeded random ``holdout_fraction`` (20%) of the ratings is held out. The reward
   model is fitted on the rest only, and scored on the held-out part, so ``world.fit_report["rmse"]`` is the
   held-out RMSE of the very matrix the environment uses. Held-out ratings never enter a history.
2. **Reward model.** ``world.ratings`` is a biased matrix factorization fitted by ALS
   (:mod:`ulrec_env.reward_model`); the report also gives the user + item bias baseline on the same split.
3. **Histories.** Each user's history is their *earliest* ``history_len`` liked items (rating at or above
   ``like_threshold``) in time order (timestamp, then file order), taken from the training ratings only.
4. **Users.** A seeded 80/20 split of users into ``train_users`` and ``test_users``.
5. **Distance.** Items are embedded as their genres (multi-hot, unit length) next to their fitted item factors
   (direction only, so items the model knows little about are not all "alike"); the distance is the Euclidean
   distance of these embeddings, rescaled so that the median distance between two items is 100. Titles are not
   embedded (no text encoder is used).
6. **Calibration.** ``env_defaults["dislike_quantile"]``: each user leaves at once on an item whose predicted
   rating is below this quantile of their own predicted ratings of the catalogue (or below ``min_rating``).
   With ``dislike_quantile="auto"`` (the default) it is the share of the log's training ratings in the
   bottom quarter of the scale (1 or 2 of 5; 0.175 on MovieLens-100k), so each simulated user rejects the
   share of the catalogue that real users rated low. A fixed threshold of 2 almost never fires on predicted
   ratings, which regress to each user's mean: on MovieLens-100k random films then kept users 11.4 of 20
   steps (``ULRec-ML100K-v0``'s dynamics, ``dislike_quantile=None``).
   ``env_defaults["distance_threshold"]`` is a low quantile of all item-pair distances
   (``threshold_quantile``, 0.02 by default: only the 2% most alike pairs count as at least half-similar).
   On MovieLens-100k (threshold about 57) greedy-by-rating sessions last about 7 steps while a planner
   keeps the user for the whole 100 (``benchmarks/bench_reward_model.py``); quantiles 0.01 and 0.03 give
   greedy/planner ratios of about 19% and 7% with the benchmark's simple planner.

Fitted worlds are cached under ``ulrec_env.storage.cache_dir("worlds")``, keyed by a hash of the data and of
every parameter; each cache file carries a SHA-256 checksum of its content, and a file that fails the check is
reported with a warning and rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ulrec_env.reward_model import MF_DEFAULTS, fit_bias_baseline, fit_biased_mf, rmse, split_ratings
from ulrec_env.storage import atomic_write_bytes, cache_dir
from ulrec_env.safe_io import MAX_LINE_BYTES
from ulrec_env.world import World

__all__ = ["RatingLog", "from_ratings", "build_world", "parse_ratings", "parse_items", "WORLD_DEFAULTS"]

#: Defaults of the world-building parameters shared by :func:`from_ratings` and ``movielens_100k``.
WORLD_DEFAULTS: dict[str, Any] = {
    "history_len": 15,
    "like_threshold": None,
    "test_user_fraction": 0.2,
    "holdout_fraction": 0.2,
    "seed": 0,
    "genre_weight": 1.0,
    "factor_weight": 1.0,
    "threshold_quantile": 0.02,
    "window": 4,
    "dislike_quantile": "auto",
}

_CACHE_FORMAT = "ulrec-world-v2"  # v2: raw user and item ids
_MAGIC = b"ULRECWORLD1\n"
_MAX_REPORTED_BAD_ROWS = 5


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class RatingLog:
    """Parsed ratings with dense indices.

    Attributes:
        user_ids: Original id of each user index (rows of the world).
        item_ids: Original id of each item index (columns of the world).
        user_idx, item_idx: ``int64`` indices of each rating.
        rating: ``float64`` rating values.
        order: ``float64`` time of each rating (the timestamp, or the line number when the log has none).
        line: Line number of each rating in its file (for messages).
        source: The file the ratings came from.
        duplicates_dropped: Repeated (user, item) ratings dropped (the latest one is kept).
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_idx: np.ndarray
    item_idx: np.ndarray
    rating: np.ndarray
    order: np.ndarray
    line: np.ndarray
    source: str
    duplicates_dropped: int = 0


def _decode(data: bytes, source: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{source}: not valid {encoding} text (byte {e.start}); pass `encoding=` (e.g. 'latin-1')."
        ) from None


def _sniff_delimiter(first_line: str) -> str:
    for d in ("\t", ",", ";", "|"):
        if d in first_line:
            return d
    return ","


def _column_index(header: Sequence[str], wanted: str, source: str, arg: str, required: bool) -> int | None:
    """Position of column ``wanted``; a RecBole-style suffix (``user_id:token``) is ignored when matching."""
    names = [h.strip() for h in header]
    for k, h in enumerate(names):
        if h == wanted:
            return k
    for k, h in enumerate(names):
        if h.split(":", 1)[0] == wanted:
            return k
    if required:
        raise ValueError(
            f"{source}: no column {wanted!r} in the header {names}; pass `{arg}=` with the name of the column."
        )
    return None


def _rows(text: str, delimiter: str | None, source: str) -> tuple[list[list[str]], str, list[int]]:
    """``(rows, delimiter, line numbers)``: each parsed row and the file line it starts on. A quote that is
    opened and not closed on its line is an error naming that line (a quoted field may not span lines here)."""
    lines = text.splitlines()
    for k, ln in enumerate(lines):
        if len(ln) > MAX_LINE_BYTES:
            raise ValueError(f"{source}: line {k + 1} has {len(ln)} characters, more than the {MAX_LINE_BYTES} a "
                             "ratings or items line may have; the file is damaged or not a delimited text file.")
    first = next((ln for ln in lines if ln.strip()), "")
    delim = delimiter if delimiter is not None else _sniff_delimiter(first)
    reader = csv.reader(lines, delimiter=delim, strict=True)
    rows: list[list[str]] = []
    numbers: list[int] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ValueError(_quote_message(source, start, delim, lines, str(e))) from None
        if reader.line_num > start:  # the row ran over several lines: a quote left open
            raise ValueError(_quote_message(source, start, delim, lines, f"the field runs on to line {reader.line_num}"))
        rows.append(row)
        numbers.append(start)
        start = reader.line_num + 1
    return rows, delim, numbers


def _quote_message(source: str, line: int, delim: str, lines: list[str], why: str) -> str:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return (f"{source}: line {line}: a quote is opened and not closed ({why}): {text[:80]!r}. Close the quote, or "
            f"write a quote inside a quoted field as two quotes (\"\"), or leave fields without {delim!r} unquoted.")


def _bad_rows_error(source: str, bad: list[tuple[int, str]], on_bad_rows: str) -> None:
    shown = "; ".join(f"line {ln}: {why}" for ln, why in bad[:_MAX_REPORTED_BAD_ROWS])
    more = f" (and {len(bad) - _MAX_REPORTED_BAD_ROWS} more)" if len(bad) > _MAX_REPORTED_BAD_ROWS else ""
    if on_bad_rows == "raise":
        raise ValueError(
            f"{source}: {len(bad)} bad row(s): {shown}{more}. Fix them, or pass on_bad_rows='skip' to drop them."
        )
    warnings.warn(f"{source}: dropped {len(bad)} bad row(s): {shown}{more}.", stacklevel=3)


def _sorted_ids(ids: Sequence[str]) -> list[str]:
    """Distinct ids in numeric order when they are all integers, else in string order."""
    uniq = set(ids)
    try:
        return sorted(uniq, key=int)
    except ValueError:
        return sorted(uniq)


def _data_rows(rows: list[list[str]], first: int, need: int, bad: list[tuple[int, str]], numbers: list[int],
               width: int | None = None, delim: str = ","):
    """``(line number, row)`` of the non-blank rows from index ``first`` on; rows shorter than ``need`` fields,
    or with more (non-empty) fields than the header's ``width``, go to ``bad``."""
    for k in range(first, len(rows)):
        row, lineno = rows[k], numbers[k]
        if not any(f.strip() for f in row):
            continue
        if len(row) < need:
            bad.append((lineno, f"expected at least {need} fields, got {len(row)}"))
            continue
        if width is not None and len(row) > width and any(f.strip() for f in row[width:]):
            bad.append((lineno, f"{len(row)} fields for the header's {width} columns (a {delim!r} inside a field? "
                                "quote that field)"))
            continue
        yield lineno, row


def _finite_number(text: str, what: str) -> tuple[float, str | None]:
    """``(value, None)`` for a finite number, else ``(nan, why)`` naming ``what`` and the text."""
    try:
        value = float(text)
    except ValueError:
        return math.nan, f"{what} {text!r} is not a number"
    if not math.isfinite(value):
        return math.nan, f"{what} {text!r} is not finite"
    return value, None


def parse_ratings(
    data: bytes,
    source: str,
    *,
    user_col: str | int = "user",
    item_col: str | int = "item",
    rating_col: str | int = "rating",
    timestamp_col: str | int | None = "timestamp",
    delimiter: str | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    on_bad_rows: str = "raise",
) -> RatingLog:
    """Parse a delimited ratings log.

    Args:
        data: The file's bytes.
        source: The file's name, for messages.
        user_col, item_col, rating_col: Column names (or positions when ``header=False``).
        timestamp_col: Column of the time of each rating; optional (``None``, or a name the header lacks, uses
            the file order).
        delimiter: Field separator; sniffed from the first line (tab, comma, semicolon, bar) when ``None``.
        header: Whether the first non-empty line names the columns.
        encoding: Text encoding of ``data``.
        on_bad_rows: ``"raise"`` (a ``ValueError`` listing bad rows with their line numbers) or ``"skip"``
            (drop them with a warning).

    Raises:
        ValueError: a missing column, bad rows (with their line numbers), or no ratings at all.
    """
    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"`on_bad_rows` must be 'raise' or 'skip', got {on_bad_rows!r}.")
    text = _decode(data, source, encoding)
    rows, delim, numbers = _rows(text, delimiter, source)
    start = 0
    width = None
    if header:
        while start < len(rows) and not any(f.strip() for f in rows[start]):
            start += 1
        if start == len(rows):
            raise ValueError(f"{source}: the file is empty; expected a header line and ratings.")
        head = rows[start]
        cu = _column_index(head, str(user_col), source, "user_col", True)
        ci = _column_index(head, str(item_col), source, "item_col", True)
        cr = _column_index(head, str(rating_col), source, "rating_col", True)
        ct = None if timestamp_col is None else _column_index(head, str(timestamp_col), source, "timestamp_col", False)
        width = len(head)
        start += 1
    else:
        cols = [user_col, item_col, rating_col] + ([timestamp_col] if timestamp_col is not None else [])
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cols):
            raise ValueError(f"{source}: without a header, columns must be given as positions (ints >= 0), got {cols}.")
        cu, ci, cr = int(user_col), int(item_col), int(rating_col)
        ct = None if timestamp_col is None else int(timestamp_col)
    need = max(c for c in (cu, ci, cr, ct) if c is not None) + 1

    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    lines: list[int] = []
    bad: list[tuple[int, str]] = []
    for lineno, row in _data_rows(rows, start, need, bad, numbers, width, delim):
        u, it, rv = row[cu].strip(), row[ci].strip(), row[cr].strip()
        if not u or not it:
            bad.append((lineno, "empty user or item id"))
            continue
        r, problem = _finite_number(rv, "rating")
        if problem:
            bad.append((lineno, problem))
            continue
        t = float(lineno)
        if ct is not None:
            t, problem = _finite_number(row[ct].strip(), "timestamp")
            if problem:
                bad.append((lineno, problem))
                continue
        users.append(u)
        items.append(it)
        ratings.append(r)
        times.append(t)
        lines.append(lineno)
    if bad:
        _bad_rows_error(source, bad, on_bad_rows)
    if not ratings:
        raise ValueError(f"{source}: no ratings found; expected rows of user, item, rating[, timestamp].")

    user_ids = _sorted_ids(users)
    item_ids = _sorted_ids(items)
    umap = {x: k for k, x in enumerate(user_ids)}
    imap = {x: k for k, x in enumerate(item_ids)}
    u_idx = np.fromiter((umap[x] for x in users), dtype=np.int64, count=len(users))
    i_idx = np.fromiter((imap[x] for x in items), dtype=np.int64, count=len(items))
    r_arr = np.asarray(ratings, dtype=np.float64)
    t_arr = np.asarray(times, dtype=np.float64)
    l_arr = np.asarray(lines, dtype=np.int64)

    # A (user, item) pair rated twice keeps its latest rating, so the log has one rating per pair.
    order = np.lexsort((l_arr, t_arr, i_idx, u_idx))
    pair = u_idx[order] * len(item_ids) + i_idx[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = pair[1:] != pair[:-1]
    keep = np.sort(order[last])
    if keep.size < order.size:
        first = np.ones(order.size, dtype=bool)
        first[1:] = pair[1:] != pair[:-1]
        group = np.cumsum(first) - 1
        sizes = np.bincount(group)
        r_sorted = r_arr[order]
        lo = np.full(sizes.size, np.inf)
        hi = np.full(sizes.size, -np.inf)
        np.minimum.at(lo, group, r_sorted)
        np.maximum.at(hi, group, r_sorted)
        repeated = int((sizes > 1).sum())
        conflicting = int(((sizes > 1) & (hi > lo)).sum())
        k = int(order[np.argmax(~last)])
        warnings.warn(
            f"{source}: {repeated} (user, item) pair(s) rated more than once, {conflicting} of them with different "
            f"ratings (first on line {int(l_arr[k])}); kept each pair's latest rating and dropped "
            f"{order.size - keep.size} rating(s).", UserWarning, stacklevel=2)
    return RatingLog(
        user_ids=tuple(user_ids),
        item_ids=tuple(item_ids),
        user_idx=u_idx[keep],
        item_idx=i_idx[keep],
        rating=r_arr[keep],
        order=t_arr[keep],
        line=l_arr[keep],
        source=source,
        duplicates_dropped=int(order.size - keep.size),
    )


def parse_items(
    data: bytes,
    source: str,
    *,
    item_col: str = "item",
    title_col: str = "title",
    genres_col: str | None = "genres",
    genre_sep: str = "|",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    on_bad_rows: str = "raise",
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Parse an items file with a header: item id -> (title, genres).

    Args:
        data: The file's bytes.
        source: The file's name, for messages.
        item_col, title_col: Column names of the item id (as in the ratings log) and its title.
        genres_col: Column of the genres, separated by ``genre_sep``; optional (``None`` or absent: no genres).
        delimiter: Field separator; sniffed when ``None``.
        encoding: Text encoding.
        on_bad_rows: ``"raise"`` or ``"skip"``, as in :func:`parse_ratings`.

    Raises:
        ValueError: a missing column, or bad rows (short, empty title, repeated item id) with line numbers.
    """
    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"`on_bad_rows` must be 'raise' or 'skip', got {on_bad_rows!r}.")
    text = _decode(data, source, encoding)
    rows, delim, numbers = _rows(text, delimiter, source)
    start = 0
    while start < len(rows) and not any(f.strip() for f in rows[start]):
        start += 1
    if start == len(rows):
        raise ValueError(f"{source}: the items file is empty; expected a header line and items.")
    head = rows[start]
    ci = _column_index(head, item_col, source, "item_col", True)
    ct = _column_index(head, title_col, source, "title_col", True)
    cg = None if genres_col is None else _column_index(head, genres_col, source, "genres_col", False)
    need = max(c for c in (ci, ct, cg) if c is not None) + 1
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    first_line: dict[str, int] = {}
    bad: list[tuple[int, str]] = []
    for lineno, row in _data_rows(rows, start + 1, need, bad, numbers, len(head), delim):
        item, title = row[ci].strip(), row[ct].strip()
        if not item:
            bad.append((lineno, "empty item id"))
            continue
        if not title:
            bad.append((lineno, f"item {item!r} has an empty title"))
            continue
        if item in out:
            bad.append((lineno, f"item {item!r} is listed again (first on line {first_line[item]})"))
            continue
        genres: tuple[str, ...] = ()
        if cg is not None and row[cg].strip():
            genres = tuple(g.strip() for g in row[cg].split(genre_sep) if g.strip())
        out[item] = (title, genres)
        first_line[item] = lineno
    if bad:
        _bad_rows_error(source, bad, on_bad_rows)
    return out


def _distinct_titles(titles: Sequence[str], item_ids: Sequence[str]) -> list[str]:
    """Make titles distinct: a title that repeats an earlier one gets its item id appended."""
    seen: set[str] = set()
    out = []
    for t, iid in zip(titles, item_ids):
        if t in seen:
            t = f"{t} [item {iid}]"
        seen.add(t)
        out.append(t)
    return out


#: Rating scales in common use; a log that fits one of them but for a few ratings is refused (see _infer_scale).
CONVENTIONAL_SCALES = ((0.0, 1.0), (1.0, 5.0), (0.0, 5.0), (1.0, 10.0), (0.0, 10.0), (1.0, 100.0), (0.0, 100.0))


def _infer_scale(log: RatingLog, source: str) -> tuple[float, float]:
    """The observed range widened to whole numbers, unless nearly all ratings (99.5% or more) lie in a
    conventional scale and the others do not: those are typing errors (a 50 in a 1-5 log) until
    ``rating_scale`` says otherwise."""
    r = log.rating
    lo, hi = float(math.floor(r.min())), float(math.ceil(r.max()))
    if lo == hi:
        raise ValueError(f"{source}: every rating is {lo:g}; pass `rating_scale=(low, high)`.")
    for a, b in CONVENTIONAL_SCALES:
        outside = (r < a) | (r > b)
        n_out = int(outside.sum())
        if n_out == 0:
            return lo, hi
        if n_out <= 0.005 * r.size:
            where = np.flatnonzero(outside)[:5]
            shown = ", ".join(f"line {int(log.line[k])}: {r[k]:g}" for k in where)
            raise ValueError(
                f"{source}: {n_out} of {r.size} ratings lie outside the scale {a:g}-{b:g} of all the others ({shown}); "
                f"fix them, or pass rating_scale=({min(lo, a):g}, {max(hi, b):g}) if that is the scale "
                "(--world ratings:FILE:rating_scale=LOW,HIGH).")
    return lo, hi


# ------------------------------------------------------------------------------------------- world building
def _check_params(p: Mapping[str, Any]) -> None:
    if isinstance(p["history_len"], bool) or not isinstance(p["history_len"], (int, np.integer)) or p["history_len"] < 1:
        raise ValueError(f"`history_len` must be a positive integer, got {p['history_len']!r}.")
    for name in ("test_user_fraction", "holdout_fraction"):
        if not 0.0 < float(p[name]) < 1.0:
            raise ValueError(f"`{name}` must be in (0, 1), got {p[name]!r}.")
    if not 0.0 < float(p["threshold_quantile"]) < 1.0:
        raise ValueError(f"`threshold_quantile` must be in (0, 1), got {p['threshold_quantile']!r}.")
    for name in ("genre_weight", "factor_weight"):
        if not (math.isfinite(float(p[name])) and float(p[name]) >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0, got {p[name]!r}.")
    if float(p["genre_weight"]) == 0 and float(p["factor_weight"]) == 0:
        raise ValueError("`genre_weight` and `factor_weight` are both 0; at least one must be > 0 to define distances.")
    if isinstance(p["seed"], bool) or not isinstance(p["seed"], (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {p['seed']!r}.")
    dq = p["dislike_quantile"]
    if not (dq is None or dq == "auto"
            or (not isinstance(dq, (bool, str)) and isinstance(dq, (int, float, np.floating)) and 0.0 <= float(dq) < 1.0)):
        raise ValueError(f"`dislike_quantile` must be 'auto', a number in [0, 1) or None (no per-user threshold), got {dq!r}.")


def dislike_share(rating: np.ndarray, lo: float, hi: float) -> float:
    """The share of a log's ratings in the bottom quarter of the scale (1 or 2 of 5): ``dislike_quantile="auto"``."""
    return float(np.mean(np.asarray(rating, dtype=np.float64) <= lo + 0.25 * (hi - lo)))


def _item_distance(
    genres: Sequence[tuple[str, ...]], item_factors: np.ndarray, genre_weight: float, factor_weight: float
) -> np.ndarray:
    """Euclidean distance of [genre_weight * unit multi-hot genres, factor_weight * factor direction],
    rescaled so that the median distance between two distinct items is 100."""
    n = len(genres)
    names = sorted({g for gs in genres for g in gs})
    col = {g: k for k, g in enumerate(names)}
    parts = []
    if genre_weight > 0 and names:
        onehot = np.zeros((n, len(names)))
        for i, gs in enumerate(genres):
            for g in gs:
                onehot[i, col[g]] = 1.0
        norm = np.linalg.norm(onehot, axis=1, keepdims=True)
        parts.append(genre_weight * onehot / np.maximum(norm, 1.0))
    if factor_weight > 0:
        q = np.asarray(item_factors, dtype=np.float64)
        norm = np.linalg.norm(q, axis=1, keepdims=True)
        # Directions of items the model barely knows (tiny factors) are noise: shrink them toward the origin.
        soft = float(np.quantile(norm, 0.1)) + 1e-12
        parts.append(factor_weight * q / np.sqrt(norm**2 + soft**2))
    if not parts:
        raise ValueError("no item features: the items have no genres and `factor_weight` is 0.")
    emb = np.hstack(parts)
    sq = (emb * emb).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    off = dist[np.triu_indices(n, 1)]
    med = float(np.median(off)) if off.size else 0.0
    if med > 0:
        dist *= 100.0 / med
    return dist.astype(np.float32)


def _histories(log: RatingLog, train_pos: np.ndarray, n_users: int, like: float, history_len: int) -> list[np.ndarray]:
    u = log.user_idx[train_pos]
    liked = log.rating[train_pos] >= like
    pos = train_pos[liked]
    u = u[liked]
    order = np.lexsort((log.line[pos], log.order[pos], u))
    pos, u = pos[order], u[order]
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [log.item_idx[pos[bounds[k] : bounds[k + 1]]][:history_len].astype(np.int64) for k in range(n_users)]


def build_world(
    log: RatingLog,
    titles: Sequence[str],
    genres: Sequence[tuple[str, ...]],
    *,
    name: str,
    source: str,
    rating_scale: tuple[float, float] | None = None,
    mf_hyper: Mapping[str, Any] | None = None,
    **params: Any,
) -> World:
    """Fit the reward model on ``log`` and assemble the world (no cache; see the module docstring).

    Args:
        log: Parsed ratings.
        titles, genres: Per item index of ``log`` (``len(log.item_ids)`` entries each).
        name: The world's name.
        source: Where the data came from, for messages and ``world.source``.
        rating_scale: ``(low, high)``; the observed range, widened to whole numbers, when ``None``.
        mf_hyper: Overrides of :data:`ulrec_env.reward_model.MF_DEFAULTS`.
        **params: Overrides of :data:`WORLD_DEFAULTS`.
    """
    unknown = sorted(set(params) - set(WORLD_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown world parameter(s) {unknown}; valid: {sorted(WORLD_DEFAULTS)}.")
    p = {**WORLD_DEFAULTS, **params}
    _check_params(p)
    n_users, n_items = len(log.user_ids), len(log.item_ids)
    if len(titles) != n_items or len(genres) != n_items:
        raise ValueError(f"{source}: need one title and one genre tuple per item ({n_items}), got {len(titles)} and {len(genres)}.")
    if n_users < 2:
        raise ValueError(f"{source}: the log has {n_users} user(s); a world needs at least 2 (train and test).")
    if rating_scale is None:
        lo, hi = _infer_scale(log, source)
    else:
        lo, hi = (float(x) for x in rating_scale)
        if not lo < hi:
            raise ValueError(f"`rating_scale` must be (low, high) with low < high, got {rating_scale}.")
        outside = (log.rating < lo) | (log.rating > hi)
        if outside.any():
            k = int(np.argmax(outside))
            raise ValueError(
                f"{source}: line {int(log.line[k])} has rating {log.rating[k]:g} outside rating_scale {(lo, hi)}; "
                "pass the right `rating_scale`."
            )
    like = p["like_threshold"]
    like = lo + 0.75 * (hi - lo) if like is None else float(like)
    seed = int(p["seed"])

    start = time.perf_counter()
    train_pos, test_pos = split_ratings(log.rating.size, float(p["holdout_fraction"]), seed)
    u, i, r = log.user_idx, log.item_idx, log.rating
    model = fit_biased_mf(u[train_pos], i[train_pos], r[train_pos], n_users, n_items, seed,
                          rating_scale=(lo, hi), **dict(mf_hyper or {}))
    bias = fit_bias_baseline(u[train_pos], i[train_pos], r[train_pos], n_users, n_items, rating_scale=(lo, hi))
    fit_report = {
        "model": "biased matrix factorization (ALS)",
        "rmse": round(rmse(model.predict(u[test_pos], i[test_pos]), r[test_pos]), 5),
        "bias_rmse": round(rmse(bias.predict(u[test_pos], i[test_pos]), r[test_pos]), 5),
        "hyper": dict(model.hyper),
        "fit_seconds": round(model.seconds, 3),
        "n_ratings": int(r.size),
        "n_train_ratings": int(train_pos.size),
        "n_heldout_ratings": int(test_pos.size),
        "holdout_fraction": float(p["holdout_fraction"]),
        "seed": seed,
        "duplicates_dropped": int(log.duplicates_dropped),
        "history": f"earliest {int(p['history_len'])} training ratings >= {like:g} per user, oldest first",
        "distance": f"genres (weight {p['genre_weight']:g}) + item factor directions (weight {p['factor_weight']:g})",
    }
    ratings = model.dense()
    histories = _histories(log, train_pos, n_users, like, int(p["history_len"]))
    dist = _item_distance(genres, model.item_factors, float(p["genre_weight"]), float(p["factor_weight"]))
    off = dist[np.triu_indices(n_items, 1)]
    threshold = float(np.quantile(off, float(p["threshold_quantile"])))
    if not threshold > 0:
        threshold = float(off[off > 0].min()) if (off > 0).any() else 1.0
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_users)
    n_test = min(n_users - 1, max(1, int(round(float(p["test_user_fraction"]) * n_users))))
    popularity = np.bincount(i[train_pos], minlength=n_items)
    env_defaults: dict[str, Any] = {"distance_threshold": round(threshold, 2), "window": int(p["window"])}
    dq = p["dislike_quantile"]
    if dq == "auto":
        dq = dislike_share(r[train_pos], lo, hi)
    if dq is not None:
        env_defaults["dislike_quantile"] = round(float(dq), 4)
    fit_report["build_seconds"] = round(time.perf_counter() - start, 3)
    return World(
        name=name,
        titles=tuple(_distinct_titles(titles, log.item_ids)),
        genres=tuple(tuple(g) for g in genres),
        ratings=ratings,
        distance=dist,
        histories=tuple(histories),
        train_users=np.sort(perm[n_test:]),
        test_users=np.sort(perm[:n_test]),
        rating_scale=(lo, hi),
        popularity=popularity,
        env_defaults=env_defaults,
        fit_report=fit_report,
        source=source,
        user_ids=tuple(str(x) for x in log.user_ids),
        item_ids=tuple(str(x) for x in log.item_ids),
    )


# ------------------------------------------------------------------------------------------------- cache
def cache_key(data_hash: str, params: Mapping[str, Any]) -> str:
    """Hash of the data, every parameter and the cache format: the name of a cached world."""
    blob = json.dumps({"format": _CACHE_FORMAT, "data": data_hash, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _world_to_bytes(world: World) -> bytes:
    hist = world.histories
    offsets = np.cumsum([0] + [len(h) for h in hist]).astype(np.int64)
    meta = {
        "name": world.name,
        "titles": list(world.titles),
        "genres": [list(g) for g in world.genres],
        "rating_scale": list(world.rating_scale),
        "env_defaults": dict(world.env_defaults),
        "fit_report": dict(world.fit_report or {}),
        "source": world.source,
        "user_ids": list(world.user_ids) if world.user_ids is not None else None,
        "item_ids": list(world.item_ids) if world.item_ids is not None else None,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        ratings=world.ratings,
        distance=world.distance,
        train_users=world.train_users,
        test_users=world.test_users,
        popularity=world.popularity,
        hist_flat=np.concatenate(hist) if hist else np.zeros(0, np.int64),
        hist_offsets=offsets,
        meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
    )
    payload = buf.getvalue()
    return _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _world_from_bytes(blob: bytes) -> World:
    """Decode a cache file; ``ValueError`` when it is not a complete, unaltered one."""
    head = len(_MAGIC)
    if not blob.startswith(_MAGIC) or len(blob) < head + 65 or blob[head + 64 : head + 65] != b"\n":
        raise ValueError("not a ulrec world cache file (bad header)")
    digest, payload = blob[head : head + 64].decode("ascii", "replace"), blob[head + 65 :]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError("checksum mismatch (the file is truncated or altered)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    off = arrays["hist_offsets"]
    flat = arrays["hist_flat"]
    return World(
        name=meta["name"],
        titles=tuple(meta["titles"]),
        genres=tuple(tuple(g) for g in meta["genres"]),
        ratings=arrays["ratings"],
        distance=arrays["distance"],
        histories=tuple(flat[off[k] : off[k + 1]] for k in range(off.size - 1)),
        train_users=arrays["train_users"],
        test_users=arrays["test_users"],
        rating_scale=tuple(meta["rating_scale"]),
        popularity=arrays["popularity"],
        env_defaults=meta["env_defaults"],
        fit_report=meta["fit_report"],
        source=meta["source"],
        user_ids=meta.get("user_ids"),
        item_ids=meta.get("item_ids"),
    )


def _cache_folder(cache: bool | str | Path) -> Path | None:
    if cache is False or cache is None:
        return None
    if cache is True:
        return cache_dir("worlds")
    if isinstance(cache, (str, Path)):
        path = Path(cache)
        path.mkdir(parents=True, exist_ok=True)
        return path
    raise TypeError(f"`cache` must be True, False or a folder path, got {cache!r}.")


def cached_world(name: str, data_hash: str, params: Mapping[str, Any], build: Any, cache: bool | str | Path = True) -> World:
    """Load the world cached for ``(data_hash, params)``, or call ``build()`` and cache its result.

    A cache file that fails its checksum or cannot be decoded is reported with a warning and rebuilt.
    """
    folder = _cache_folder(cache)
    if folder is None:
        return build()
    path = folder / f"{name}-{cache_key(data_hash, params)}.world"
    if path.is_file():
        try:
            return _world_from_bytes(path.read_bytes())
        except Exception as e:  # noqa: BLE001 - any decoding failure means the file cannot be trusted
            warnings.warn(f"{path}: corrupt world cache ({e}); rebuilding it.", stacklevel=3)
    world = build()
    atomic_write_bytes(path, _world_to_bytes(world))
    return world


# ------------------------------------------------------------------------------------------ from_ratings
def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found; pass the path of an existing file.")
    return p.read_bytes()


def from_ratings(
    ratings_csv: str | Path,
    items_csv: str | Path | None = None,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    timestamp_col: str | None = "timestamp",
    title_col: str = "title",
    genres_col: str | None = "genres",
    genre_sep: str = "|",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    on_bad_rows: str = "raise",
    rating_scale: tuple[float, float] | None = None,
    name: str | None = None,
    mf_hyper: Mapping[str, Any] | None = None,
    cache: bool | str | Path = True,
    **params: Any,
) -> World:
    """A world from any ratings log (see the module docstring for how it is built).

    Args:
        ratings_csv: Delimited file with a header and one rating per row: user, item, rating and optionally
            a timestamp (time order of histories; file order without it).
        items_csv: Optional delimited file with a header: item id (``item_col``, as in the log), ``title_col``
            and optionally ``genres_col`` (genres separated by ``genre_sep``). Every rated item must be
            listed; listed items nobody rated are kept. Without it, titles are ``"Item <id>"`` and items have
            no genres (the distance then uses the item factors only).
        user_col, item_col, rating_col, timestamp_col, title_col, genres_col: Column names; a RecBole type
            suffix in the header (``user_id:token``) is ignored when matching.
        genre_sep: Separator of genres inside the genres field.
        delimiter: Field separator of both files; sniffed (tab, comma, semicolon, bar) when ``None``.
        encoding: Text encoding of both files.
        on_bad_rows: ``"raise"`` (default: ``ValueError`` with the line numbers) or ``"skip"`` (warn, drop).
        rating_scale: ``(low, high)``; the observed range widened to whole numbers when ``None``.
        name: The world's name; the ratings file's stem when ``None``.
        mf_hyper: Overrides of :data:`ulrec_env.reward_model.MF_DEFAULTS`.
        cache: ``True`` (the default cache folder), ``False`` (always rebuild) or a folder.
        **params: Overrides of :data:`WORLD_DEFAULTS` (``history_len``, ``like_threshold``,
            ``test_user_fraction``, ``holdout_fraction``, ``seed``, ``genre_weight``, ``factor_weight``,
            ``threshold_quantile``, ``window``).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a missing column, bad rows (with line numbers), rated items missing from ``items_csv``.
    """
    unknown = sorted(set(params) - set(WORLD_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown from_ratings argument(s) {unknown}; world parameters are {sorted(WORLD_DEFAULTS)}.")
    ratings_bytes = _read(ratings_csv, "ratings file")
    items_bytes = _read(items_csv, "items file") if items_csv is not None else b""
    name = name or Path(ratings_csv).stem
    settings = {
        "user_col": user_col, "item_col": item_col, "rating_col": rating_col, "timestamp_col": timestamp_col,
        "title_col": title_col, "genres_col": genres_col, "genre_sep": genre_sep, "delimiter": delimiter,
        "encoding": encoding, "on_bad_rows": on_bad_rows, "rating_scale": rating_scale, "name": name,
        "mf_hyper": {**MF_DEFAULTS, **dict(mf_hyper or {})}, "world": {**WORLD_DEFAULTS, **params},
        "has_items": items_csv is not None,
    }
    data_hash = hashlib.sha256(ratings_bytes + b"\0items\0" + items_bytes).hexdigest()
    source = str(ratings_csv)

    def build() -> World:
        log = parse_ratings(ratings_bytes, str(ratings_csv), user_col=user_col, item_col=item_col,
                            rating_col=rating_col, timestamp_col=timestamp_col, delimiter=delimiter,
                            encoding=encoding, on_bad_rows=on_bad_rows)
        if items_csv is None:
            own = _items_in_ratings(ratings_bytes, str(ratings_csv), item_col=item_col, title_col=title_col,
                                    genres_col=genres_col, genre_sep=genre_sep, delimiter=delimiter, encoding=encoding)
            if own is not None:
                titles = [own.get(x, (f"Item {x}", ()))[0] for x in log.item_ids]
                genres: list[tuple[str, ...]] = [own.get(x, ("", ()))[1] for x in log.item_ids]
            else:
                titles = [f"Item {x}" for x in log.item_ids]
                genres = [() for _ in log.item_ids]
        else:
            table = parse_items(items_bytes, str(items_csv), item_col=item_col, title_col=title_col,
                                genres_col=genres_col, genre_sep=genre_sep, delimiter=delimiter,
                                encoding=encoding, on_bad_rows=on_bad_rows)
            log, titles, genres = _join_items(log, table, str(items_csv))
        return build_world(log, titles, genres, name=name, source=source, rating_scale=rating_scale,
                           mf_hyper=mf_hyper, **params)

    return cached_world(name, data_hash, settings, build, cache)


def _items_in_ratings(data: bytes, source: str, *, item_col: str, title_col: str, genres_col: str | None,
                      genre_sep: str, delimiter: str | None, encoding: str) -> dict[str, tuple[str, tuple[str, ...]]] | None:
    """Item id -> (title, genres) from a ratings file that has a ``title_col`` column (one file holding both),
    else ``None``. An item given two different titles is an error naming both lines."""
    rows, delim, numbers = _rows(_decode(data, source, encoding), delimiter, source)
    start = next((k for k, row in enumerate(rows) if any(f.strip() for f in row)), None)
    if start is None:
        return None
    head = rows[start]
    ct = _column_index(head, title_col, source, "title_col", False)
    if ct is None:
        return None
    ci = _column_index(head, item_col, source, "item_col", True)
    cg = None if genres_col is None else _column_index(head, genres_col, source, "genres_col", False)
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    seen: dict[str, int] = {}
    need = max(c for c in (ci, ct, cg) if c is not None) + 1
    for lineno, row in _data_rows(rows, start + 1, need, [], numbers, len(head), delim):
        item, title = row[ci].strip(), row[ct].strip()
        if not item or not title:
            continue
        genres = tuple(g.strip() for g in row[cg].split(genre_sep) if g.strip()) if cg is not None else ()
        if item in out and out[item][0] != title:
            raise ValueError(f"{source}: item {item!r} is titled {out[item][0]!r} on line {seen[item]} and {title!r} on "
                             f"line {lineno}; give each item one title.")
        if item not in out:
            out[item], seen[item] = (title, genres), lineno
    return out


def _join_items(
    log: RatingLog, table: Mapping[str, tuple[str, tuple[str, ...]]], items_source: str
) -> tuple[RatingLog, list[str], list[tuple[str, ...]]]:
    """Re-index ``log``'s items over the items file (rated items first checked to be listed)."""
    missing = [x for x in log.item_ids if x not in table]
    if missing:
        first = {x: int(log.line[np.argmax(log.item_idx == log.item_ids.index(x))]) for x in missing[:5]}
        shown = ", ".join(f"{x!r} (ratings line {ln})" for x, ln in first.items())
        raise ValueError(
            f"{items_source}: {len(missing)} rated item(s) are not listed: {shown}; add them to the items file "
            "or pass items_csv=None."
        )
    item_ids = _sorted_ids(list(table))
    pos = {x: k for k, x in enumerate(item_ids)}
    remap = np.asarray([pos[x] for x in log.item_ids], dtype=np.int64)
    new_log = RatingLog(
        user_ids=log.user_ids, item_ids=tuple(item_ids), user_idx=log.user_idx, item_idx=remap[log.item_idx],
        rating=log.rating, order=log.order, line=log.line, source=log.source,
        duplicates_dropped=log.duplicates_dropped,
    )
    return new_log, [table[x][0] for x in item_ids], [table[x][1] for x in item_ids]
