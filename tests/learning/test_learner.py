"""Tests for impala_jax.learning: input alignment, batching, the update, the Learner."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import learning as learner_lib
from impala_jax.acting import stack_unrolls
from impala_jax import networks
from impala_jax import types
from impala_jax.rl import objectives

T = 5  # unroll_length; unrolls carry T+1 timesteps
OBS_DIM = 4
NUM_ACTIONS = 2


def make_unroll(rng: np.random.Generator, use_lstm=False, lstm_size=8) -> types.Unroll:
  """One random unroll with leaves [T+1, 1, ...] (time, env), episode ends inside."""
  terminated = np.zeros((T + 1, 1), bool)
  truncated = np.zeros((T + 1, 1), bool)
  terminated[2, 0] = True  # x_2 terminal: step 2 is EnvPool's autoreset step.
  truncated[4, 0] = True
  first = np.zeros((T + 1, 1), bool)
  first[3, 0] = first[5, 0] = True
  core_state = ()
  if use_lstm:
    core_state = networks.LSTMState(
        cell=rng.normal(size=(1, lstm_size)).astype(np.float32),
        hidden=rng.normal(size=(1, lstm_size)).astype(np.float32))
  return types.Unroll(
      observation=rng.normal(size=(T + 1, 1, OBS_DIM)).astype(np.float32),
      reward=rng.normal(size=(T + 1, 1)).astype(np.float32),
      terminated=terminated, truncated=truncated, first=first,
      action=rng.integers(0, NUM_ACTIONS, size=(T + 1, 1)).astype(np.int32),
      behaviour_log_prob=np.log(rng.uniform(0.2, 0.8, size=(T + 1, 1))).astype(np.float32),
      policy_version=np.full((T + 1, 1), 3, np.int32),
      task=np.zeros((T + 1, 1), np.int32),
      core_state=core_state)


def test_learner_inputs_align_rewards_discounts_and_mask_with_steps():
  unroll = make_unroll(np.random.default_rng(0))
  inputs = learner_lib.learner_inputs(jax.tree.map(jnp.asarray, unroll), discount=0.9)
  time_axis_length = inputs.rewards.shape[0]
  assert time_axis_length == T
  # Step t's reward arrives with x_{t+1}.
  np.testing.assert_allclose(inputs.rewards[:, 0], unroll.reward[1:, 0])
  # Step 1 leads into the terminal x_2: no bootstrap. Step 3 leads into the truncated x_4:
  # it still bootstraps (γ, not 0).
  np.testing.assert_allclose(inputs.discounts[:, 0], [0.9, 0.0, 0.9, 0.9, 0.9])
  # Steps 2 and 4 start from an ended episode: EnvPool's autoreset steps, masked out.
  np.testing.assert_allclose(inputs.mask[:, 0], [1, 1, 0, 1, 0])
  np.testing.assert_array_equal(inputs.actions[:, 0], unroll.action[:-1, 0])


def test_stack_unrolls_lays_out_time_then_batch():
  rng = np.random.default_rng(0)
  unrolls = [make_unroll(rng, use_lstm=True) for _ in range(4)]
  batch = stack_unrolls(unrolls)
  assert batch.observation.shape == (T + 1, 4, OBS_DIM)  # [time, batch, ...]
  np.testing.assert_array_equal(batch.observation[:, 2], unrolls[2].observation[:, 0])
  np.testing.assert_array_equal(batch.reward[:, 1], unrolls[1].reward[:, 0])
  assert batch.core_state.cell.shape == (4, 8)  # [batch, ...]
  np.testing.assert_array_equal(batch.core_state.cell[3], unrolls[3].core_state.cell[0])


def test_transfer_splits_the_batch_axis_over_devices():
  """Device d gets unrolls [d·B/D, (d+1)·B/D) of every field, time first; core state too."""
  from impala_jax.learning import learner as learner_module  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = stack_unrolls([make_unroll(rng, use_lstm=True) for _ in range(4)])
  observation = learner_module.split_over_devices(batch.observation, 2, axis=1)
  assert observation.shape == (2, T + 1, 2, OBS_DIM)
  np.testing.assert_array_equal(observation[1, :, 0], batch.observation[:, 2])
  assert observation.flags.c_contiguous
  cell = learner_module.split_over_devices(batch.core_state.cell, 2, axis=0)
  assert cell.shape == (2, 2, 8)
  np.testing.assert_array_equal(cell[1, 1], batch.core_state.cell[3])
  one = learner_module.split_over_devices(batch.observation, 1, axis=1)
  assert one.shape == (1,) + batch.observation.shape and np.shares_memory(one, batch.observation)


def _with_tasks(batch: types.Unroll, tasks) -> types.Unroll:
  """`batch` with column b playing task `tasks[b]` (constant along time, as actors write it)."""
  return batch._replace(task=np.broadcast_to(np.asarray(tasks, np.int32),
                                             batch.task.shape).copy())


def test_the_task_of_every_column_reaches_transitions_minibatches_and_devices():
  from impala_jax.learning import learner as learner_module  # pylint: disable=g-import-not-at-top
  from impala_jax.learning import update as update_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = _with_tasks(stack_unrolls([make_unroll(rng) for _ in range(4)]), [0, 1, 0, 1])
  assert batch.task.shape == (T + 1, 4) and batch.task.dtype == np.int32
  transitions = learner_lib.learner_inputs(jax.tree.map(jnp.asarray, batch), discount=0.9)
  assert transitions.task.shape == (T, 4) and transitions.task.dtype == jnp.int32
  np.testing.assert_array_equal(transitions.task, np.tile([0, 1, 0, 1], (T, 1)))
  chosen = update_lib._select_unrolls(jax.tree.map(jnp.asarray, batch), jnp.array([3, 1, 2]))
  np.testing.assert_array_equal(chosen.task, np.tile([1, 1, 0], (T + 1, 1)))
  per_device = learner_module.split_over_devices(batch.task, 2, axis=1)
  np.testing.assert_array_equal(per_device[1], np.tile([0, 1], (T + 1, 1)))
  # A run of one task: all zeros, as the actors' buffers start.
  single = learner_lib.learner_inputs(
      jax.tree.map(jnp.asarray, stack_unrolls([make_unroll(rng) for _ in range(2)])), 0.9)
  np.testing.assert_array_equal(single.task, np.zeros((T, 2), np.int32))


def _config(**kwargs):
  defaults = dict(
      network=config_lib.NetworkConfig(torso="mlp", mlp_hidden_sizes=(16,)),
      unroll_length=T, batch_size=4, queue_capacity=8, total_env_steps=10_000,
      optimizer=config_lib.OptimizerConfig(learning_rate=1e-2))
  return config_lib.TrainConfig(**{**defaults, **kwargs})


def _network_and_params(config, seed=0, apply_wrapper=None):
  network = networks.make_network(config.network, num_actions=NUM_ACTIONS)
  params = network.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, OBS_DIM)),
                        jnp.ones((1, 1), bool), network.initial_state(1))
  return network, params


def _learner(config, devices=None, seed=0, apply_fn=None):
  """The Learner as a run builds it from `config` (`runtime.training.make_learner`)."""
  network, params = _network_and_params(config, seed)
  optimizer = learner_lib.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  return learner_lib.Learner(
      apply_fn or network.apply, params, optimizer, config.loss, num_epochs=config.num_epochs,
      num_minibatches=config.num_minibatches, seed=config.seed,
      unroll_steps=network.convolutional, devices=devices)


def test_a_batch_of_two_tasks_updates_with_minibatches():
  config = _config(num_minibatches=2)
  learner = _learner(config)
  rng = np.random.default_rng(1)
  batch = _with_tasks(stack_unrolls([make_unroll(rng) for _ in range(4)]), [1, 0, 1, 0])
  metrics = learner.step(batch)
  assert metrics["finite"] == 1.0 and learner.update_step == 1


def test_updates_reduce_the_loss_on_a_fixed_batch_and_count_steps():
  rng = np.random.default_rng(1)
  unrolls = [make_unroll(rng) for _ in range(4)]
  learner = _learner(_config(loss=config_lib.LossConfig(entropy_cost=0.0)))
  first = learner.step(stack_unrolls(unrolls))
  for _ in range(30):
    last = learner.step(stack_unrolls(unrolls))
  assert learner.update_step == 31
  assert last["baseline_loss"] < first["baseline_loss"]
  assert np.isfinite(last["grad_norm"]) and last["finite"] == 1.0
  assert first["policy_version_mean"] == pytest.approx(3.0)


@pytest.mark.parametrize("correction", config_lib.CORRECTIONS)
def test_updates_run_with_each_off_policy_correction(correction):
  """Every correction of the paper's ablation (§5.3) trains on a batch with autoreset steps:
  finite updates that fit it, reporting the metrics V-trace's do."""
  rng = np.random.default_rng(12)
  unrolls = [make_unroll(rng) for _ in range(4)]
  learner = _learner(_config(loss=config_lib.LossConfig(correction=correction,
                                                        entropy_cost=0.0)))
  first = learner.step(stack_unrolls(unrolls))
  for _ in range(20):
    last = learner.step(stack_unrolls(unrolls))
  assert last["finite"] == 1.0 and all(np.isfinite(value) for value in last.values())
  assert last["baseline_loss"] < first["baseline_loss"]
  assert {"loss", "policy_loss", "baseline_loss", "entropy_loss", "entropy", "rho_mean",
          "rho_clipped_fraction", "value_mean", "vs_mean", "pg_advantage_mean"} <= set(last)


