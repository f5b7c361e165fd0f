"""The learner's pure update: `update(state, batch) -> (state, metrics)`, run under `pmap`.

One update consumes one batch of T+1-step unrolls:

    for each of num_epochs passes:
      for each of num_minibatches minibatches of whole unrolls (shuffled per pass):
        unroll the network from the recorded core state → objective (IMPALA or APPO)
        → gradients, averaged over devices (pmean) → optax step

With one epoch and one minibatch (IMPALA, the paper) that is one gradient step per batch.
APPO with `ppo_ratio="proximal"` first runs the network once over the whole batch with the
update's starting parameters, for π_prox (`rl.objectives.appo_loss`).
For convolutional torsos the loops are Python loops, unrolled into the jitted function: a
`lax.scan` over minibatches would put the convolutions inside an XLA while loop, which runs
about 17× slower on XLA:CPU (jax-ml/jax#12868). An MLP has no such penalty, and there the
steps run in one `lax.scan`, whose compile time does not grow with epochs × minibatches.

With PopArt (`rl.popart`) each gradient step is, in this order: the network without gradient
for the V-trace targets v_s on V = σ n + μ; ART, the statistics from them, summed over devices;
POP, the value head's last layer rescaled so that V is unchanged; then the objective on the
rescaled parameters with the new σ' (`value_scale`) and the optimizer step. The statistics live
in `TrainState.popart`. The first pass costs one more forward pass per gradient step. Over
several epochs each target moves the statistics once per epoch, as each is regressed on once
per epoch.

Batches are time-major, as the actors write them: each device gets `[T+1, B/D, ...]` (the
learner's `transfer`), so nothing is transposed anywhere.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from impala_jax import config as config_lib
from impala_jax import networks
from impala_jax import types
from impala_jax.rl import losses as rl_losses
from impala_jax.rl import objectives
from impala_jax.rl import popart as popart_lib

AXIS = "devices"


class TrainState(NamedTuple):
  """What the learner updates and a checkpoint keeps (`checkpoint_fields`).

  Attributes:
    params: the network's variables.
    opt_state: the optimizer's state.
    update_step: int32 scalar, learner updates (batches) applied so far.
    popart: PopArt's statistics (`rl.popart.PopArtState`, leaves `[num_tasks]`), replicated
      like the parameters; None without PopArt.
  """

  params: Any
  opt_state: Any
  update_step: jax.Array
  popart: Optional[popart_lib.PopArtState] = None


def initial_train_state(params: Any, optimizer: optax.GradientTransformation,
                        popart: config_lib.PopArtConfig) -> TrainState:
  """A run's first `TrainState`, and the structure its checkpoints restore into: `params`, the
  optimizer's initial state, no updates, and PopArt's initial statistics when it is on."""
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                    popart_lib.initial_state(popart.num_tasks) if popart.enabled else None)


def checkpoint_fields(state: TrainState) -> Dict[str, Any]:
  """What a checkpoint holds of `state`: its fields that are not None, by name.

  Orbax stores a NamedTuple by field name, as it stores this dict, so a run without PopArt
  writes exactly what runs wrote before `TrainState.popart` existed, and their checkpoints
  restore into its state (`TrainState._replace(**fields)`); Orbax refuses a template with a
  field the checkpoint lacks, even a None one.
  """
  return {name: value for name, value in state._asdict().items() if value is not None}


def learner_inputs(unroll: types.Unroll, discount: float) -> types.Transitions:
  """Aligns the actor's timestep records `[T+1, B]` into per-transition arrays `[T, B]`.

  Step t leads from x_t to x_{t+1}: its reward and termination arrive with x_{t+1}. When x_t
  itself ended an episode (terminated or truncated) EnvPool ignores a_t and resets, so step t
  is masked. A truncated x_{t+1} keeps γ_t = γ: the step before a time limit still bootstraps
  from V(x_{t+1}). Step t's task is the unroll's (zeros in a run of one task). See `types.py`
  for both layouts.
  """
  done = jnp.logical_or(unroll.terminated, unroll.truncated)
  return types.Transitions(
      actions=unroll.action[:-1],
      behaviour_log_probs=unroll.behaviour_log_prob[:-1],
      rewards=unroll.reward[1:],
      discounts=discount * (1.0 - unroll.terminated[1:].astype(jnp.float32)),
      mask=1.0 - done[:-1].astype(jnp.float32),
      task=unroll.task[:-1])


def unroll_tasks(unroll: types.Unroll) -> jax.Array:
  """`[T+1, B]` int32, the task of each unroll's environment (0 everywhere in a run of one
  game; docs/architecture.md)."""
  return unroll.task


def _unnormalized_values(output_value: jax.Array, popart_state: popart_lib.PopArtState,
                         tasks: jax.Array) -> jax.Array:
  """V = σ n + μ `[T+1, B]` from the network's normalised values n `[T+1, B, K]`."""
  return popart_lib.unnormalize(popart_state, popart_lib.select(output_value, tasks), tasks)


