"""ULRec-v0: one recommendation session of one simulated user."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ulrec_env.config import EnvConfig
from ulrec_env.user_model import (
    UserPopulation,
    UserTraits,
    billp_leave_reason,
    is_bored,
    passes_first_checks,
    redundancy,
    satisfaction_leave_reason,
    satisfaction_step,
)
from ulrec_env.world import World

__all__ = ["ULRecEnv", "build_observation_space", "check_action", "default_world"]

_INT_MAX = np.iinfo(np.int64).max


def default_world() -> World:
    """The embedded synthetic world (cached: every call returns the same object)."""
    from ulrec_env.worlds.synthetic import synthetic

    return synthetic()


def build_observation_space(world: World, config: EnvConfig) -> spaces.Dict:
    """The observation space of one session (shared by the single and the vector environment)."""
    lo, hi = world.rating_scale
    rew_lo = min(0.0, lo, config.leave_penalty)
    return spaces.Dict(
        {
            "user": spaces.Discrete(world.n_users),
            "history": spaces.Box(-1, world.n_items - 1, shape=(max(1, world.max_history),), dtype=np.int64),
            "recommended": spaces.Box(-1, world.n_items - 1, shape=(config.recommended_slots,), dtype=np.int64),
            "rewards": spaces.Box(rew_lo, max(hi, config.leave_penalty), shape=(config.recommended_slots,), dtype=np.float32),
            "step": spaces.Box(0, _INT_MAX, shape=(1,), dtype=np.int64),  # (1,), not 0-d: SB3 takes it as it is
        }
    )


def check_action(action: Any, n_items: int) -> int:
    """Validate one action (an item id) and return it as an ``int``.

    Raises:
        TypeError: the action is not an integer (floats, bools and strings are refused).
        ValueError: the action is outside ``[0, n_items)``.
    """
    if type(action) is not int:
        if isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer):
            action = int(action)
        elif isinstance(action, np.integer):
            action = int(action)
        else:
            raise TypeError(
                f"action must be an integer item id in [0, {n_items}), got {action!r} ({type(action).__name__}); "
                "the action space is Discrete(n_items)."
            )
    if not 0 <= action < n_items:
        raise ValueError(f"action {action} is not an item id; valid ids are 0..{n_items - 1} (Discrete({n_items})).")
    return action


class ULRecEnv(gym.Env):
    r"""A recommendation session with a simulated user who continues or leaves after each recommendation.

    One episode is one session of one user (a row of the world). Each step the agent recommends one item;
    the user either continues (the reward is the user's rating of the item) or leaves (the episode
    terminates). Short-term recommenders that always show the best-rated item build an echo chamber: the
    user is shown the same kind of item again and again, grows bored and leaves. The environment is the
    simulator of the ULRec paper (Zhang et al., EMNLP 2025 Findings), built on BiLLP's rules, plus a
    satisfaction model in which boredom builds up and recovers.

    ## Action Space

    ``Discrete(n_items)``: the id of the recommended item (a column of ``world.ratings``). Anything that is
    not an integer in range raises ``TypeError``/``ValueError``.

    ## Observation Space

    A ``Dict``:

    | key | space | meaning |
    |-----|-------|---------|
    | ``user`` | ``Discrete(n_users)`` | the world row of the user |
    | ``history`` | ``Box(-1, n_items-1, (H,), int64)`` | the user's past items, oldest first, ``-1`` padded |
    | ``recommended`` | ``Box(-1, n_items-1, (recommended_slots,), int64)`` | this session's recommendations, oldest first (the most recent ``recommended_slots``), ``-1`` padded |
    | ``rewards`` | ``Box(.., (recommended_slots,), float32)`` | the reward each of those recommendations earned |
    | ``step`` | ``Box(0, 2**63-1, (1,), int64)`` | steps taken in this session (a 1-vector: no 0-d arrays, which Stable-Baselines3 cannot take) |

    The user's satisfaction, exposure and traits are hidden (they are in ``info`` for analysis only).

    ## Rewards

    A step on which the user continues earns the user's rating of the item (``world.rating_scale``, 1..5 by
    default). The step on which the user leaves earns ``leave_penalty`` (0 by default), so the return of a
    session is the seed's "trajectory reward".

    ## User model

    ``leave_rule="billp"`` is the seed's rule, checked in this order: the item was recommended before in this
    session (``"repeat"``); its rating is below the user's dislike threshold (``"low_rating"``, also on the first
    step; the threshold is ``min_rating``, or with ``dislike_quantile`` set, the larger of ``min_rating`` and that
    quantile of the user's own ratings of the catalogue, so each user rejects the same share of it); its
    distance to any of the last ``window`` recommended items is below ``distance_threshold`` (``"redundant"``).

    ``leave_rule="satisfaction"`` (default) keeps the repeat and low-rating rules and replaces the hard
    distance cut-off with a satisfaction ``s`` in [0, 1] that starts at 1. With ``d0 = distance_threshold``,
    ``W = window`` and ``q_t = (rating - low) / (high - low)``:

    * similarity ``sim(i, j) = 2 ** -(d(i, j) / d0) ** 2`` (1/2 at the threshold);
    * redundancy ``r_t = sum over the last W items h of sim(i_t, h)``;
    * exposure ``E_t = lambda * E_{t-1} + r_t`` (``lambda = exposure_decay``), as in CIRS's exposure effect;
    * ``s_t = clip(s_{t-1} + rho_u * max(0, 1 - r_t) * q_t * (1 - s_{t-1}) - max(0, E_t - tau_u) / pi_u, 0, 1)``;
    * the user leaves (``"bored"``) when ``s_t < satisfaction_floor``, or, with ``stochastic=True``, with
      probability ``sigmoid((satisfaction_floor - s_t) / hazard_temperature)``.

    Tolerance ``tau_u``, patience ``pi_u`` and recovery ``rho_u`` are drawn per user, uniformly from the
    ``tolerance``/``patience``/``recovery`` ranges, with ``trait_seed``: the same user has the same traits in
    every session (``env.population``, a :class:`ulrec_env.user_model.UserPopulation`; the vector env and the
    oracle build the same one from the same world and settings).

    ## Starting State

    ``reset(seed=..., options={"user": u})`` starts a session for world row ``u``; without ``"user"`` a user
    of ``split`` is drawn with the environment's generator.

    ## Episode End

    * Termination: the user leaves; ``info["feedback"] == "leave"`` and ``info["leave_reason"]`` is one of
      ``"repeat"``, ``"low_rating"``, ``"redundant"`` (billp rule), ``"bored"`` (satisfaction rule).
    * Truncation: the session reaches ``max_episode_steps`` (100 by default through ``gym.make``'s
      ``TimeLimit``; a bare ``ULRecEnv`` has no horizon).

    ## Info

    ``feedback`` (``"continue"``/``"leave"``), ``leave_reason`` (``None`` while the user stays), ``item``,
    ``title``, ``rating`` (the user's rating of the item), ``reward_parts`` (``{"rating": .., "leave_penalty": ..}``),
    ``satisfaction``, ``exposure``, ``redundancy``.

    ## Arguments

    ```python
    import gymnasium as gym
    import ulrec_env
    env = gym.make("ULRec-v0")  # the embedded synthetic world
    env = gym.make("ULRec-v0", world=ulrec_env.worlds.from_billp(path, "steam", "test"), leave_rule="billp",
                   window=4, distance_threshold=50.0, min_rating=2.0, max_episode_steps=100)
    ```

    ``world`` (a :class:`ulrec_env.World`; the synthetic default when ``None``), ``render_mode`` (``"ansi"``)
    and every field of :class:`ulrec_env.EnvConfig` (``leave_rule``, ``window``, ``distance_threshold``,
    ``min_rating``, ``dislike_quantile``, ``leave_penalty``, ``stochastic``, ``satisfaction_floor``, ``hazard_temperature``,
    ``exposure_decay``, ``tolerance``, ``patience``, ``recovery``, ``trait_seed``, ``split``,
    ``recommended_slots``). Settings not given come from ``world.env_defaults`` (calibrated per world), then
    from the config defaults.

    ## Version History

    * ``ULRec-v0``: first version (the synthetic world; unchanged).
    * ``ULRec-ML100K-v1``: MovieLens-100k with a per-user dislike threshold (``dislike_quantile``, calibrated
      from the log: the share of its ratings of 1 or 2); random films no longer keep users 11 of 20 steps.
    * ``ULRec-ML100K-v0``: MovieLens-100k with the absolute ``min_rating`` alone (``dislike_quantile=None``).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, world: World | None = None, render_mode: str | None = None, **settings: Any) -> None:
        if world is None:
            world = default_world()
        if not isinstance(world, World):
            raise TypeError(f"`world` must be a ulrec_env.World (see ulrec_env.worlds), got {type(world).__name__}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"`render_mode` must be None or one of {self.metadata['render_modes']}, got {render_mode!r}.")
        self.world = world
        self.config = EnvConfig.resolve(world.env_defaults, **settings)
        self.render_mode = render_mode
        self._users = world.users(self.config.split)
        if self._users.size == 0:
            raise ValueError(
                f"world {world.name!r} has no {self.config.split} users; pass split='train', 'test' or 'all' "
                f"to match the world ({world.train_users.size} train / {world.test_users.size} test)."
            )
        self.population = UserPopulation.of(world, self.config)
        self.action_space = spaces.Discrete(world.n_items)
        self.observation_space = build_observation_space(world, self.config)
        self._lo, self._hi = world.rating_scale
        self._history_obs = np.full((world.n_users, self.observation_space["history"].shape[0]), -1, dtype=np.int64)
        for u, h in enumerate(world.histories):
            self._history_obs[u, : len(h)] = h
        self._n_items = world.n_items
        self._distance = world.distance
        self._billp = self.config.leave_rule == "billp"
        self.user = 0
        self._shown: list[int] = []
        self._shown_set: set[int] = set()
        self._rewards: list[float] = []
        self.satisfaction = 1.0
        self.exposure = 0.0
        self._done = True

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"user"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the only option is 'user' (a world row).")
        if "user" in options and options["user"] is not None:
            u = options["user"]
            if isinstance(u, bool) or not isinstance(u, (int, np.integer)):
                raise TypeError(f"options['user'] must be an integer world row, got {u!r}.")
            if not 0 <= int(u) < self.world.n_users:
                raise ValueError(f"options['user']={int(u)} is not a user of world {self.world.name!r} "
                                 f"(valid rows: 0..{self.world.n_users - 1}).")
            self.user = int(u)
        else:
            self.user = int(self._users[self.np_random.integers(self._users.size)])
        self._start_session()
        return self._observation(), {"user": self.user, "satisfaction": self.satisfaction}

    def _start_session(self) -> None:
        u = self.user
        self._shown = []
        self._shown_set = set()
        self._rewards = []
        self.satisfaction = 1.0
        self.exposure = 0.0
        self._done = False
        # Per-session caches: Python floats are much cheaper to index than numpy scalars.
        self._user_ratings = self.world.ratings[u].tolist()
        self._user_traits = self.population.traits_of(u)
        self._min_rating = self.population.min_rating_of(u)
        self._rec_obs = np.full(self.config.recommended_slots, -1, dtype=np.int64)
        self._rew_obs = np.zeros(self.config.recommended_slots, dtype=np.float32)

    def step(self, action: Any):
        if self._done:
            raise RuntimeError("step() called on a finished session; call reset() first.")
        if type(action) is not int:
            action = check_action(action, self._n_items)
        elif not 0 <= action < self._n_items:
            check_action(action, self._n_items)  # raises with the message
        item = action
        cfg = self.config
        rating = self._user_ratings[item]
        repeated = item in self._shown_set
        shown = self._shown
        dists = self._distance[item].take(shown[-cfg.window:]).tolist() if shown else []
        red = 0.0
        if self._billp:
            reason = billp_leave_reason(repeated, rating, dists, self._min_rating, cfg.distance_threshold)
        else:
            bored = False
            if passes_first_checks(repeated, rating, self._min_rating):
                red = redundancy(dists, cfg.distance_threshold)
                tau, pi, rho = self._user_traits
                self.satisfaction, self.exposure = satisfaction_step(
                    self.satisfaction, self.exposure, red, (rating - self._lo) / (self._hi - self._lo),
                    tau, pi, rho, cfg.exposure_decay,
                )
                bored = is_bored(self.satisfaction, cfg.satisfaction_floor, cfg.hazard_temperature,
                                 self.np_random.random() if cfg.stochastic else None)
            reason = satisfaction_leave_reason(repeated, rating, self._min_rating, bored)

        terminated = reason is not None
        reward = cfg.leave_penalty if terminated else rating
        t = len(shown)
        shown.append(item)
        self._shown_set.add(item)
        self._rewards.append(reward)
        slots = cfg.recommended_slots
        if t < slots:
            self._rec_obs[t] = item
            self._rew_obs[t] = reward
        else:  # keep the most recent `slots` items
            self._rec_obs[:-1] = self._rec_obs[1:]
            self._rec_obs[-1] = item
            self._rew_obs[:-1] = self._rew_obs[1:]
            self._rew_obs[-1] = reward
        self._done = terminated
        info = {
            "feedback": "leave" if terminated else "continue",
            "leave_reason": reason,
            "item": item,
            "title": self.world.titles[item],
            "rating": rating,
            "reward_parts": {"rating": 0.0 if terminated else rating, "leave_penalty": reward if terminated else 0.0},
            "satisfaction": self.satisfaction,
            "exposure": self.exposure,
            "redundancy": red,
        }
        return self._observation(), reward, terminated, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        w = self.world
        lines = [f"user {self.user}  satisfaction {self.satisfaction:.2f}  exposure {self.exposure:.2f}"]
        for k, (i, r) in enumerate(zip(self._shown, self._rewards), 1):
            lines.append(f"  {k:3d}. {w.titles[i]}  [{', '.join(w.genres[i])}]  reward {r:.2f}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ helpers
    def _observation(self) -> dict[str, Any]:
        return {
            "user": np.int64(self.user),
            "history": self._history_obs[self.user].copy(),
            "recommended": self._rec_obs.copy(),
            "rewards": self._rew_obs.copy(),
            "step": np.array([len(self._shown)], dtype=np.int64),
        }

    @property
    def shown(self) -> tuple[int, ...]:
        """Items recommended so far in this session (all of them, oldest first)."""
        return tuple(self._shown)

    @property
    def session_over(self) -> bool:
        return self._done

    def user_state(self) -> dict[str, Any]:
        """The hidden state of the current session, for planners that peek (the oracle) and for analysis."""
        tolerance, patience, recovery = self.population.traits_of(self.user)
        return {
            "user": self.user,
            "satisfaction": self.satisfaction,
            "exposure": self.exposure,
            "shown": tuple(self._shown),
            "tolerance": tolerance,
            "patience": patience,
            "recovery": recovery,
            "min_rating": self._min_rating,
        }

    @property
    def traits(self) -> UserTraits:
        """Every world row's traits (those of :attr:`population`)."""
        return self.population.traits

    def __repr__(self) -> str:
        return f"<ULRecEnv world={self.world.name!r} leave_rule={self.config.leave_rule!r}>"

