"""The oracle: a planner that knows the user model and maximises the session's total reward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from agents.baselines import MMR_PENALTY
from agents.policy import Policy
from ulrec_env.config import EnvConfig
from ulrec_env.user_model import (STAYS, UserPopulation, is_bored, leave_decision, satisfaction_step, similarity,
                                   too_close)

__all__ = ["OraclePolicy", "SessionModel"]


@dataclass
class _Beams:
    """A set of partial sessions of one user, as arrays over beams."""

    items: np.ndarray  # (B, t) items shown so far
    seen: np.ndarray  # (B, n_items) bool
    satisfaction: np.ndarray  # (B,)
    exposure: np.ndarray  # (B,)
    ret: np.ndarray  # (B,) return so far

    def window(self, w: int) -> np.ndarray:
        b, t = self.items.shape
        win = np.full((b, w), -1, np.int64)
        k = min(w, t)
        if k:
            win[:, w - k :] = self.items[:, t - k :]
        return win


class SessionModel:
    """The environment's dynamics for one user, evaluated for many candidate items at once.

    Uses the same pure rules and users as the environment (:mod:`ulrec_env.user_model`: its
    :class:`~ulrec_env.user_model.UserPopulation` and :func:`~ulrec_env.user_model.leave_decision`); the
    stochastic hazard is replaced by its deterministic floor, so plans are exact for deterministic users.
    """

    def __init__(self, world, config: EnvConfig, population: UserPopulation, user: int,
                 candidates: np.ndarray | None = None) -> None:
        self.world, self.cfg, self.user = world, config, user
        lo, hi = world.rating_scale
        # Items the search may choose: ``candidates`` (positions in the arrays below), all items by default.
        self.items = np.arange(world.n_items) if candidates is None else np.asarray(candidates, np.int64)
        self.rating = world.ratings[user, self.items].astype(np.float64)
        self.quality = (self.rating - lo) / (hi - lo)
        if candidates is None:
            self.dist = world.distance
            self.sim = None
        else:
            self.dist = world.distance[np.ix_(self.items, self.items)]
            # A small candidate set: similarities once, gathered at every step instead of recomputed.
            self.sim = similarity(self.dist.astype(np.float64), config.distance_threshold)
        self.tau, self.pi, self.rho = population.traits_of(user)
        self.min_rating = population.min_rating_of(user)

    def start(self, prefix: np.ndarray) -> tuple[_Beams, bool]:
        """Replay ``prefix`` from a fresh session; returns the single beam and whether the user is still there."""
        beams = _Beams(
            items=np.zeros((1, 0), np.int64),
            seen=np.zeros((1, self.items.size), bool),
            satisfaction=np.ones(1),
            exposure=np.zeros(1),
            ret=np.zeros(1),
        )
        for item in prefix:
            s, e, code, _ = self.expand(beams)
            item = int(item)
            if code[0, item] != STAYS:
                return beams, False
            beams = self._advance(beams, np.zeros(1, np.int64), np.array([item]), s, e)
        return beams, True

    def expand(self, beams: _Beams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Outcome of every item for every beam: ``(satisfaction, exposure, leave code, redundancy)``, each ``(B, n)``.

        The leave code is :func:`~ulrec_env.user_model.leave_decision`'s: ``STAYS`` (0) where the user stays,
        else the code of the reason (``REASON_OF_CODE[code]``).
        """
        cfg = self.cfg
        win = beams.window(cfg.window)
        empty = win < 0
        safe = np.where(empty, 0, win)
        shape = beams.seen.shape
        if cfg.leave_rule == "billp":
            d = self.dist[:, safe].transpose(1, 0, 2)  # (B, n, W)
            fed_up = too_close(np.where(empty[:, None, :], np.inf, d), cfg.distance_threshold)
            s = np.broadcast_to(beams.satisfaction[:, None], shape)
            e = np.broadcast_to(beams.exposure[:, None], shape)
            red = np.zeros(shape)
        else:
            if self.sim is not None:
                sim = self.sim[:, safe].transpose(1, 0, 2)
            else:
                sim = similarity(self.dist[:, safe].transpose(1, 0, 2).astype(np.float64), cfg.distance_threshold)
            red = np.where(empty[:, None, :], 0.0, sim).sum(axis=2)
            s, e = satisfaction_step(
                beams.satisfaction[:, None], beams.exposure[:, None], red, self.quality[None, :],
                self.tau, self.pi, self.rho, cfg.exposure_decay,
            )
            fed_up = is_bored(s, cfg.satisfaction_floor)  # plans for the floor, also for stochastic users
        code = leave_decision(beams.seen, self.rating[None, :], self.min_rating, fed_up, cfg.leave_rule)
        return s, e, code, red

    @staticmethod
    def _advance(beams: _Beams, parents: np.ndarray, items: np.ndarray, s: np.ndarray, e: np.ndarray) -> _Beams:
        seen = beams.seen[parents].copy()
        seen[np.arange(parents.size), items] = True
        return _Beams(
            items=np.concatenate([beams.items[parents], items[:, None]], axis=1),
            seen=seen,
            satisfaction=s[parents, items].astype(np.float64),
            exposure=e[parents, items].astype(np.float64),
            ret=beams.ret[parents],  # rewards are added by the caller
        )