_OBJECTIVES = {"impala": objectives.impala_loss, "appo": objectives.appo_loss}


def make_loss_fn(apply_fn: Callable[..., Any], loss_config: config_lib.LossConfig):
  """`loss_fn(params, unroll, proximal_log_probs=None, popart_state=None) -> (loss, metrics)`
  on a time-major `Unroll` `[T+1, B, ...]`.

  The network runs over all T+1 timesteps from the unroll's recorded core state; V(x_T) is the
  bootstrap value; the objective (`loss_config.objective`) scores steps 0..T-1. With PopArt's
  statistics (`popart_state`) the network's values are normalised, one per task: the objective
  gets V = σ n + μ of each unroll's task and σ as `value_scale` (`rl.objectives`).
  """
  objective = _OBJECTIVES[loss_config.objective]
  settings = loss_config.settings()

  def loss_fn(params, unroll: types.Unroll, proximal_log_probs=None, popart_state=None):
    output, _ = apply_fn(params, unroll.observation, unroll.first, unroll.core_state)
    transitions = learner_inputs(unroll, loss_config.discount)
    policy = jax.tree.map(lambda x: x[:-1], output.policy)
    extra = {} if proximal_log_probs is None else {"proximal_log_probs": proximal_log_probs}
    values = output.value
    if popart_state is not None:
      tasks = unroll_tasks(unroll)
      values = _unnormalized_values(output.value, popart_state, tasks)
      extra["value_scale"] = popart_state.scale[tasks[:-1]]
    return objective(policy, values[:-1], values[-1], transitions, settings, **extra)

  return loss_fn


def make_popart_targets_fn(apply_fn: Callable[..., Any], loss_config: config_lib.LossConfig):
  """`fn(params, popart_state, unroll [T+1, B], proximal_log_probs or None) -> (v_s, tasks,
  mask)`, each `[T, B]`: the value targets the objective computes (`rl.objectives`: V-trace,
  or the run's `correction`), from the same log-probabilities and settings, on V = σ n + μ;
  PopArt's step 1 (`rl.popart`)."""
  settings = loss_config.settings()

  def targets_fn(params, popart_state, unroll: types.Unroll, proximal_log_probs=None):
    output, _ = apply_fn(params, unroll.observation, unroll.first, unroll.core_state)
    transitions = learner_inputs(unroll, loss_config.discount)
    tasks = unroll_tasks(unroll)
    values = _unnormalized_values(output.value, popart_state, tasks)
    vtrace_log_probs = proximal_log_probs  # Decoupled APPO: V-trace weighs by π_prox/μ.
    if vtrace_log_probs is None:  # IMPALA, and APPO against μ: by π/μ.
      policy = jax.tree.map(lambda x: x[:-1], output.policy)
      vtrace_log_probs = policy.log_prob(transitions.actions)
    targets, _ = rl_losses.correction_targets(
        vtrace_log_probs, values[:-1], values[-1], transitions,
        clip_rho_threshold=settings.clip_rho_threshold,
        clip_c_threshold=settings.clip_c_threshold,
        clip_pg_rho_threshold=settings.clip_pg_rho_threshold, lambda_=settings.lambda_,
        correction=settings.correction)
    return targets.vs, tasks[:-1], transitions.mask

  return targets_fn


