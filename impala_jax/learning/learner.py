"""The learner: holds the replicated train state and applies the pmapped update to batches.

A batch arrives on the host time-major, leaves `[T+1, B, ...]` (`types.HostBatch`, written in
place by `acting.batch_assembler`). The learner splits it over its devices (`[D, T+1, B/D,
...]`: a reshape, no copy, on one device), moves it there in one sharded transfer, runs the
update (`learning.update`) and returns host metrics. The three steps are separate calls so that
the learner loop can transfer the next batch while the current update runs:

    device_batch = learner.transfer(batch)      # host → device (in place on the CPU backend)
    pending = learner.dispatch(device_batch)    # the update is queued; returns at once
    metrics = learner.finish(pending)           # waits for it; the batch is no longer read

`step(batch)` does all three. `params()` hands the current parameters to the inference server.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import chex
import jax
import numpy as np
import optax

from impala_jax import config as config_lib
from impala_jax import stage_clock
from impala_jax import types
from impala_jax.learning import update as update_lib
from impala_jax.learning.update import TrainState

_AXIS = update_lib.AXIS


def split_over_devices(x: np.ndarray, num_devices: int, axis: int) -> np.ndarray:
  """`x` with its batch axis `axis` split into a new leading device axis: device d gets
  entries [d·B/D, (d+1)·B/D). A view on one device; a copy on several (each device's share
  then lies contiguous, as a transfer needs it)."""
  if num_devices == 1:
    return x[None]
  shape = x.shape[:axis] + (num_devices, x.shape[axis] // num_devices) + x.shape[axis + 1:]
  return np.ascontiguousarray(np.moveaxis(x.reshape(shape), axis, 0))


class PendingUpdate(NamedTuple):
  """An update that `dispatch` queued: its metrics, device arrays until it has finished."""

  metrics: Dict[str, jax.Array]


class Learner:
  """Holds the replicated `TrainState` and applies pmapped updates to batches of unrolls.

  In a multi-process run (`jax.distributed`, `jax.process_count() > 1`) the pmap spans every
  device of every process: each process feeds its local devices' shards of its own batch, and
  the update's `pmean` averages gradients over all of them (Sebulba's layout).
  """

  def __init__(self, apply_fn: Callable[..., Any], params: Any,
               optimizer: optax.GradientTransformation, loss: config_lib.LossConfig, *,
               num_epochs: int, num_minibatches: int, seed: int, unroll_steps: bool,
               devices: Optional[Sequence[jax.Device]] = None,
               popart: config_lib.PopArtConfig = config_lib.PopArtConfig()):
    """Replicates `params`, the optimizer's state and PopArt's statistics (when it is on) over
    the devices and builds the update.

    Args:
      apply_fn: the network's `apply` (`update.make_update_fn`).
      params: the initial parameters.
      optimizer: an optax transformation (`optimizers.make_optimizer`).
      loss: the objective and its settings.
      num_epochs, num_minibatches, seed: passes over each batch, optimizer steps per pass and
        the seed of their shuffling (`update.make_update_fn`). Each device's share of a batch
        must divide by num_minibatches (`TrainConfig.check_devices` says so before a run).
      unroll_steps: run the optimizer steps as an unrolled loop rather than a scan: True for
        a convolutional torso (`ImpalaNetwork.convolutional`, see `learning.update`).
      devices: the local devices to use; None: all of them.
      popart: PopArt's settings (`update.make_update_fn`); on, `apply_fn`'s network has one
        value output per task (`config.PopArtConfig.network_tasks`).
    """
    self._devices = list(devices or jax.local_devices())
    # Multi-process: pmap over the global devices (None), fed with process-local shards.
    self._multi_process = jax.process_count() > 1
    if self._multi_process and devices is not None:
      raise ValueError("A multi-process learner uses every local device; pass no devices.")
    self._pmap_devices = None if self._multi_process else self._devices
    self._optimizer = optimizer
    update = update_lib.make_update_fn(
        apply_fn, optimizer, loss, num_epochs=num_epochs, num_minibatches=num_minibatches,
        seed=seed, axis_name=_AXIS, unroll_steps=unroll_steps, popart=popart)
    self._update = jax.pmap(update, axis_name=_AXIS, devices=self._pmap_devices,
                            donate_argnums=(0,))
    self._state = self._replicate(
        update_lib.initial_train_state(params, self._optimizer, popart))
    # Host mirror of state.update_step: the runtime reads it every update, and reading the
    # device copy would add a device→host sync to the learner loop.
    self._update_step = 0
    self._first_of_each = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree))
    # Where the learner thread's time goes: the host→device transfer, queuing the update, and
    # waiting for it to finish (its metrics back on the host).
    self.clock = stage_clock.StageClock(("transfer", "dispatch", "update"))
    # An accelerator's batch is sent ahead (`transfer`, while the previous update runs), laid
    # out exactly as the pmapped update lays out its own arrays (so the update takes it as it
    # is, with no resharding). On the CPU backend there is nothing to overlap: the update takes
    # the host batch itself, whose aligned arrays its C++ dispatch wraps without a copy,
    # several times faster than `jax.device_put`.
    self.sends_ahead = jax.default_backend() != "cpu" and not self._multi_process
    self._batch_sharding = jax.tree.leaves(self._state)[0].sharding

  @property
  def seconds(self):
    """Wall seconds per stage (the `time_learner_*` columns)."""
    return self.clock.wall

  @property
  def num_devices(self) -> int:
    return len(self._devices)

  def _replicate(self, tree):
    """One copy per device, laid out exactly like the update's outputs (no retrace)."""
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), tree)
    return jax.pmap(lambda x: x, axis_name=_AXIS, devices=self._pmap_devices)(stacked)

  def transfer(self, batch: types.Unroll) -> types.Unroll:
    """Moves a host batch (leaves `[T+1, B, ...]`) onto the devices, `[D, T+1, B/D, ...]`.

    On an accelerator the copy starts now and runs while the current update computes. The
    copy may still be running when this returns, and on the CPU backend the update reads the
    host buffers themselves: the host batch must stay untouched until `finish` has returned
    for the update that reads it.
    """
    self.clock.restart()
    chex.assert_equal(batch.reward.shape[1] % self.num_devices, 0)
    d = self.num_devices
    device_batch = types.Unroll(
        *(split_over_devices(x, d, axis=1) for x in batch[:-1]),
        core_state=jax.tree.map(lambda x: split_over_devices(x, d, axis=0), batch.core_state))
    if self.sends_ahead:  # Multi-process: pmap places each local shard (the array spans hosts).
      device_batch = jax.device_put(device_batch, self._batch_sharding)  # One call, all leaves.
    self.clock.lap("transfer")
    return device_batch

  def dispatch(self, device_batch: types.Unroll) -> PendingUpdate:
    """Queues one update on a transferred batch; returns without waiting for it."""
    self.clock.restart()
    self._state, metrics = self._update(self._state, device_batch)
    self.clock.lap("dispatch")
    return PendingUpdate(metrics)

  def finish(self, pending: PendingUpdate) -> Dict[str, float]:
    """Waits for a dispatched update; returns its metrics as floats.

    Finish each update before dispatching the next: `update_step` counts finished updates.
    """
    self.clock.restart()
    metrics = {k: float(v[0]) for k, v in jax.device_get(pending.metrics).items()}
    if metrics["finite"]:  # A non-finite update was not applied (see make_update_fn).
      self._update_step += 1
    self.clock.lap("update")
    return metrics

  def step(self, batch: types.Unroll) -> Dict[str, float]:
    """One whole update on a host batch (leaves `[T+1, B, ...]`); returns host metrics."""
    return self.finish(self.dispatch(self.transfer(batch)))

  @property
  def update_step(self) -> int:
    return self._update_step

  def params(self) -> Any:
    """The current parameters on the first device, for the inference server.

    Each leaf's first-device shard (`[1, ...]`, no copy) loses its device axis in one jitted
    call: indexing leaf by leaf would dispatch one operation per leaf, every update.
    """
    return self._first_of_each(jax.tree.map(lambda x: x.addressable_data(0), self._state.params))

  def state(self) -> TrainState:
    """Un-replicated host copy of the train state (for checkpoints)."""
    return jax.device_get(jax.tree.map(lambda x: x[0], self._state))

  def restore(self, state: TrainState) -> None:
    self._state = self._replicate(state)
    self._update_step = int(state.update_step)
