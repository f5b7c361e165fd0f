"""learner: `learning.Learner.step` against a plain jit(value_and_grad) + optax reference.

Both run on the same fixed random batch, with the same network, parameters, loss and
optimizer. The end-to-end speed is also reported as a fraction of the project learner's
(`report.ratios`): how close training gets to what the learner alone could consume.
"""

import functools
from typing import Any, Dict, Sequence

import jax
import numpy as np
import optax

from benchmarks import synthetic
from impala_jax import config as config_lib
from impala_jax import learning as learner_lib
from impala_jax import types
from impala_jax.runtime import training

# Updates run (and compiled) before timing starts.
WARMUP_ITERS = 2


class ReferenceLearner:
  """The straightforward learner the project's is measured against.

  Same network function (with plain `nn.Conv` layers: `space_to_depth=False`), parameters,
  loss (`learner.make_loss_fn`) and optimizer (`learner.make_optimizer`) as
  `learner.Learner`, written the plain way: the host
  builds a time-major batch with numpy and converts observations to float32 in [0, 1], then one
  `jax.jit(value_and_grad)` + optax update runs; no pmap, no buffer donation.
  """

  def __init__(self, apply_fn, params: Any, config: config_lib.TrainConfig):
    optimizer = learner_lib.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
    loss_fn = learner_lib.make_loss_fn(apply_fn, config.loss)

    def update(params, opt_state, unroll):
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, unroll)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self._update = jax.jit(update)
    self._params = params
    self._opt_state = optimizer.init(params)

  def step(self, unrolls: Sequence[types.Unroll]) -> float:
    """One update on `unrolls` (leaves `[T+1, 1, ...]`); returns the loss before it."""
    # Each unroll is one column of the time-major batch [T+1, B, ...].
    batch = jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=1),
                         *[u._replace(core_state=()) for u in unrolls])
    observation = batch.observation.astype(np.float32)
    if batch.observation.dtype == np.uint8:
      observation /= 255.0  # The network scales only uint8 frames itself.
    core_state = jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=0),
                              *[u.core_state for u in unrolls])
    batch = batch._replace(observation=observation, core_state=core_state)
    self._params, self._opt_state, loss = jax.block_until_ready(
        self._update(self._params, self._opt_state, batch))
    return float(loss)


def measure_learner(config: config_lib.TrainConfig, iters: int) -> Dict[str, Any]:
  """Learner updates per second on one fixed random batch: the project's and the reference.

  The reference starts from the list of unrolls and batches them itself; the project's learner
  starts from the batch as its actors assemble it (`acting.batch_assembler`: batch-major,
  aligned), so the timing includes each one's host-side handling and transfer. The first loss
  of each (same parameters, same batch) is reported as a check that they compute the same thing.

  Returns:
    samples (agent steps) per second and ms per update for both, the project's split of its
    update time (transfer, dispatch, update), the ratio project ÷ reference, the first losses.
  """
  network, params, spec = synthetic.network_and_params(config)
  unrolls = synthetic.random_unrolls(spec, network, config.batch_size, config.unroll_length,
                                     config.seed)
  batch = synthetic.assembled_batch(unrolls)
  samples = config.batch_size * config.unroll_length

  project = training.make_learner(network, params, config)
  # The warm-up updates compile; the first one's loss is the one before any update.
  project_first_loss = project.step(batch)["loss"]
  for _ in range(WARMUP_ITERS - 1):
    project.step(batch)
  before = dict(project.seconds)
  project_seconds = synthetic.mean_seconds(functools.partial(project.step, batch), iters)
  project_split = {k: 1000.0 * (project.seconds[k] - before[k]) / iters for k in before}
  del project  # Its device buffers, before the reference allocates its own.

  # The reference runs plain nn.Conv layers (same parameters, same function).
  reference = ReferenceLearner(network.clone(space_to_depth=False).apply, params, config)
  reference_first_loss = reference.step(unrolls)
  for _ in range(WARMUP_ITERS - 1):
    reference.step(unrolls)
  reference_seconds = synthetic.mean_seconds(functools.partial(reference.step, unrolls),
                                               iters)
  del reference
  return dict(
      samples_per_update=samples,
      project=dict(samples_per_second=samples / project_seconds,
                   ms_per_update=1000.0 * project_seconds,
                   ms_per_update_split=project_split),
      reference=dict(samples_per_second=samples / reference_seconds,
                     ms_per_update=1000.0 * reference_seconds),
      project_over_reference=reference_seconds / project_seconds,
      # Same parameters, same batch: these differ only by float rounding.
      first_loss=dict(project=project_first_loss, reference=reference_first_loss,
                      relative_difference=abs(project_first_loss - reference_first_loss) /
                      max(abs(reference_first_loss), 1e-12)),
      iters=iters)