def make_proximal_log_probs_fn(apply_fn: Callable[..., Any]):
  """`fn(params, unroll [T+1, B]) -> [T, B]` log π(a_t|x_t), held constant (APPO's π_prox)."""

  def proximal_log_probs(params, unroll: types.Unroll) -> jax.Array:
    output, _ = apply_fn(params, unroll.observation, unroll.first, unroll.core_state)
    policy = jax.tree.map(lambda x: x[:-1], output.policy)
    return jax.lax.stop_gradient(policy.log_prob(unroll.action[:-1]))

  return proximal_log_probs


def _select_unrolls(unroll: types.Unroll, indices: jax.Array) -> types.Unroll:
  """The unrolls `indices` of a time-major batch (fields: axis 1; core state: axis 0)."""
  return types.Unroll(*(jnp.take(x, indices, axis=1) for x in unroll[:-1]),
                      core_state=jax.tree.map(lambda x: x[indices], unroll.core_state))


def _minibatch_indices(key: jax.Array, batch_size: int, num_minibatches: int):
  """`num_minibatches` disjoint index arrays covering `[0, batch_size)` in a random order."""
  order = jax.random.permutation(key, batch_size)
  size = batch_size // num_minibatches
  return [order[i * size:(i + 1) * size] for i in range(num_minibatches)]


def _select_minibatch(minibatch: Tuple[types.Unroll, Any], indices: jax.Array):
  """`(unroll [T+1, B], proximal log-probs [T, B] or None)` → the unrolls `indices`."""
  unroll, proximal = minibatch
  return (_select_unrolls(unroll, indices),
          None if proximal is None else jnp.take(proximal, indices, axis=1))


def pmean_as_one_buffer(tree: Any, axis_name: str) -> Any:
  """`jax.lax.pmean(tree, axis_name)`, computed as one all-reduce of one flat buffer.

  Across processes (gloo on CPUs, or any network) every array all-reduced costs a round trip:
  on loopback here the shallow network's 10 parameter arrays took 38 ms as a tree against 8 ms
  as one buffer of the same size (benchmarks/multihost_learner.py). On one device, or where
  XLA already combines all-reduces, the flatten and split are cheap copies.
  """
  flat, unflatten = jax.flatten_util.ravel_pytree(tree)
  return unflatten(jax.lax.pmean(flat, axis_name))


