"""Run by test_multihost.py as one process of a jax.distributed group (or alone).

    python multihost_learner_script.py OUT PROCESS_ID NUM_PROCESSES PORT
    python multihost_learner_script.py OUT single 0 0       # one process, the whole batch

Trains a tiny MLP learner for K updates on a fixed random batch: each of N processes takes its
contiguous share of the unrolls; the single process takes them all. Writes its final
parameters (numpy .npz) to OUT.
"""

import os
import sys

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from impala_jax import config as config_lib
from impala_jax.distributed import multihost

UPDATES = 3
UNROLLS = 8


def main():
  out, process, num_processes, port = sys.argv[1:5]
  multi = process != "single"
  if multi:
    multihost.initialize(config_lib.MultiHostConfig(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes),
        process_id=int(process), initialization_timeout_seconds=120))
  import jax
  import numpy as np
  from impala_jax import acting
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                  "learning"))
  import test_learner as t  # The learner tests' random unrolls and small config.

  rng = np.random.default_rng(5)
  unrolls = [t.make_unroll(rng) for _ in range(UNROLLS)]
  count = jax.process_count()
  share = UNROLLS // count
  mine = unrolls[jax.process_index() * share:(jax.process_index() + 1) * share]
  config = t._config(batch_size=share,  # pylint: disable=protected-access
                     multihost=None if not multi else config_lib.MultiHostConfig(
                         coordinator_address=f"127.0.0.1:{port}",
                         num_processes=int(num_processes), process_id=int(process)))
  learner = t._learner(config)  # pylint: disable=protected-access
  batch = acting.stack_unrolls(mine)
  for _ in range(UPDATES):
    metrics = learner.step(batch)
  final = jax.tree.leaves(learner.state().params)
  np.savez(out, *[np.asarray(x) for x in final], grad_norm=metrics["grad_norm"])
  logging.info("process %s: done", process)
  if multi:
    multihost.shutdown()


if __name__ == "__main__":
  main()
