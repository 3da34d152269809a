"""World builders: the embedded synthetic default and readers of real data."""

from ulrec_env.worlds.billp import from_billp
from ulrec_env.worlds.movielens import movielens_100k
from ulrec_env.worlds.ratings import from_ratings
from ulrec_env.worlds.synthetic import synthetic

__all__ = ["synthetic", "from_billp", "movielens_100k", "from_ratings"]
