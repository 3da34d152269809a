"""Train PPO (Stable-Baselines3) on ULRec-v0 and benchmark it against the baselines.

    pip install 'ulrec[rl]'
    python examples/train_ppo.py --timesteps 20000

A short run learns little on a 1,500-item action space; it shows the wiring: the env wrapped for SB3's
MultiInputPolicy, training, and the trained model benchmarked on the test users like any other policy.
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import ulrec_env  # noqa: F401
from agents.benchmark import benchmark, format_table
from agents.sb3 import SB3ObservationWrapper, SB3Policy


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=20_000)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        from stable_baselines3 import PPO
    except ImportError:
        raise SystemExit("this example needs stable-baselines3: pip install 'ulrec[rl]'") from None

    env = SB3ObservationWrapper(gym.make("ULRec-v0", split="train"))
    model = PPO("MultiInputPolicy", env, n_steps=512, batch_size=64, seed=args.seed, verbose=0)
    model.learn(total_timesteps=args.timesteps, progress_bar=False)
    world = env.unwrapped.world
    doc = benchmark(world, {"ppo": SB3Policy(model, name="ppo")}, episodes=args.episodes, seeds=1)
    print(format_table(doc))


if __name__ == "__main__":
    main()