def _make_gradient_step(loss_fn: Callable[..., Any], optimizer: optax.GradientTransformation,
                        axis_name: str, reduction: str, popart_targets_fn=None,
                        popart_update=None):
  """`step(params, opt_state, popart_state, minibatch) -> (params, opt_state, popart_state,
  metrics, finite)`: one optax step on `(unroll [T+1, b], proximal log-probs [T, b] or None)`,
  gradients over all devices. With PopArt (`popart_targets_fn` and `popart_update`, the
  `rl.popart.PopArt` update) the step first updates the statistics and rescales the value
  head (module docstring); without, `popart_state` is None and passes through."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradient_step(params, opt_state, popart_state, minibatch):
    unroll, proximal = minibatch
    if popart_update is None:
      (_, metrics), grads = grad_fn(params, unroll, proximal)
    else:
      # 1. targets on V = σ n + μ; 2. ART; 3. POP (V unchanged); 4. the loss with σ', μ'.
      targets, tasks, mask = popart_targets_fn(params, popart_state, unroll, proximal)
      linear, popart_state = popart_update(networks.value_linear(params), popart_state,
                                           targets, tasks, mask)
      params = networks.with_value_linear(params, linear)
      (_, metrics), grads = grad_fn(params, unroll, proximal, popart_state)
      # Means over tasks; every device holds the same statistics.
      metrics["popart_shift"] = jnp.mean(popart_state.shift)
      metrics["popart_scale"] = jnp.mean(popart_state.scale)
    grads = pmean_as_one_buffer(grads, axis_name)
    if reduction == "sum":
      # Each device summed over its share of the batch; the paper's loss sums over all of it.
      grads = jax.tree.map(lambda g: g * jax.lax.psum(1, axis_name), grads)
    metrics = pmean_as_one_buffer(metrics, axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    finite = jnp.logical_and(jnp.isfinite(metrics["loss"]), jnp.isfinite(metrics["grad_norm"]))
    return optax.apply_updates(params, updates), opt_state, popart_state, metrics, finite

  return gradient_step


def _minibatch_order(update_key: jax.Array, batch_size: int, num_epochs: int,
                     num_minibatches: int) -> jax.Array:
  """`[num_epochs, num_minibatches, batch_size / num_minibatches]` unroll indices."""
  return jnp.stack([
      jnp.stack(_minibatch_indices(jax.random.fold_in(update_key, epoch), batch_size,
                                   num_minibatches))
      for epoch in range(num_epochs)])


def _unrolled_steps(gradient_step, params, opt_state, popart_state, batch, order):
  """The steps as a Python loop, unrolled into the jitted program (see module docstring).

  `order` is `_minibatch_order`'s `[num_epochs, num_minibatches, b]`; returns the new params,
  optimizer state and PopArt statistics (None without), the metrics averaged over the steps,
  and whether all were finite.
  """
  num_epochs, num_minibatches = order.shape[:2]
  all_finite, step_metrics = jnp.array(True), []
  for epoch in range(num_epochs):
    for i in range(num_minibatches):
      minibatch = batch if num_minibatches == 1 else _select_minibatch(batch, order[epoch, i])
      params, opt_state, popart_state, metrics, finite = gradient_step(
          params, opt_state, popart_state, minibatch)
      all_finite = jnp.logical_and(all_finite, finite)
      step_metrics.append(metrics)
  metrics = jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *step_metrics)
  return params, opt_state, popart_state, metrics, all_finite


def _scanned_steps(gradient_step, params, opt_state, popart_state, batch, order):
  """`_unrolled_steps` as one `lax.scan`: compile time independent of the number of steps."""
  def body(carry, indices):
    minibatch = _select_minibatch(batch, indices)
    params, opt_state, popart_state, metrics, finite = gradient_step(*carry, minibatch)
    return (params, opt_state, popart_state), (metrics, finite)

  flat_order = order.reshape((order.shape[0] * order.shape[1], -1))
  (params, opt_state, popart_state), (metrics, finite) = jax.lax.scan(
      body, (params, opt_state, popart_state), flat_order)
  return params, opt_state, popart_state, jax.tree.map(jnp.mean, metrics), jnp.all(finite)


def _popart_steps(apply_fn: Callable[..., Any], loss_config: config_lib.LossConfig,
                  popart: config_lib.PopArtConfig, axis_name: str) -> Dict[str, Any]:
  """`_make_gradient_step`'s PopArt arguments: none when PopArt is off."""
  if not popart.enabled:
    return {}
  return dict(
      popart_targets_fn=make_popart_targets_fn(apply_fn, loss_config),
      popart_update=popart_lib.popart(popart.num_tasks, popart.settings(), axis_name).update)


def _check_traced(state: TrainState, batch_size: int, num_minibatches: int,
                  popart_enabled: bool) -> None:
  """Checked once, while tracing (the shapes and the state's structure are static)."""
  if batch_size % num_minibatches:
    raise ValueError(f"This device's {batch_size} unrolls do not split into "
                     f"num_minibatches={num_minibatches} minibatches of whole unrolls.")
  if popart_enabled != (state.popart is not None):
    raise ValueError(f"PopArt is {'on' if popart_enabled else 'off'} but the train state "
                     f"{'lacks' if popart_enabled else 'holds'} its statistics "
                     "(`initial_train_state`).")


