"""PopArt in the learner (impala_jax.learning with config.PopArtConfig): its settings, the order
of one update (targets, ART, POP, loss), the statistics following the targets, every device
keeping the same statistics, and PopArt off leaving the plain update as it was."""

import dataclasses
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import learning
from impala_jax import networks
from impala_jax.acting import stack_unrolls
from impala_jax.learning import update as update_lib
from impala_jax.rl import objectives
from impala_jax.rl import popart
import test_learner as plain  # pylint: disable=g-bad-import-order  (CartPole-shaped unrolls)

T, OBS_DIM, NUM_ACTIONS = plain.T, plain.OBS_DIM, plain.NUM_ACTIONS
BATCH = 4  # unrolls per update: 20 value targets.


def _config(step_size=0.02, **kwargs):
  return plain._config(  # pylint: disable=protected-access
      popart=config_lib.PopArtConfig(enabled=True, step_size=step_size), **kwargs)


def _network_and_params(config, seed=0):
  network = networks.make_network(config.network, num_actions=NUM_ACTIONS,
                                  num_tasks=config.popart.network_tasks)
  params = network.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, OBS_DIM)),
                        jnp.ones((1, 1), bool), network.initial_state(1))
  return network, params


def _learner(config, devices=None):
  network, params = _network_and_params(config)
  optimizer = learning.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  return learning.Learner(
      network.apply, params, optimizer, config.loss, num_epochs=config.num_epochs,
      num_minibatches=config.num_minibatches, seed=config.seed,
      unroll_steps=network.convolutional, devices=devices, popart=config.popart)


def _batch(seed, reward_scale=1.0, reward_shift=0.0):
  unrolls = [plain.make_unroll(np.random.default_rng(seed * 100 + i)) for i in range(BATCH)]
  unrolls = [u._replace(reward=u.reward * reward_scale + reward_shift) for u in unrolls]
  return stack_unrolls(unrolls)


# ---------------------------------------------------------------------------------------------
# Settings.


def test_popart_config_defaults_come_from_the_rl_settings_and_are_checked():
  defaults = config_lib.PopArtConfig()
  assert not defaults.enabled and defaults.network_tasks is None and defaults.num_tasks == 1
  assert defaults.settings() == popart.PopArtSettings()
  assert config_lib.PopArtConfig(enabled=True, num_tasks=3).network_tasks == 3
  with pytest.raises(ValueError, match=r"step_size must be in \(0, 1\], got -1"):
    config_lib.PopArtConfig(step_size=-1)
  with pytest.raises(ValueError, match="scale_lb=0.0, scale_ub=1000000.0"):
    config_lib.PopArtConfig(scale_lb=0.0)
  with pytest.raises(ValueError, match="num_tasks must be >= 1, got 0"):
    config_lib.PopArtConfig(num_tasks=0)


def test_a_step_size_that_would_overshoot_the_batch_mean_is_refused_naming_the_bound():
  # 32 unrolls × 20 steps = 640 targets per optimizer step: β ≤ 1/640.
  popart_on = config_lib.PopArtConfig(enabled=True, step_size=0.01)
  with pytest.raises(ValueError, match=r"popart_step_size=0.01 times the 640 value targets.*"
                     r"is 6.4 > 1.*Use popart_step_size <= 0.0015"):
    config_lib.TrainConfig(popart=popart_on)
  # Minibatches share the targets out; PopArt off is not checked; the paper's β fits.
  config_lib.TrainConfig(popart=popart_on, num_minibatches=8, num_epochs=2)
  config_lib.TrainConfig(popart=dataclasses.replace(popart_on, enabled=False))
  config_lib.TrainConfig(popart=config_lib.PopArtConfig(enabled=True))


# ---------------------------------------------------------------------------------------------
# One update, step by step.


