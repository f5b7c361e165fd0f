"""The learner: a pure IMPALA update, pmapped over the local devices.

`make_update_fn` builds `update(state, batch) -> (state, metrics)`: unroll the network over
the batch of T+1-step unrolls, compute the V-trace actor-critic loss (paper §4), average the
gradients over devices with `pmean`, apply the optax optimizer. `Learner` holds the replicated
state, turns lists of `Unroll`s into device batches, and hands out parameters for the inference
server.

Host batches are laid out `[num_devices, batch_per_device, T+1, ...]` (unrolls stacked on a
leading axis, then split by device); the jitted update moves time to the front itself, so the
host never transposes observations.
"""

import time
from typing import Any, Dict, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from impala_jax import config as config_lib
from impala_jax import losses
from impala_jax import types

_AXIS = "devices"


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  update_step: jax.Array  # int32 scalar, updates applied so far


class LearnerInputs(NamedTuple):
  """What the loss needs, derived from a time-major Unroll batch `[T+1, B]` (types.py)."""

  actions: jax.Array  # [T, B] a_t
  behaviour_log_probs: jax.Array  # [T, B] log μ(a_t|x_t)
  rewards: jax.Array  # [T, B] r_t, the reward that arrives with x_{t+1}
  discounts: jax.Array  # [T, B] γ_t = γ (1 − terminated(x_{t+1}))
  mask: jax.Array  # [T, B] 1 where step t is a real transition, 0 for EnvPool's autoreset step


def learner_inputs(unroll: types.Unroll, discount: float) -> LearnerInputs:
  """Aligns the actor's timestep records into per-transition arrays (see `types.py`).

  Step t leads from x_t to x_{t+1}: its reward and termination arrive with x_{t+1}. When x_t
  itself ended an episode (terminated or truncated) EnvPool ignores a_t and resets, so step t
  is masked. A truncated x_{t+1} keeps γ_t = γ: the step before a time limit still bootstraps
  from V(x_{t+1}).
  """
  done = jnp.logical_or(unroll.terminated, unroll.truncated)
  return LearnerInputs(
      actions=unroll.action[:-1],
      behaviour_log_probs=unroll.behaviour_log_prob[:-1],
      rewards=unroll.reward[1:],
      discounts=discount * (1.0 - unroll.terminated[1:].astype(jnp.float32)),
      mask=1.0 - done[:-1].astype(jnp.float32))


def make_optimizer(config: config_lib.OptimizerConfig,
                   total_updates: int) -> optax.GradientTransformation:
  """Global-norm clipping, then RMSProp (ε inside the root, as TF's) or Adam; linear LR decay."""
  learning_rate = (optax.linear_schedule(config.learning_rate, 0.0, total_updates)
                   if config.anneal_learning_rate else config.learning_rate)
  if config.optimizer == "rmsprop":
    optimizer = optax.rmsprop(learning_rate, decay=config.rmsprop_decay, eps=config.epsilon,
                              eps_in_sqrt=True,
                              momentum=config.rmsprop_momentum or None)
  else:
    optimizer = optax.adam(learning_rate, eps=config.epsilon)
  if config.max_grad_norm is None:
    return optimizer
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)


def make_loss_fn(apply_fn, loss_config: config_lib.LossConfig):
  """`loss_fn(params, unroll) -> (loss, metrics)` on a time-major `Unroll` `[T+1, B, ...]`.

  The network runs over all T+1 timesteps from the unroll's recorded core state; V(x_T) is the
  bootstrap value; the loss is `losses.impala_loss` on `learner_inputs(unroll)`.
  """

  def loss_fn(params, unroll: types.Unroll):
    output, _ = apply_fn(params, unroll.observation, unroll.first, unroll.core_state)
    inputs = learner_inputs(unroll, loss_config.discount)
    policy = jax.tree.map(lambda x: x[:-1], output.policy)
    return losses.impala_loss(
        policy, output.value[:-1], output.value[-1], inputs.actions, inputs.behaviour_log_probs,
        inputs.rewards, inputs.discounts, inputs.mask,
        baseline_cost=loss_config.baseline_cost, entropy_cost=loss_config.entropy_cost,
        clip_rho_threshold=loss_config.clip_rho_threshold,
        clip_c_threshold=loss_config.clip_c_threshold,
        clip_pg_rho_threshold=loss_config.clip_pg_rho_threshold,
        lambda_=loss_config.lambda_, reduction=loss_config.reduction)

  return loss_fn