def make_update_fn(apply_fn: Callable[..., Any], optimizer: optax.GradientTransformation,
                   loss_config: config_lib.LossConfig, *, num_epochs: int = 1,
                   num_minibatches: int = 1, seed: int = 0, axis_name: str = AXIS,
                   unroll_steps: bool = True,
                   popart: config_lib.PopArtConfig = config_lib.PopArtConfig()):
  """Builds the per-device update; run it under `jax.pmap(..., axis_name=axis_name)`.

  Args:
    apply_fn: `apply_fn(params, observation [T+1, B, ...], first [T+1, B], core_state) ->
      (AgentOutput [T+1, B], core_state)`; with PopArt its value is `[T+1, B, num_tasks]`.
    optimizer: an optax transformation.
    loss_config: the objective and its coefficients.
    num_epochs: passes over the batch.
    num_minibatches: optimizer steps per pass, each on a disjoint random subset of whole
      unrolls; the subsets are drawn from `seed` and the update count, so a run is repeatable.
    axis_name: the pmap axis gradients are averaged over.
    unroll_steps: run the epochs × minibatches optimizer steps as a Python loop unrolled into
      the program (for convolutional torsos on XLA:CPU, module docstring), or as one
      `lax.scan` (compile time and program size independent of the number of steps: 10
      epochs × 8 minibatches unrolled took minutes to compile).
    popart: PopArt's settings; enabled, every gradient step updates `TrainState.popart` and
      rescales the value head before its loss (module docstring, `rl.popart`).

  Returns:
    `update(state, batch) -> (state, metrics)` where `batch` is a time-major `Unroll` with
    leaves `[T+1, B, ...]` (this device's share) and core_state leaves `[B, ...]`. Metrics
    are means over the update's optimizer steps (with PopArt also `popart_shift` and
    `popart_scale`, μ and σ averaged over tasks). An update with a non-finite loss or
    gradient in any step is not applied (state unchanged) and reports
    `metrics["finite"] = 0`, so the caller can stop with the last good state intact.

  Raises:
    ValueError: when traced on a batch whose unrolls don't split into `num_minibatches`.
  """
  loss_fn = make_loss_fn(apply_fn, loss_config)
  gradient_step = _make_gradient_step(loss_fn, optimizer, axis_name, loss_config.reduction,
                                      **_popart_steps(apply_fn, loss_config, popart, axis_name))
  base_key = jax.random.PRNGKey(seed)
  use_proximal = loss_config.objective == "appo" and loss_config.ppo_ratio == "proximal"
  proximal_log_probs_fn = make_proximal_log_probs_fn(apply_fn)
  # One step needs no loop: the unrolled form is then the plain program (no gather, no scan).
  single_step = num_epochs * num_minibatches == 1
  steps = _unrolled_steps if unroll_steps or single_step else _scanned_steps

  def update(state: TrainState, batch: types.Unroll) -> Tuple[TrainState, Dict[str, jax.Array]]:
    batch_size = batch.reward.shape[1]
    _check_traced(state, batch_size, num_minibatches, popart.enabled)
    order = _minibatch_order(jax.random.fold_in(base_key, state.update_step), batch_size,
                             num_epochs, num_minibatches)
    proximal = proximal_log_probs_fn(state.params, batch) if use_proximal else None
    params, opt_state, popart_state, metrics, all_finite = steps(
        gradient_step, state.params, state.opt_state, state.popart, (batch, proximal), order)
    new_state = TrainState(params, opt_state, state.update_step + 1, popart_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(all_finite, new, old), new_state, state)
    metrics["finite"] = all_finite.astype(jnp.float32)
    metrics["policy_version_mean"] = jnp.mean(batch.policy_version[:-1].astype(jnp.float32))
    return new_state, metrics

  return update
