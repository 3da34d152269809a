"""A native batched ULRec-v0: N sessions stepped at once in numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ulrec_env.config import EnvConfig
from ulrec_env.env import build_observation_space, default_world
from ulrec_env.user_model import (
    REASON_OF_CODE,
    STAYS,
    UserPopulation,
    UserTraits,
    is_bored,
    leave_decision,
    passes_first_checks,
    redundancy,
    satisfaction_step,
    too_close,
)
from ulrec_env.world import World

__all__ = ["ULRecVectorEnv"]

# The reason of each code of leave_decision, for indexing with an array of codes.
_REASONS = np.array(REASON_OF_CODE, dtype=object)
_FEEDBACK = np.array(["continue", "leave"], dtype=object)
_MODES = {
    "next_step": AutoresetMode.NEXT_STEP,
    "same_step": AutoresetMode.SAME_STEP,
    "disabled": AutoresetMode.DISABLED,
}


class ULRecVectorEnv(VectorEnv):
    """``num_envs`` ULRec-v0 sessions stepped together, with the same rules as :class:`ulrec_env.ULRecEnv`.

    Made by ``gym.make_vec("ULRec-v0", num_envs=N, vectorization_mode="vector_entry_point", **settings)``.
    Every setting of the single environment is accepted, plus:

    Args:
        num_envs: Number of parallel sessions.
        max_episode_steps: Horizon; a session that reaches it is truncated (default 100).
        autoreset_mode: ``"next_step"`` (Gymnasium's default: the step after a session ends resets it and
            ignores its action), ``"same_step"`` (reset at once; ``infos["final_obs"]``/``["final_info"]``
            hold the last observation and info) or ``"disabled"`` (finished sessions stay finished until
            ``reset(options={"reset_mask": mask})``; their actions are ignored, they earn 0 and report
            ``infos["active"] == False``).

    Reset options: ``{"users": array of num_envs world rows}`` picks the users (otherwise they are drawn from
    ``split`` with the environment's generator); ``{"reset_mask": bool array}`` resets only those sessions.

    Infos: arrays over sessions of ``feedback``, ``leave_reason`` (``None`` while staying), ``item``, ``rating``,
    ``satisfaction``, ``exposure``, ``redundancy``, ``user``, ``active`` (whether the session took this step),
    each with Gymnasium's ``_key`` mask.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        world: World | None = None,
        max_episode_steps: int | None = 100,
        autoreset_mode: str | AutoresetMode = "next_step",
        render_mode: str | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"`num_envs` must be a positive integer, got {num_envs!r}.")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1
        ):
            raise ValueError(f"`max_episode_steps` must be a positive integer or None, got {max_episode_steps!r}.")
        if isinstance(autoreset_mode, str):
            if autoreset_mode not in _MODES:
                raise ValueError(f"`autoreset_mode` must be one of {sorted(_MODES)}, got {autoreset_mode!r}.")
            autoreset_mode = _MODES[autoreset_mode]
        if render_mode is not None:
            raise ValueError("ULRecVectorEnv does not render; pass render_mode=None.")
        if world is None:
            world = default_world()
        if not isinstance(world, World):
            raise TypeError(f"`world` must be a ulrec_env.World, got {type(world).__name__}.")
        self.world = world
        self.config = EnvConfig.resolve(world.env_defaults, **settings)
        self._billp = self.config.leave_rule == "billp"
        self.num_envs = int(num_envs)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.autoreset_mode = autoreset_mode
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self.render_mode = None
        self._users = world.users(self.config.split)
        if self._users.size == 0:
            raise ValueError(f"world {world.name!r} has no {self.config.split} users; pass another `split`.")
        self.population = UserPopulation.of(world, self.config)
        self.single_observation_space = build_observation_space(world, self.config)
        self.single_action_space = spaces.Discrete(world.n_items)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        n, slots, n_items = self.num_envs, self.config.recommended_slots, world.n_items
        self._n_items = n_items
        self._lo, self._hi = world.rating_scale
        self._history_obs = np.full((world.n_users, self.single_observation_space["history"].shape[0]), -1, np.int64)
        for u, h in enumerate(world.histories):
            self._history_obs[u, : len(h)] = h
        # Flat views and an extra column of +inf distance: an empty window slot holds item id `n_items`, so
        # gathers need no masks.
        self._ratings_flat = world.ratings.ravel()
        dist = np.empty((n_items, n_items + 1), np.float32)
        dist[:, :n_items] = world.distance
        dist[:, n_items] = np.inf
        self._dist_flat = dist.ravel()
        # Traits of the user in each session, refreshed at reset (saves three gathers per step).
        self._tau = np.ones(n)
        self._pi = np.ones(n)
        self._rho = np.zeros(n)
        self._min_rating = np.full(n, self.config.min_rating)
        self.user = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.satisfaction = np.ones(n)
        self.exposure = np.zeros(n)
        self._seen = np.zeros((n, n_items), dtype=bool)
        self._window = np.full((n, self.config.window), n_items, np.int64)  # ring buffer, n_items = empty
        self._hist = np.full((n, self._history_obs.shape[1]), -1, np.int64)
        self._rec = np.full((n, slots), -1, np.int64)
        self._rew = np.zeros((n, slots), np.float32)
        self._done = np.ones(n, dtype=bool)  # finished sessions (terminated or truncated)
        self._last_terminated = np.zeros(n, dtype=bool)
        self._needs_reset = True
        self._arange = np.arange(n)
        self._all_true = np.ones(n, dtype=bool)
        self._all_true.setflags(write=False)

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"users", "reset_mask"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; valid: 'users', 'reset_mask'.")
        mask = options.get("reset_mask")
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with a True, got {mask!r}.")
        users = options.get("users")
        if users is not None:
            users = self.world.subset_users(np.asarray(users).reshape(-1))
            if users.shape != (self.num_envs,):
                raise ValueError(f"options['users'] must hold {self.num_envs} world rows (one per session), got {users.shape[0]}.")
            users = users[mask]
        self._reset_rows(np.flatnonzero(mask), users)
        self._needs_reset = False
        infos = {"user": self.user.copy(), "_user": mask.copy()}
        return self._observation(), infos

    def _reset_rows(self, rows: np.ndarray, users: np.ndarray | None = None) -> None:
        if rows.size == 0:
            return
        if users is None:
            users = self._users[self.np_random.integers(self._users.size, size=rows.size)]
        self.user[rows] = users
        self.steps[rows] = 0
        self.satisfaction[rows] = 1.0
        self.exposure[rows] = 0.0
        self._seen[rows] = False
        self._window[rows] = self._n_items
        self._hist[rows] = self._history_obs[users]
        traits = self.population.traits
        self._tau[rows] = traits.tolerance[users]
        self._pi[rows] = traits.patience[users]
        self._rho[rows] = traits.recovery[users]
        self._min_rating[rows] = self.population.min_ratings[users]
        self._rec[rows] = -1
        self._rew[rows] = 0.0
        self._done[rows] = False
        self._last_terminated[rows] = False

    # ------------------------------------------------------------------ step
    def step(self, actions: Any):
        if self._needs_reset:
            raise RuntimeError("step() called before reset(); call reset() first.")
        actions = self._check_actions(actions)
        n, cfg = self.num_envs, self.config
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            active = ~self._done
            if not active.all():
                self._reset_rows(np.flatnonzero(self._done))
        else:
            active = ~self._done
            if self.autoreset_mode == AutoresetMode.DISABLED:
                # Finished sessions stay finished and keep reporting how they ended.
                terminated[self._done] = self._last_terminated[self._done]
                truncated[self._done] = ~terminated[self._done]

        full = bool(active.all())
        # The rules run on every session (cheap, no gathers of subsets); only the writes are restricted to
        # the sessions that take this step.
        items, users, n_items = actions, self.user, self._n_items
        arange = self._arange
        rating = self._ratings_flat[users * n_items + items]
        repeated = self._seen.reshape(-1)[arange * n_items + items]
        wd = self._dist_flat[(items * (n_items + 1))[:, None] + self._window]  # (n, window), inf if empty
        red = None
        if self._billp:
            fed_up = too_close(wd, cfg.distance_threshold)
        else:
            ok = passes_first_checks(repeated, rating, self._min_rating)
            red = redundancy(wd, cfg.distance_threshold)
            s, e = satisfaction_step(
                self.satisfaction, self.exposure, red, (rating - self._lo) * (1.0 / (self._hi - self._lo)),
                self._tau, self._pi, self._rho, cfg.exposure_decay,
            )
            upd = ok if full else ok & active
            self.satisfaction = np.where(upd, s, self.satisfaction)
            self.exposure = np.where(upd, e, self.exposure)
            red[~upd] = 0.0
            fed_up = is_bored(s, cfg.satisfaction_floor, cfg.hazard_temperature,
                              self.np_random.random(n) if cfg.stochastic else None)
        code = leave_decision(repeated, rating, self._min_rating, fed_up, cfg.leave_rule)
        if not full:
            code[~active] = STAYS

        left = code != STAYS
        reward = np.where(left, cfg.leave_penalty, rating).astype(np.float64)
        step_idx = self.steps
        if full:
            self._record(arange, items, reward, step_idx)
        else:
            idx = np.flatnonzero(active)
            self._record(idx, items[idx], reward[idx], step_idx[idx])
            reward[~active] = 0.0
        self.steps = np.where(active, step_idx + 1, step_idx) if not full else step_idx + 1
        terminated |= left
        if self.max_episode_steps is not None:
            truncated |= ~left & active & (self.steps >= self.max_episode_steps)
        rewards = reward
        newly_done = (terminated | truncated) & active
        self._done |= newly_done
        self._last_terminated = terminated.copy()

        infos = self._infos(active, items, rating, code, red)
        obs = self._observation()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and newly_done.any():
            infos["final_obs"] = np.full(n, None, dtype=object)
            infos["final_info"] = np.full(n, None, dtype=object)
            for i in np.flatnonzero(newly_done):
                infos["final_obs"][i] = {k: v[i].copy() for k, v in obs.items()}
                infos["final_info"][i] = {k: v[i] for k, v in infos.items() if not k.startswith("_") and k not in ("final_obs", "final_info")}
            infos["_final_obs"] = newly_done.copy()
            infos["_final_info"] = newly_done.copy()
            self._reset_rows(np.flatnonzero(newly_done))
            obs = self._observation()
        return obs, rewards, terminated, truncated, infos

    def _check_actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions)
        if arr.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},) (one item id per session), got {arr.shape}.")
        if arr.dtype != np.int64:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"actions must be integer item ids, got dtype {arr.dtype}.")
            arr = arr.astype(np.int64)
        # As unsigned, a negative id wraps to a huge number: one comparison checks both ends.
        if arr.view(np.uint64).max() >= self._n_items:
            i = int(np.flatnonzero((arr < 0) | (arr >= self._n_items))[0])
            raise ValueError(f"actions[{i}] = {int(arr[i])} is not an item id; valid ids are 0..{self._n_items - 1}.")
        return arr

    def _record(self, arange, items, rewards, step_idx) -> None:
        n_items = self._n_items
        self._seen.reshape(-1)[arange * n_items + items] = True
        w = self.config.window
        self._window.reshape(-1)[arange * w + step_idx % w] = items
        slots = self.config.recommended_slots
        if step_idx.max(initial=0) < slots:
            self._rec.reshape(-1)[arange * slots + step_idx] = items
            self._rew.reshape(-1)[arange * slots + step_idx] = rewards
            return
        inside = step_idx < slots
        r_in = arange[inside]
        self._rec[r_in, step_idx[inside]] = items[inside]
        self._rew[r_in, step_idx[inside]] = rewards[inside]
        r_out = arange[~inside]  # keep the most recent `slots` items
        self._rec[r_out, :-1] = self._rec[r_out, 1:]
        self._rec[r_out, -1] = items[~inside]
        self._rew[r_out, :-1] = self._rew[r_out, 1:]
        self._rew[r_out, -1] = rewards[~inside]

    def _infos(self, active, items, rating, code, red) -> dict[str, Any]:
        n = self.num_envs
        item_all = np.where(active, items, -1)
        rating_all = np.where(active, rating, 0.0)
        code_all = code
        red_all = red if red is not None else np.zeros(n)
        infos: dict[str, Any] = {
            "feedback": _FEEDBACK[(code_all != STAYS).view(np.int8)],
            "leave_reason": _REASONS[code_all],
            "item": item_all.copy(),
            "rating": rating_all,
            "satisfaction": self.satisfaction.copy(),
            "exposure": self.exposure.copy(),
            "redundancy": red_all,
            "user": self.user.copy(),
            "active": active,
        }
        for k in list(infos):
            infos["_" + k] = self._all_true if k == "active" else active
        return infos

    def _observation(self) -> dict[str, np.ndarray]:
        return {
            "user": self.user.copy(),
            "history": self._hist.copy(),
            "recommended": self._rec.copy(),
            "rewards": self._rew.copy(),
            "step": self.steps[:, None].copy(),  # (num_envs, 1): the batch of the single space's (1,)
        }

    @property
    def traits(self) -> UserTraits:
        """Every world row's traits (those of :attr:`population`)."""
        return self.population.traits

    @property
    def done(self) -> np.ndarray:
        """Which sessions have ended (terminated or truncated) and await a reset."""
        return self._done.copy()

    def __repr__(self) -> str:
        return f"<ULRecVectorEnv num_envs={self.num_envs} world={self.world.name!r} leave_rule={self.config.leave_rule!r}>"
