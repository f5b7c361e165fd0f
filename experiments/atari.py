r"""IMPALA on Atari with the paper's settings (Espeholt et al. 2018, Table G.1).

    python experiments/atari.py                      # Pong-v5, shallow network
    python experiments/atari.py --env=Breakout-v5 --network=deep
    python experiments/atari.py --logdir=runs/pong --resume

`--helpfull` lists every flag. Frames = env steps × 4 (action repeat).
"""

import os
import sys

from absl import app

from impala_jax import config as config_lib

# Run as a script, the repository root is not on the path: add it for `experiments.common`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # pylint: disable=g-import-not-at-top,wrong-import-position

num_actor_threads, num_envs = config_lib.default_actor_layout()
# Everything else is the config's default (impala_jax/config.py: the paper's Table G.1).
common.define_flags(dict(
    logdir="runs/atari",
    num_envs=num_envs,  # Per actor thread; both from the core count (config.py).
    num_actor_threads=num_actor_threads,
))

if __name__ == "__main__":
  app.run(common.main)
