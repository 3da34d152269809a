"""Worlds named by a short string, as the command line takes them."""

from __future__ import annotations

from ulrec_env.world import World

__all__ = ["world_from_spec", "WORLD_SPECS"]

WORLD_SPECS = ("synthetic", "synthetic:SEED", "ml-100k", "ml-100k:PATH", "billp:PATH:DATASET:SPLIT",
               "ratings:RATINGS.csv[:ITEMS.csv][:key=value...]")

#: Options of a ``ratings:`` spec that are strings (or ``none``); the others are read as JSON numbers or booleans.
_RATINGS_TEXT_OPTIONS = ("user_col", "item_col", "rating_col", "timestamp_col", "title_col", "genres_col", "genre_sep",
                         "delimiter", "encoding", "on_bad_rows", "name")


def world_from_spec(spec: str, *, allow_unsafe_pickle: bool = False) -> World:
    """``"synthetic"`` (the embedded default), ``"synthetic:SEED"``, ``"ml-100k"`` (MovieLens-100k from the
    installed recbole copy), ``"ml-100k:PATH"``, ``"billp:PATH:DATASET:SPLIT"`` (the seed's data folders), or
    ``"ratings:RATINGS.csv[:ITEMS.csv]"`` (any ratings log, see :func:`~ulrec_env.worlds.from_ratings`), with the
    loader's options as ``:key=value`` (``ratings:log.csv:user_col=uid:rating_scale=1,10:history_len=8``;
    ``timestamp_col=none`` for a log without times). The world is named after the ratings file.

    ``allow_unsafe_pickle`` is passed to :func:`~ulrec_env.worlds.from_billp` (a trusted folder whose pickles
    the restricted unpickler refuses); the other worlds read no pickle.

    Raises:
        ValueError: for any other string; the message lists the valid forms.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"world spec must be a non-empty string, one of {', '.join(WORLD_SPECS)}; got {spec!r}.")
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from ulrec_env.worlds.synthetic import synthetic

        if not rest:
            return synthetic()
        try:
            return synthetic(seed=int(rest))
        except ValueError:
            raise ValueError(f"world spec {spec!r}: the seed after 'synthetic:' must be an integer.") from None
    if kind in ("ml-100k", "ml100k", "movielens"):
        from ulrec_env.worlds.movielens import movielens_100k

        return movielens_100k(rest or None)
    if kind == "billp":
        parts = rest.rsplit(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"world spec {spec!r}: write billp:PATH:DATASET:SPLIT, e.g. billp:./env:steam:test.")
        from ulrec_env.worlds.billp import from_billp

        path, dataset, split = parts
        return from_billp(path, dataset, split, allow_unsafe_pickle=allow_unsafe_pickle)
    if kind == "ratings":
        from ulrec_env.worlds.ratings import from_ratings

        paths, options = _ratings_spec(spec, rest)
        try:
            return from_ratings(*paths, **options)
        except TypeError as e:
            raise ValueError(f"world spec {spec!r}: {e}") from None
    raise ValueError(f"unknown world spec {spec!r}; valid: {', '.join(WORLD_SPECS)}.")


def _ratings_spec(spec: str, rest: str) -> tuple[list[str], dict]:
    import json

    paths: list[str] = []
    options: dict = {}
    for part in rest.split(":") if rest else []:
        key, eq, value = part.partition("=")
        if not eq:
            paths.append(part)
            continue
        if key in _RATINGS_TEXT_OPTIONS:
            options[key] = None if value.lower() == "none" else value
        elif key == "rating_scale":
            try:
                lo, hi = (float(x) for x in value.split(","))
            except ValueError:
                raise ValueError(f"world spec {spec!r}: write rating_scale=LOW,HIGH (e.g. rating_scale=1,5).") from None
            options[key] = (lo, hi)
        else:
            try:
                options[key] = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"world spec {spec!r}: option {key}={value!r} is not a number or true/false.") from None
    if not 1 <= len(paths) <= 2 or not all(paths):
        raise ValueError(f"world spec {spec!r}: write ratings:RATINGS.csv[:ITEMS.csv][:key=value...], "
                         "e.g. ratings:data/ratings.csv:data/items.csv.")
    return paths, options
