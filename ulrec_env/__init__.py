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

    ``ULRec-ML100K-v1`` (and ``-v0``, its first version, without the per-user dislike threshold) loads
    MovieLens-100k only when made (see ``ulrec_env.worlds.movielens_100k``); making it without the data raises ``FileNotFoundError`` that names the ways to provide it.
    """
    from gymnasium.envs.registration import register, registry

    single, vector = "ulrec_env.worlds.movielens:make_env", "ulrec_env.worlds.movielens:make_vector_env"
    specs = (
        ("ULRec-v0", "ulrec_env.env:ULRecEnv", "ulrec_env.vector_env:ULRecVectorEnv", {}),
        ("ULRec-ML100K-v1", single, vector, {}),
        # v0: before the per-user dislike threshold (kept so that v0 results can be rerun).
        ("ULRec-ML100K-v0", single, vector, {"dislike_quantile": None}),
    )
    for env_id, entry_point, vector_entry_point, kwargs in specs:
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point,
                     max_episode_steps=100, kwargs=kwargs)

register_envs()