def make_update_fn(apply_fn, optimizer: optax.GradientTransformation,
                   loss_config: config_lib.LossConfig, axis_name: str = _AXIS):
  """Builds the per-device update; run it under `jax.pmap(..., axis_name=axis_name)`.

  Args:
    apply_fn: `apply_fn(params, observation [T+1, B, ...], first [T+1, B], core_state) ->
      (AgentOutput [T+1, B], core_state)`.
    optimizer: an optax transformation.
    loss_config: loss coefficients.
    axis_name: the pmap axis gradients are averaged over.

  Returns:
    `update(state, batch) -> (state, metrics)` where `batch` is an `Unroll` with leaves
    `[B, T+1, ...]` (this device's share) and core_state leaves `[B, ...]`. An update whose loss
    or gradients are not finite is not applied (state unchanged) and reports
    `metrics["finite"] = 0`, so the caller can stop with the last good state intact.
  """

  loss_fn = make_loss_fn(apply_fn, loss_config)

  def update(state: TrainState, batch: types.Unroll) -> Tuple[TrainState, Dict[str, jax.Array]]:
    # Batch-major on the host (cheap stacking), time-major for the math.
    unroll = batch._replace(**{
        field: jnp.swapaxes(getattr(batch, field), 0, 1)
        for field in types.Unroll._fields if field != "core_state"})
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, unroll)
    grads = jax.lax.pmean(grads, axis_name)
    if loss_config.reduction == "sum":
      # Each device summed over its share of the batch; the paper's loss sums over all of it.
      grads = jax.tree.map(lambda g: g * jax.lax.psum(1, axis_name), grads)
    metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.logical_and(jnp.isfinite(metrics["loss"]),
                             jnp.isfinite(metrics["grad_norm"]))
    new_state = TrainState(params, opt_state, state.update_step + 1)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics["finite"] = finite.astype(jnp.float32)
    metrics["policy_version_mean"] = jnp.mean(batch.policy_version[:, :-1].astype(jnp.float32))
    return new_state, metrics

  return update


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
  """Holds the replicated `TrainState` and applies pmapped updates to batches of unrolls."""

  def __init__(self, apply_fn, params: Any, config: config_lib.TrainConfig,
               devices: Sequence[jax.Device] = None):
    self._devices = list(devices or jax.local_devices())
    config.check_devices(len(self._devices))
    self._optimizer = make_optimizer(config.optimizer, config.total_updates)
    update = make_update_fn(apply_fn, self._optimizer, config.loss)
    self._update = jax.pmap(update, axis_name=_AXIS, devices=self._devices, donate_argnums=(0,))
    self._state = self._replicate(
        TrainState(params, self._optimizer.init(params), jnp.zeros((), jnp.int32)))
    # Host mirror of state.update_step: the runtime reads it every update, and reading the
    # device copy would add a device→host sync to the learner loop.
    self._update_step = 0
    self.seconds = {"stack": 0.0, "transfer": 0.0, "update": 0.0}
    # Leading axis of a host batch = devices: each device receives its own slice directly.
    self._batch_sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(self._devices), (_AXIS,)),
        jax.sharding.PartitionSpec(_AXIS))

  @property
  def num_devices(self) -> int:
    return len(self._devices)

  def _replicate(self, tree):
    """One copy per device, laid out exactly like the update's outputs (no retrace)."""
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), tree)
    return jax.pmap(lambda x: x, axis_name=_AXIS, devices=self._devices)(stacked)

  def step(self, unrolls: Sequence[types.Unroll]) -> Dict[str, float]:
    """One update on `unrolls` (a list of batch_size unrolls); returns host metrics.

    `seconds` accumulates where the time goes: host-side stacking, the host→device transfer
    (one per leaf per device), and the update itself (device compute + metrics back to host).
    """
    clock = time.perf_counter
    t0 = clock()
    batch = stack_unrolls(unrolls, self.num_devices)
    t1 = clock()
    batch = jax.block_until_ready(jax.tree.map(self._to_devices, batch))
    t2 = clock()
    self._state, metrics = self._update(self._state, batch)
    metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
    if metrics["finite"]:  # A non-finite update was not applied (see make_update_fn).
      self._update_step += 1
    t3 = clock()
    self.seconds["stack"] += t1 - t0
    self.seconds["transfer"] += t2 - t1
    self.seconds["update"] += t3 - t2
    return metrics

  def _to_devices(self, x: np.ndarray) -> jax.Array:
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