class OraclePolicy(Policy):
    """Beam search over the true user dynamics; the upper bound the paper never measured.

    At a session's first step (or whenever the session left its plan) the oracle replays the session so far
    through :class:`SessionModel` and searches ``beam_width`` partial sessions forward to the horizon,
    expanding every item at every step, ranking alive beams by return plus ``lookahead_bonus`` times the
    remaining satisfaction margin. It then compares the best beam with the sessions the greedy and MMR
    rules would produce under the same model and follows the best of them, so on deterministic users it is
    never beaten by those baselines. With ``stochastic=True`` users it plans on the deterministic floor rule
    (an approximation).

    Args:
        beam_width: Number of partial sessions kept per step.
        horizon: Planning horizon; ``None`` takes the environment's ``max_episode_steps`` (or 100).
        lookahead_bonus: Weight of ``(satisfaction - floor)`` in the beam ranking (satisfaction rule only).
        candidates: The beam expands the user's ``candidates`` best-rated items (greedy and MMR rollouts
            still see the whole catalog).
    """

    name = "oracle"
    peeks = True

    def __init__(self, beam_width: int = 12, horizon: int | None = None, lookahead_bonus: float = 10.0,
                 candidates: int = 300) -> None:
        super().__init__()
        if candidates < 1:
            raise ValueError(f"`candidates` must be >= 1, got {candidates}.")
        self.candidates = int(candidates)
        if beam_width < 1:
            raise ValueError(f"`beam_width` must be >= 1, got {beam_width}.")
        self.beam_width = int(beam_width)
        self._horizon_arg = horizon
        self.lookahead_bonus = float(lookahead_bonus)
        self._plans: dict[int, np.ndarray] = {}

    def _on_bind(self) -> None:
        env = getattr(self.env, "unwrapped", self.env)
        if env is not None and hasattr(env, "config"):
            self.cfg: EnvConfig = env.config
            population = getattr(env, "population", None)
        else:
            self.cfg = EnvConfig.resolve(self.world.env_defaults)
            population = None
        self.population: UserPopulation = UserPopulation.of(self.world, self.cfg) if population is None else population
        horizon = self._horizon_arg
        if horizon is None and env is not None:
            horizon = getattr(env, "max_episode_steps", None)
            if horizon is None and getattr(self.env, "spec", None) is not None:
                horizon = self.env.spec.max_episode_steps
        self.horizon = int(horizon or 100)
        # Plans depend only on the world, the settings and the horizon: keep them while those stay.
        key = (id(self.world), self.cfg, self.horizon)
        if getattr(self, "_plan_key", None) != key:
            self._plans = {}
            self._plan_key = key

    def reset(self, seed: int | None = None) -> None:
        """Plans stay valid across seeds (users are deterministic given their session so far)."""

    # ------------------------------------------------------------------ acting
    def _act_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        users = np.asarray(obs["user"]).reshape(-1)
        steps = np.asarray(obs["step"]).reshape(-1)
        rec = np.asarray(obs["recommended"])
        out = np.empty(users.size, np.int64)
        for k, (u, t) in enumerate(zip(users.tolist(), steps.tolist())):
            if t > rec.shape[1]:
                raise ValueError(f"the oracle needs the whole session in obs['recommended']; raise recommended_slots above {t}.")
            prefix = rec[k, :t]
            plan = self._plans.get(u)
            if plan is None or plan.size <= t or not np.array_equal(plan[:t], prefix):
                plan = self.plan(u, prefix)
                self._plans[u] = plan
            out[k] = plan[t]
        return out

    def plan(self, user: int, prefix: np.ndarray | None = None) -> np.ndarray:
        """The best session (item ids, ``prefix`` included) the oracle finds for ``user``."""
        prefix = np.zeros(0, np.int64) if prefix is None else np.asarray(prefix, np.int64)
        full = SessionModel(self.world, self.cfg, self.population, int(user))
        start, alive = full.start(prefix)
        if not alive:  # already off plan and gone: any item will do
            return np.concatenate([prefix, [0]])
        candidates = [self._rollout(full, start, "greedy"), self._rollout(full, start, "mmr")]
        # The beam searches the best-rated items only (and those already shown): the others never pay.
        order = np.argsort(-full.rating, kind="stable")
        top = order[full.rating[order] >= full.min_rating][: self.candidates]
        pool = np.union1d(top, prefix)
        sub = SessionModel(self.world, self.cfg, self.population, int(user), candidates=pool)
        sub_start, _ = sub.start(np.searchsorted(pool, prefix))
        ret, seq = self._beam_search(sub, sub_start)
        candidates.append((ret, pool[seq]))
        return max(candidates, key=lambda c: c[0])[1]

    def _finish(self, model: SessionModel, beams: _Beams, b: int) -> np.ndarray:
        """Session ``b`` ended by a leave: append some item that makes the user leave."""
        _, _, code, _ = model.expand(_Beams(beams.items[b : b + 1], beams.seen[b : b + 1], beams.satisfaction[b : b + 1],
                                            beams.exposure[b : b + 1], beams.ret[b : b + 1]))
        leaving = np.flatnonzero(code[0] != STAYS)
        item = int(leaving[0]) if leaving.size else 0
        return np.concatenate([beams.items[b], [item]])

    def _beam_search(self, model: SessionModel, beams: _Beams) -> tuple[float, np.ndarray]:
        cfg, penalty = self.cfg, self.cfg.leave_penalty
        best_ret, best_seq = -np.inf, beams.items[0]
        for _ in range(beams.items.shape[1], self.horizon):
            s, e, code, _ = model.expand(beams)
            stay = code == STAYS
            # A beam may also end here with a leave (forced when nothing keeps the user).
            b = int(np.argmax(beams.ret))
            if beams.ret[b] + penalty > best_ret and (~stay[b]).any():
                best_ret, best_seq = float(beams.ret[b] + penalty), self._finish(model, beams, b)
            if not stay.any():
                return best_ret, best_seq
            ret = beams.ret[:, None] + model.rating[None, :]
            rank = np.where(stay, ret, -np.inf)
            if cfg.leave_rule != "billp":
                rank = rank + self.lookahead_bonus * (s - cfg.satisfaction_floor)
            flat = rank.ravel()
            k = min(self.beam_width, int(stay.sum()))
            top = np.argpartition(-flat, k - 1)[:k]
            parents, items = np.divmod(top, model.rating.size)
            new = SessionModel._advance(beams, parents, items, s, e)
            new.ret = ret[parents, items]
            beams = new
        b = int(np.argmax(beams.ret))
        if beams.ret[b] > best_ret:  # reached the horizon: truncated, no leave
            return float(beams.ret[b]), beams.items[b]
        return best_ret, best_seq

    def _rollout(self, model: SessionModel, beams: _Beams, rule: str) -> tuple[float, np.ndarray]:
        """The session a simple rule would produce under the model (greedy or MMR)."""
        lo, hi = self.world.rating_scale
        for _ in range(beams.items.shape[1], self.horizon):
            s, e, code, _ = model.expand(beams)
            score = model.rating.copy()
            if rule == "mmr":
                win = beams.window(self.cfg.window)[0]
                win = win[win >= 0]
                if win.size:
                    sim = similarity(model.dist[:, win].astype(np.float64), self.cfg.distance_threshold)
                    score -= MMR_PENALTY * (hi - lo) * sim.max(axis=1)
            score[beams.seen[0]] = -np.inf
            item = int(np.argmax(score))
            if code[0, item] != STAYS:
                return float(beams.ret[0] + self.cfg.leave_penalty), np.concatenate([beams.items[0], [item]])
            new = SessionModel._advance(beams, np.zeros(1, np.int64), np.array([item]), s, e)
            new.ret = beams.ret + model.rating[item]
            beams = new
        return float(beams.ret[0]), beams.items[0]