def test_one_update_is_targets_then_art_then_pop_then_the_loss_with_the_new_statistics():
  """The learner's update against the four steps of `rl.popart`'s docstring done by hand."""
  config = _config(loss=config_lib.LossConfig(entropy_cost=0.0))
  network, params = _network_and_params(config)
  learner = _learner(config)
  batch = _batch(1, reward_scale=30.0, reward_shift=5.0)
  metrics = learner.step(batch)
  after = learner.state()

  unroll = jax.tree.map(jnp.asarray, batch)
  state = popart.initial_state(1)
  # 1. Targets by V-trace on V = σ n + μ (σ = 1, μ = 0 at the start: V = n).
  output, _ = network.apply(params, unroll.observation, unroll.first, unroll.core_state)
  transitions = learning.learner_inputs(unroll, config.loss.discount)
  values = output.value[..., 0] * state.scale[0] + state.shift[0]
  policy = jax.tree.map(lambda x: x[:-1], output.policy)
  log_probs = policy.log_prob(transitions.actions)
  from impala_jax.rl import vtrace  # pylint: disable=g-import-not-at-top
  vs = vtrace.vtrace(jnp.where(transitions.mask > 0, log_probs - transitions.behaviour_log_probs,
                               -jnp.inf), transitions.discounts, transitions.rewards,
                     values[:-1], values[-1]).vs
  # 2. ART on the real steps' targets: one task, so N = Σ mask.
  beta, n = config.popart.step_size, float(jnp.sum(transitions.mask))
  real = np.asarray(transitions.mask) > 0
  shift = beta * np.sum(np.asarray(vs)[real])
  second_moment = 1.0 + beta * (np.sum(np.square(np.asarray(vs)[real])) - n)
  scale = np.sqrt(second_moment - shift ** 2)
  np.testing.assert_allclose(after.popart.shift, [shift], rtol=1e-5)
  np.testing.assert_allclose(after.popart.second_moment, [second_moment], rtol=1e-5)
  np.testing.assert_allclose(after.popart.scale, [scale], rtol=1e-5)
  # 3. POP: the value head rescaled for (μ', σ'), V unchanged.
  new_state = popart.PopArtState(*(jnp.asarray([x], jnp.float32)
                                   for x in (shift, scale, second_moment)))
  linear = networks.value_linear(params)
  popped = networks.with_value_linear(params, dict(
      kernel=linear["kernel"] / scale, bias=(linear["bias"] - shift) / scale))
  popped_output, _ = network.apply(popped, unroll.observation, unroll.first, unroll.core_state)
  np.testing.assert_allclose(popped_output.value[..., 0] * scale + shift, values, rtol=1e-5,
                             atol=1e-5)
  # 4. The loss on the rescaled parameters with σ', then the optimizer step from there.
  loss_fn = learning.make_loss_fn(network.apply, config.loss)
  (_, expected), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      popped, unroll, None, new_state)
  for name in ("loss", "baseline_loss", "policy_loss", "vs_mean", "value_mean"):
    np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-5, err_msg=name)
  optimizer = learning.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  updates, _ = optimizer.update(grads, optimizer.init(popped), popped)
  import optax  # pylint: disable=g-import-not-at-top
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               after.params, optax.apply_updates(popped, updates))
  np.testing.assert_allclose(metrics["popart_shift"], shift, rtol=1e-5)
  np.testing.assert_allclose(metrics["popart_scale"], scale, rtol=1e-5)


@pytest.mark.parametrize("loss", [
    config_lib.LossConfig(),
    config_lib.LossConfig(correction="is_1step"),
    config_lib.LossConfig(correction="none", lambda_=0.9),
    config_lib.LossConfig(objective="appo"),
    config_lib.LossConfig(objective="appo", ppo_ratio="proximal"),
], ids=["impala", "is_1step", "no-correction", "appo", "appo-proximal"])
def test_popart_learns_from_the_targets_the_objective_computes(loss):
  """Step 1 recomputes the targets outside the objective: they must be the objective's (same
  correction, log-probabilities, settings and preserved values), or the statistics would
  follow something else than what the baseline regresses on."""
  config = _config(loss=loss)
  network, params = _network_and_params(config)
  unroll = jax.tree.map(jnp.asarray, _batch(2, reward_scale=10.0))
  state = popart.PopArtState(jnp.array([3.0]), jnp.array([2.0]), jnp.array([13.0]))
  proximal = None
  if loss.ppo_ratio == "proximal":
    proximal = update_lib.make_proximal_log_probs_fn(network.apply)(params, unroll)
  vs, tasks, mask = update_lib.make_popart_targets_fn(network.apply, loss)(
      params, state, unroll, proximal)
  assert tasks.shape == vs.shape == mask.shape == (T, BATCH) and not np.any(tasks)
  _, metrics = learning.make_loss_fn(network.apply, loss)(params, unroll, proximal, state)
  np.testing.assert_allclose(np.sum(vs * mask) / np.sum(mask), metrics["vs_mean"], rtol=1e-6)


