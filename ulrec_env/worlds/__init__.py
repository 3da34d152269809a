"""World builders: the embedded synthetic default and readers of real data."""

from ulrec_env.worlds.billp import from_billp
from ulrec_env.worlds.synthetic import synthetic

__all__ = ["synthetic", "from_billp"]