def test_sending_the_batch_ahead_gives_the_same_updates():
  """The accelerator's path (`jax.device_put` laid out as the update's own arrays), run here on
  the CPU, computes what the CPU's path (the host batch straight into the update) does."""
  rng = np.random.default_rng(11)
  batches = [stack_unrolls([make_unroll(rng) for _ in range(4)]) for _ in range(3)]
  params = []
  for send_ahead in (False, True):
    learner = _learner(_config())
    learner.sends_ahead = send_ahead
    pending = learner.dispatch(learner.transfer(batches[0]))
    for batch in batches[1:]:
      ahead = learner.transfer(batch)  # While the previous update may still run.
      learner.finish(pending)
      pending = learner.dispatch(ahead)
    learner.finish(pending)
    assert learner.update_step == 3
    params.append(learner.state().params)
  jax.tree.map(np.testing.assert_array_equal, *params)


def test_published_params_follow_updates():
  rng = np.random.default_rng(2)
  learner = _learner(_config())
  before = learner.params()
  learner.step(stack_unrolls([make_unroll(rng) for _ in range(4)]))
  after = learner.params()
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, after))
  assert max(diffs) > 0


def test_non_finite_update_is_not_applied():
  rng = np.random.default_rng(3)
  unrolls = [make_unroll(rng) for _ in range(4)]
  unrolls[0] = unrolls[0]._replace(reward=np.full_like(unrolls[0].reward, np.nan))
  learner = _learner(_config())
  before = learner.state()
  metrics = learner.step(stack_unrolls(unrolls))
  assert metrics["finite"] == 0.0
  after = learner.state()
  jax.tree.map(np.testing.assert_array_equal, before.params, after.params)
  assert learner.update_step == 0