def test_statistics_follow_the_scale_of_the_targets():
  """Rewards ~100 per step: μ and σ start at 0 and 1 and move to the targets' mean and spread
  within a few dozen updates (β N = 0.02 × 20 = 0.4 per update)."""
  learner = _learner(_config())
  batches = [_batch(seed, reward_scale=20.0, reward_shift=100.0) for seed in range(4)]
  for i in range(40):
    metrics = learner.step(batches[i % 4])
    assert metrics["finite"] == 1.0
  state = learner.state()
  config = _config()
  network, _ = _network_and_params(config)
  targets_fn = update_lib.make_popart_targets_fn(network.apply, config.loss)
  vs, mask = [], []
  for batch in batches:
    v, _, m = targets_fn(state.params, state.popart, jax.tree.map(jnp.asarray, batch), None)
    vs.append(np.asarray(v)[np.asarray(m) > 0])
  vs = np.concatenate(vs)
  assert vs.mean() > 100.0  # The scale the statistics must find.
  np.testing.assert_allclose(state.popart.shift, [vs.mean()], rtol=0.2)
  assert vs.std() / 1.5 < float(state.popart.scale[0]) < 1.5 * vs.std()
  assert metrics["popart_shift"] == pytest.approx(float(state.popart.shift[0]))


_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, sys
    sys.path.insert(0, {tests_dir!r})
    import test_popart_learner as t
    assert jax.local_device_count() == 2, jax.devices()
    batch = t._batch(3, reward_scale=50.0)
    results = []
    for devices in (jax.local_devices()[:1], jax.local_devices()):
      learner = t._learner(t._config(), devices=devices)
      for _ in range(3):
        learner.step(batch)
      replicas = np.asarray(learner._state.popart.scale)  # [devices, K]
      assert np.all(replicas == replicas[0]), replicas  # Every device: the same statistics.
      results.append(learner.state())
    one, two = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 (one.params, one.popart), (two.params, two.popart))
    print("SAME_STATISTICS", one.popart.scale)
""")


def test_two_devices_keep_the_statistics_one_device_computes():
  plain.run_on_two_devices(_TWO_DEVICE_SCRIPT, "SAME_STATISTICS")


# ---------------------------------------------------------------------------------------------
# PopArt off: the plain update, as before.


def test_without_popart_the_state_and_loss_are_the_plain_ones():
  """No statistics in the state or its checkpoint, a plain `[T, B]` value, and the loss is the
  objective on the network's own values, bit for bit. (The whole update was compared with the
  code before PopArt: identical parameters, optimizer state and metrics after three updates.)"""
  config = plain._config()  # pylint: disable=protected-access
  learner = plain._learner(config)  # pylint: disable=protected-access
  assert learner.state().popart is None
  assert list(update_lib.checkpoint_fields(learner.state())) == [
      "params", "opt_state", "update_step"]
  network, params = plain._network_and_params(config)  # pylint: disable=protected-access
  unroll = jax.tree.map(jnp.asarray, _batch(4))
  loss, metrics = learning.make_loss_fn(network.apply, config.loss)(params, unroll)
  output, _ = network.apply(params, unroll.observation, unroll.first, unroll.core_state)
  assert output.value.shape == (T + 1, BATCH)
  expected_loss, expected = objectives.impala_loss(
      jax.tree.map(lambda x: x[:-1], output.policy), output.value[:-1], output.value[-1],
      learning.learner_inputs(unroll, config.loss.discount), config.loss.settings())
  np.testing.assert_array_equal(loss, expected_loss)
  for name in expected:
    np.testing.assert_array_equal(metrics[name], expected[name], err_msg=name)
  assert "popart_scale" not in learner.step(_batch(4))


def test_the_update_refuses_a_state_that_does_not_match_its_popart_setting():
  config = _config()
  network, params = _network_and_params(config)
  optimizer = learning.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  update = update_lib.make_update_fn(network.apply, optimizer, config.loss,
                                     popart=config.popart)
  state = update_lib.initial_train_state(params, optimizer, config_lib.PopArtConfig())
  with pytest.raises(ValueError, match="PopArt is on but the train state lacks"):
    update(state, jax.tree.map(jnp.asarray, _batch(5)))
