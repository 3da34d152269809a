"""ulrec_env: a Gymnasium user simulator for long-term recommendation with continue/leave feedback.

``import ulrec_env`` registers ``ULRec-v0`` (idempotently). It needs only numpy, scipy and gymnasium.
"""

from __future__ import annotations

from ulrec_env import worlds
from ulrec_env.config import EnvConfig
from ulrec_env.env import ULRecEnv
from ulrec_env.user_model import LEAVE_REASONS, UserPopulation, UserTraits
from ulrec_env.vector_env import ULRecVectorEnv
from ulrec_env.world import World

__all__ = ["World", "EnvConfig", "ULRecEnv", "ULRecVectorEnv", "UserTraits", "UserPopulation", "LEAVE_REASONS", "worlds", "register_envs"]
__version__ = "0.1.0"


def register_envs() -> None:
    """Register ``ULRec-v0``, ``ULRec-ML100K-v1`` and ``ULRec-ML100K-v0`` with Gymnasium; calling it again changes
    nothing.

    ``ULRec-ML100K-v1`` (and ``-v0``, its first version, without the per-user dislike threshold) loads MovieLens-100k only when made (see ``ulrec_env.worlds.movielens_100k``); making
    it without the data raises ``FileNotFoundError`` that names the ways to provide it.
    """
    from gymnasium.envs.registration import register, registry

    if "ULRec-v0" not in registry:
        register(
            id="ULRec-v0",
            entry_point="ulrec_env.env:ULRecEnv",
            vector_entry_point="ulrec_env.vector_env:ULRecVectorEnv",
            max_episode_steps=100,
        )
    if "ULRec-ML100K-v1" not in registry:
        register(
            id="ULRec-ML100K-v1",
            entry_point="ulrec_env.worlds.movielens:make_env",
            vector_entry_point="ulrec_env.worlds.movielens:make_vector_env",
            max_episode_steps=100,
        )
    if "ULRec-ML100K-v0" not in registry:
        # v0: before the per-user dislike threshold (kept so that v0 results can be rerun).
        register(
            id="ULRec-ML100K-v0",
            entry_point="ulrec_env.worlds.movielens:make_env",
            vector_entry_point="ulrec_env.worlds.movielens:make_vector_env",
            max_episode_steps=100,
            kwargs={"dislike_quantile": None},
        )


register_envs()
