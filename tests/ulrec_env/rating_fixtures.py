"""Small ratings logs written by the tests (never real MovieLens data): CSV, GroupLens and RecBole layouts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ulrec_env.worlds.movielens import ML100K_GENRES

N_USERS = 30
N_ITEMS = 40
PER_USER = 12


def make_log(seed: int = 0) -> list[tuple[int, int, int, int]]:
    """``(user, item, rating, timestamp)`` rows with 1-based ids: 30 users x 12 ratings of 40 items, 1..5.

    Ratings follow a low-rank taste plus biases, so a factorization has something to find.
    """
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(N_USERS, 2))
    q = rng.normal(size=(N_ITEMS, 2))
    bu = rng.normal(0, 0.4, N_USERS)
    bi = rng.normal(0, 0.6, N_ITEMS)
    rows = []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, size=PER_USER, replace=False)
        times = 880_000_000 + np.sort(rng.integers(0, 10_000_000, size=PER_USER))
        order = rng.permutation(PER_USER)  # file order is not time order
        for k in order:
            i = int(items[k])
            r = int(np.clip(np.rint(3.4 + bu[u] + bi[i] + p[u] @ q[i] + rng.normal(0, 0.3)), 1, 5))
            rows.append((u + 1, i + 1, r, int(times[k])))
    return rows


def item_meta(i: int) -> tuple[str, int, tuple[str, ...]]:
    """Title, year and genres of 1-based item ``i``."""
    genres = (ML100K_GENRES[1 + i % 18],) + ((ML100K_GENRES[1 + (i * 5) % 18],) if i % 3 == 0 else ())
    return f"Movie {i}", 1980 + i % 20, tuple(dict.fromkeys(genres))


def write_csv(folder: Path, rows=None, with_items: bool = True) -> tuple[Path, Path | None]:
    rows = make_log() if rows is None else rows
    ratings = folder / "ratings.csv"
    ratings.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    if not with_items:
        return ratings, None
    items = folder / "items.csv"
    lines = ["item,title,genres"]
    for i in range(1, N_ITEMS + 1):
        title, year, genres = item_meta(i)
        lines.append(f'{i},"{title} ({year})",{"|".join(genres)}')
    items.write_text("\n".join(lines) + "\n")
    return ratings, items


def write_grouplens(folder: Path, rows=None) -> Path:
    rows = make_log() if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    lines = []
    for i in range(1, N_ITEMS + 1):
        title, year, genres = item_meta(i)
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        lines.append(f"{i}|{title} ({year})|01-Jan-{year}||http://example.invalid/{i}|{flags}")
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def write_grouplens_zip(path: Path, rows=None) -> Path:
    src = write_grouplens(path.parent / "gl_src", rows)
    with zipfile.ZipFile(path, "w") as z:
        for n in ("u.data", "u.item"):
            z.write(src / n, f"ml-100k/{n}")
    return path


def write_recbole(folder: Path, rows=None) -> Path:
    rows = make_log() if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    )
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for i in range(1, N_ITEMS + 1):
        title, year, genres = item_meta(i)
        lines.append(f"{i}\t{title}\t{year}\t{' '.join(genres)}")
    (folder / "ml-100k.item").write_text("\n".join(lines) + "\n")
    return folder
