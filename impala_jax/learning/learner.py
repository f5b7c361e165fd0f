"""The learner: holds the replicated train state and applies the pmapped update to batches.

`Learner.step` takes a list of unrolls as the actors emit them, stacks them into one host
batch `[num_devices, batch_per_device, T+1, ...]`, moves it to the devices in one sharded
transfer, runs the update (`learning.update`) and returns host metrics. `params()` hands the
current parameters to the inference server.
"""

from typing import Any, Dict, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from impala_jax import config as config_lib
from impala_jax import stage_clock
from impala_jax import types
from impala_jax.learning import optimizers
from impala_jax.learning import update as update_lib
from impala_jax.learning.update import TrainState

_AXIS = update_lib.AXIS


def stack_unrolls(unrolls: Sequence[types.Unroll], num_devices: int) -> types.Unroll:
  """`B` unrolls with leaves `[T+1, 1, ...]` → one batch with leaves `[D, B/D, T+1, ...]`."""
  num_unrolls = len(unrolls)
  chex.assert_equal(num_unrolls % num_devices, 0)

  def stack(*leaves):
    # Each leaf is [T+1, 1, ...] (time, env); the unroll index becomes the leading axis.
    stacked = np.concatenate(leaves, axis=1)  # [T+1, B, ...]
    stacked = np.moveaxis(stacked, 1, 0)
    return stacked.reshape((num_devices, num_unrolls // num_devices) + stacked.shape[1:])

  def stack_state(*leaves):
    stacked = np.concatenate(leaves, axis=0)  # [B, ...]
    return stacked.reshape((num_devices, num_unrolls // num_devices) + stacked.shape[1:])

  fields = {f: stack(*[getattr(u, f) for u in unrolls])
            for f in types.Unroll._fields if f != "core_state"}
  core_state = jax.tree.map(stack_state, *[u.core_state for u in unrolls])
  return types.Unroll(**fields, core_state=core_state)


class Learner:
  """Holds the replicated `TrainState` and applies pmapped updates to batches of unrolls.

  In a multi-process run (`jax.distributed`, `jax.process_count() > 1`) the pmap spans every
  device of every process: each process feeds its local devices' shards of its own batch, and
  the update's `pmean` averages gradients over all of them (Sebulba's layout).
  """

  def __init__(self, apply_fn, params: Any, config: config_lib.TrainConfig,
               devices: Sequence[jax.Device] = None):
    self._devices = list(devices or jax.local_devices())
    # Multi-process: pmap over the global devices (None), fed with process-local shards.
    self._multi_process = jax.process_count() > 1
    if self._multi_process and devices is not None:
      raise ValueError("A multi-process learner uses every local device; pass no devices.")
    self._pmap_devices = None if self._multi_process else self._devices
    config.check_devices(len(self._devices))
    self._optimizer = optimizers.make_optimizer(config.optimizer,
                                                config.anneal_optimizer_steps)
    update = update_lib.make_update_fn(
        apply_fn, self._optimizer, config.loss, num_epochs=config.num_epochs,
        num_minibatches=config.num_minibatches, seed=config.seed, axis_name=_AXIS,
        unroll_steps=config.network.torso in config_lib.IMAGE_TORSOS)
    self._update = jax.pmap(update, axis_name=_AXIS, devices=self._pmap_devices,
                            donate_argnums=(0,))
    self._state = self._replicate(
        TrainState(params, self._optimizer.init(params), jnp.zeros((), jnp.int32)))
    # Host mirror of state.update_step: the runtime reads it every update, and reading the
    # device copy would add a device→host sync to the learner loop.
    self._update_step = 0
    self.clock = stage_clock.StageClock(("stack", "transfer", "update"))
    # Leading axis of a host batch = devices: each device receives its own slice directly.
    self._batch_sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(self._devices), (_AXIS,)),
        jax.sharding.PartitionSpec(_AXIS))

  @property
  def seconds(self):
    """Wall seconds spent stacking, transferring and updating (the `time_learner_*` columns)."""
    return self.clock.wall

  @property
  def num_devices(self) -> int:
    return len(self._devices)

  def _replicate(self, tree):
    """One copy per device, laid out exactly like the update's outputs (no retrace)."""
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), tree)
    return jax.pmap(lambda x: x, axis_name=_AXIS, devices=self._pmap_devices)(stacked)

  def step(self, unrolls: Sequence[types.Unroll]) -> Dict[str, float]:
    """One update on `unrolls` (a list of batch_size unrolls); returns host metrics.

    `seconds` accumulates where the time goes: host-side stacking, the host→device transfer
    (one per leaf per device), and the update itself (device compute + metrics back to host).
    """
    clock = self.clock
    clock.restart()
    batch = stack_unrolls(unrolls, self.num_devices)
    clock.lap("stack")
    batch = jax.block_until_ready(jax.tree.map(self._to_devices, batch))
    clock.lap("transfer")
    self._state, metrics = self._update(self._state, batch)
    metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
    if metrics["finite"]:  # A non-finite update was not applied (see make_update_fn).
      self._update_step += 1
    clock.lap("update")
    return metrics

  def _to_devices(self, x: np.ndarray) -> jax.Array:
    if self._multi_process:
      return x  # pmap places each local shard on its device (the global array spans hosts).
    return jax.device_put(x, self._batch_sharding)

  @property
  def update_step(self) -> int:
    return self._update_step

  def params(self) -> Any:
    """The current parameters on the first device, for the inference server."""
    return jax.tree.map(lambda x: x[0], self._state.params)

  def state(self) -> TrainState:
    """Un-replicated host copy of the train state (for checkpoints)."""
    return jax.device_get(jax.tree.map(lambda x: x[0], self._state))

  def restore(self, state: TrainState) -> None:
    self._state = self._replicate(state)
    self._update_step = int(state.update_step)
