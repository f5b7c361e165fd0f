r"""IMPALA on classic control and MuJoCo tasks with an MLP torso.

    python experiments/control.py                    # CartPole-v1, solved (≥ 475) in 300k steps
    python experiments/control.py --env=HalfCheetah-v4 --total_env_steps=3000000
    python experiments/control.py --env=impala_jax.envs.examples:make_corridor  # your own env

`--env=module.path:factory` trains on your own gymnasium or dm_env environment
(docs/custom_envs.md).

`--helpfull` lists every flag.
"""

import os
import sys

from absl import app

# Run as a script, the repository root is not on the path: add it for `experiments.common`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # pylint: disable=g-import-not-at-top,wrong-import-position

common.define_flags(dict(
    env="CartPole-v1",
    total_env_steps=300_000,
    logdir="runs/control",
    num_envs=16,
    num_actor_threads=1,
    # Short unrolls and small batches: many updates per environment step, which is what a
    # cheap task like CartPole needs (seeds 0-3 reach 475 within 160k-230k steps).
    unroll_length=10,
    batch_size=16,
    learning_rate=3e-3,
    optimizer="adam",
    network="mlp",
    log_interval_seconds=2.0,
))

if __name__ == "__main__":
  app.run(common.main)
