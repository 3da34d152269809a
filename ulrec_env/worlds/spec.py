"""Worlds named by a short string, as the command line takes them."""

from __future__ import annotations

from ulrec_env.world import World

__all__ = ["world_from_spec", "WORLD_SPECS"]

WORLD_SPECS = ("synthetic", "synthetic:SEED", "ml-100k", "ml-100k:PATH", "billp:PATH:DATASET:SPLIT")


def world_from_spec(spec: str, *, allow_unsafe_pickle: bool = False) -> World:
    """``"synthetic"`` (the embedded default), ``"synthetic:SEED"``, ``"ml-100k"`` (MovieLens-100k from the
    installed recbole copy), ``"ml-100k:PATH"``, or ``"billp:PATH:DATASET:SPLIT"`` (the seed's data folders).

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
    raise ValueError(f"unknown world spec {spec!r}; valid: {', '.join(WORLD_SPECS)}.")