def _lstm_config():
  return _config(network=config_lib.NetworkConfig(torso="mlp", mlp_hidden_sizes=(16,),
                                                  use_lstm=True, lstm_size=8))


def test_lstm_learner_unrolls_from_the_recorded_core_state():
  """The loss is computed from each unroll's recorded core state, not from zeros."""
  config = _lstm_config()
  network, params = _network_and_params(config)
  unrolls = [make_unroll(np.random.default_rng(4), use_lstm=True) for _ in range(4)]
  time_major = jax.tree.map(jnp.asarray, stack_unrolls(unrolls))
  loss_fn = learner_lib.make_loss_fn(network.apply, config.loss)
  expected_loss, _ = loss_fn(params, time_major)
  zero_state_loss, _ = loss_fn(params, time_major._replace(
      core_state=network.initial_state(len(unrolls))))
  assert abs(float(expected_loss) - float(zero_state_loss)) > 1e-4  # The state matters here.

  metrics = _learner(config).step(stack_unrolls(unrolls))
  assert metrics["loss"] == pytest.approx(float(expected_loss), rel=1e-5)


def test_appo_update_takes_epochs_times_minibatches_optimizer_steps():
  config = _config(loss=config_lib.LossConfig(objective="appo", reduction="mean"),
                   num_epochs=2, num_minibatches=2)
  learner = _learner(config)
  rng = np.random.default_rng(7)
  unrolls = [make_unroll(rng) for _ in range(4)]
  first = learner.step(stack_unrolls(unrolls))
  for _ in range(20):
    last = learner.step(stack_unrolls(unrolls))
  assert learner.update_step == 21  # One learner update (policy version) per batch ...
  state = learner.state()
  # ... and 2 epochs × 2 minibatches = 4 optimizer steps each (Adam/RMSProp count them).
  counts = [int(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0]
  assert counts and max(counts) == 4 * 21
  assert last["baseline_loss"] < first["baseline_loss"]
  assert {"clip_fraction", "approx_kl"} <= set(first)


@pytest.mark.parametrize("num_epochs, num_minibatches, ppo_ratio", [
    (1, 1, "behaviour"), (2, 2, "behaviour"), (3, 4, "behaviour"), (2, 2, "proximal")])
def test_scanned_steps_equal_unrolled_steps(num_epochs, num_minibatches, ppo_ratio):
  """The two ways of running epochs × minibatches (learning/update.py) compute one update."""
  from impala_jax.learning import optimizers  # pylint: disable=g-import-not-at-top
  from impala_jax.learning import update as update_lib  # pylint: disable=g-import-not-at-top
  config = _config(loss=config_lib.LossConfig(objective="appo", reduction="mean",
                                              ppo_ratio=ppo_ratio),
                   num_epochs=num_epochs, num_minibatches=num_minibatches)
  network, params = _network_and_params(config)
  optimizer = optimizers.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  state = update_lib.TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
  batch = jax.tree.map(lambda x: x[None], stack_unrolls(
      [make_unroll(np.random.default_rng(9)) for _ in range(4)]))
  replicate = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  results = []
  for unroll_steps in (True, False):
    update = jax.pmap(update_lib.make_update_fn(
        network.apply, optimizer, config.loss, num_epochs=num_epochs,
        num_minibatches=num_minibatches, unroll_steps=unroll_steps), axis_name=update_lib.AXIS)
    results.append(update(replicate(state), batch))
  (unrolled_state, unrolled_metrics), (scanned_state, scanned_metrics) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               unrolled_state.params, scanned_state.params)
  for name, value in unrolled_metrics.items():
    np.testing.assert_allclose(value, scanned_metrics[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert int(scanned_state.update_step[0]) == 1


def test_proximal_appo_starts_each_update_at_ratio_one():
  """π_prox is the policy at the update's start: its first step sees r = 1 everywhere, later
  epochs move away from it; with one step per update nothing is ever clipped."""
  rng = np.random.default_rng(8)
  unrolls = [make_unroll(rng) for _ in range(4)]
  one_step = _learner(_config(loss=config_lib.LossConfig(objective="appo", reduction="mean",
                                                         ppo_ratio="proximal")))
  for _ in range(3):
    metrics = one_step.step(stack_unrolls(unrolls))
    assert metrics["clip_fraction"] == 0.0
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)
  behaviour = _learner(_config(loss=config_lib.LossConfig(objective="appo", reduction="mean")))
  # μ of the random unrolls is not π.
  assert behaviour.step(stack_unrolls(unrolls))["approx_kl"] > 1e-3
  several = _learner(_config(loss=config_lib.LossConfig(
      objective="appo", reduction="mean", ppo_ratio="proximal"), num_epochs=4))
  first = several.step(stack_unrolls(unrolls))
  assert 0.0 < first["approx_kl"]  # Epochs 2-4 see the policy that epoch 1 moved.


def test_loss_config_defaults_and_settings_come_from_the_rl_settings():
  """LossConfig holds no copy of a default: its fields take rl.objectives' and hand them back."""
  assert config_lib.LossConfig().settings() == objectives.ImpalaSettings()
  assert config_lib.LossConfig(objective="appo").settings() == objectives.AppoSettings()
  changed = config_lib.LossConfig(objective="appo", entropy_cost=0.02, clip_epsilon=0.1,
                                  clip_rho_threshold=None, reduction="mean")
  assert changed.settings() == objectives.AppoSettings(
      entropy_cost=0.02, clip_epsilon=0.1, clip_rho_threshold=None, reduction="mean")
  # APPO's settings are checked for IMPALA too, with rl's messages.
  with pytest.raises(ValueError, match=r"clip_epsilon must be in \(0, 1\), got 1.5"):
    config_lib.LossConfig(clip_epsilon=1.5)
  # Also with a correction APPO does not take, which IMPALA's settings hand on.
  with pytest.raises(ValueError, match=r"clip_epsilon must be in \(0, 1\), got 1.5"):
    config_lib.LossConfig(clip_epsilon=1.5, correction="none")
  assert config_lib.LossConfig(correction="is_1step").settings() == objectives.ImpalaSettings(
      correction="is_1step")
  with pytest.raises(ValueError, match="Unknown loss reduction 'median'; accepted: sum, mean"):
    config_lib.LossConfig(reduction="median")


def test_unknown_ppo_ratio_fails_naming_the_accepted_ones():
  with pytest.raises(ValueError, match="Unknown ppo_ratio 'target'; accepted: behaviour, "
                     "proximal"):
    config_lib.LossConfig(objective="appo", ppo_ratio="target")


def test_minibatches_are_disjoint_and_cover_the_batch():
  from impala_jax.learning import update as update_lib  # pylint: disable=g-import-not-at-top
  indices = update_lib._minibatch_indices(jax.random.PRNGKey(0), batch_size=8,
                                          num_minibatches=4)
  assert [len(i) for i in indices] == [2, 2, 2, 2]
  assert sorted(np.concatenate(indices).tolist()) == list(range(8))
  other = update_lib._minibatch_indices(jax.random.PRNGKey(1), 8, 4)
  assert not all(np.array_equal(a, b) for a, b in zip(indices, other))  # Shuffled per key.


def test_update_refuses_a_share_that_does_not_split_into_minibatches():
  """The update's own guard (TrainConfig.check_devices says so earlier, naming the flags)."""
  from impala_jax.learning import optimizers  # pylint: disable=g-import-not-at-top
  from impala_jax.learning import update as update_lib  # pylint: disable=g-import-not-at-top
  config = _config()
  network, params = _network_and_params(config)
  optimizer = optimizers.make_optimizer(config.optimizer, 10)
  update = update_lib.make_update_fn(network.apply, optimizer, config.loss, num_minibatches=3)
  state = update_lib.TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
  batch = stack_unrolls([make_unroll(np.random.default_rng(0)) for _ in range(4)])
  with pytest.raises(ValueError, match="4 unrolls do not split into num_minibatches=3"):
    jax.pmap(update, axis_name=update_lib.AXIS)(
        jax.tree.map(lambda x: jnp.asarray(x)[None], state), jax.tree.map(lambda x: x[None], batch))


def test_only_convolutional_torsos_unroll_the_optimizer_steps():
  """The learner's choice of loop (learning/update.py) is the network's typed property."""
  for torso in config_lib.TORSOS:
    network = networks.make_network(config_lib.NetworkConfig(torso=torso), num_actions=2)
    assert network.convolutional == (torso != "mlp"), torso


def test_batch_size_not_divisible_by_devices_fails_early():
  with pytest.raises(ValueError, match="batch_size=3 is not divisible by the 2 local devices"):
    _config(batch_size=3).check_devices(2)


_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, sys
    sys.path.insert(0, {tests_dir!r})
    import test_learner as t
    assert jax.local_device_count() == 2, jax.devices()
    rng = np.random.default_rng(5)
    from impala_jax.acting import stack_unrolls
    batch = stack_unrolls([t.make_unroll(rng) for _ in range(4)])
    results = []
    # One device; two; two with the batch sent ahead by jax.device_put (an accelerator's path).
    for devices, send_ahead in ((jax.local_devices()[:1], False),
                                (jax.local_devices(), False), (jax.local_devices(), True)):
      learner = t._learner(t._config(), devices=devices)
      learner.sends_ahead = send_ahead
      for _ in range(3):
        metrics = learner.step(batch)
      results.append((learner.state().params, metrics))
    (p1, m1) = results[0]
    for p2, m2 in results[1:]:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), p1, p2)
      np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    print("SAME_PARAMS")
""")


def run_on_two_devices(script_template: str, expected: str) -> None:
  """Runs `script_template` (formatted with `tests_dir`) in a process with two CPU devices;
  fails unless it exits 0 and prints `expected`."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  script = script_template.format(tests_dir=os.path.dirname(__file__))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert expected in out.stdout


def test_two_devices_give_the_same_update_as_one():
  run_on_two_devices(_TWO_DEVICE_SCRIPT, "SAME_PARAMS")


def test_update_compiles_once_across_steps():
  """A recompile per update would dominate the learner's time; trace once, then reuse."""
  config = _config()
  network, _ = _network_and_params(config)
  traces = {"n": 0}

  def counting_apply(*args, **kwargs):
    traces["n"] += 1  # Runs only while tracing.
    return network.apply(*args, **kwargs)

  learner = _learner(config, apply_fn=counting_apply)
  rng = np.random.default_rng(6)
  for _ in range(4):
    learner.step(stack_unrolls([make_unroll(rng) for _ in range(4)]))
  assert traces["n"] == 1
