"""Tests for impala_jax.rl.popart: ART by hand and against rlax, POP's preservation of every
unnormalised output, per-task isolation, and PopArt's units in the objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from impala_jax import networks
from impala_jax import types
from impala_jax.config import NetworkConfig
from impala_jax.rl import distributions
from impala_jax.rl import objectives
from impala_jax.rl import popart

SETTINGS = popart.PopArtSettings(step_size=0.05, scale_lb=1e-3, scale_ub=1e3)


def _state(seed, num_tasks):
  """Statistics as ART leaves them (σ = sqrt(ν − μ²)), of targets of scale ~10."""
  rng = np.random.default_rng(seed)
  shift = rng.normal(0.0, 10.0, num_tasks).astype(np.float32)
  scale = rng.uniform(0.5, 20.0, num_tasks).astype(np.float32)
  return popart.PopArtState(jnp.asarray(shift), jnp.asarray(scale),
                            jnp.asarray(np.square(scale) + np.square(shift)))


def _rlax_state(state):
  return rlax.PopArtState(state.shift, state.scale, state.second_moment)


def test_art_by_hand():
  """Two tasks, β = 0.1. Task 0's targets 1 and 3, task 1's target 10; a masked target of task
  1 (100) counts for nothing.

    μ_0 = 0 + 0.1·((1 − 0) + (3 − 0)) = 0.4,   ν_0 = 1 + 0.1·((1 − 1) + (9 − 1)) = 1.8,
    σ_0 = sqrt(1.8 − 0.16) = sqrt(1.64);
    μ_1 = 0 + 0.1·(10 − 0) = 1,                ν_1 = 1 + 0.1·(100 − 1) = 10.9,
    σ_1 = sqrt(10.9 − 1) = sqrt(9.9).
  """
  state = popart.initial_state(2)
  settings = popart.PopArtSettings(step_size=0.1, scale_lb=1e-6, scale_ub=1e6)
  new = popart.art(state, jnp.array([1.0, 3.0, 10.0, 100.0]), jnp.array([0, 0, 1, 1]),
                   jnp.array([1.0, 1.0, 1.0, 0.0]), settings)
  np.testing.assert_allclose(new.shift, [0.4, 1.0], rtol=1e-6)
  np.testing.assert_allclose(new.second_moment, [1.8, 10.9], rtol=1e-6)
  np.testing.assert_allclose(new.scale, [np.sqrt(1.64), np.sqrt(9.9)], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_art_and_pop_match_rlax(seed):
  """rlax's `popart` update (ART then POP) on the unmasked targets; ours masks the rest."""
  rng = np.random.default_rng(seed)
  num_tasks, features = 4, 6
  state = _state(seed, num_tasks)
  targets = rng.normal(5.0, 30.0, (7, 5)).astype(np.float32)
  tasks = rng.integers(0, num_tasks, (7, 5)).astype(np.int32)
  mask = (rng.uniform(size=(7, 5)) > 0.2).astype(np.float32)
  kernel = rng.normal(size=(features, num_tasks)).astype(np.float32)
  bias = rng.normal(size=(num_tasks,)).astype(np.float32)

  _, rlax_update = rlax.popart(num_tasks, SETTINGS.step_size, SETTINGS.scale_lb,
                               SETTINGS.scale_ub)
  real = mask > 0
  rlax_linear, rlax_new = rlax_update(dict(w=kernel, b=bias), _rlax_state(state),
                                      targets[real], tasks[real])
  linear, new = popart.popart(num_tasks, SETTINGS).update(
      dict(kernel=kernel, bias=bias), state, jnp.asarray(targets), jnp.asarray(tasks),
      jnp.asarray(mask))
  for ours, theirs in zip(new, rlax_new):
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(linear["kernel"], rlax_linear["w"], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(linear["bias"], rlax_linear["b"], rtol=2e-5, atol=1e-5)


def test_normalize_unnormalize_and_select_match_rlax():
  rng = np.random.default_rng(3)
  state = _state(3, 3)
  outputs = jnp.asarray(rng.normal(size=(4, 5, 3)).astype(np.float32))
  tasks = jnp.asarray(rng.integers(0, 3, (4, 5)).astype(np.int32))
  selected = popart.select(outputs, tasks)
  expected = rlax.unnormalize_linear(_rlax_state(state), outputs, tasks)
  np.testing.assert_array_equal(selected, expected.normalized)
  np.testing.assert_allclose(popart.unnormalize(state, selected, tasks), expected.unnormalized,
                             rtol=1e-6)
  values = jnp.asarray(rng.normal(0.0, 50.0, (4, 5)).astype(np.float32))
  np.testing.assert_allclose(popart.normalize(state, values, tasks),
                             rlax.normalize(_rlax_state(state), values, tasks), rtol=1e-6)
  np.testing.assert_allclose(
      popart.unnormalize(state, popart.normalize(state, values, tasks), tasks), values,
      rtol=1e-5, atol=1e-4)


def test_devices_sum_their_targets_into_identical_statistics():
  """ART over four devices' shares (a named vmap axis, as under pmap) equals ART over the whole
  batch at once, on every device."""
  rng = np.random.default_rng(4)
  state = _state(4, 2)
  targets = rng.normal(0.0, 8.0, (4, 6, 3)).astype(np.float32)  # [devices, T, B]
  tasks = rng.integers(0, 2, (4, 6, 3)).astype(np.int32)
  mask = np.ones((4, 6, 3), np.float32)
  per_device = jax.vmap(lambda t, i, m: popart.art(state, t, i, m, SETTINGS, axis_name="d"),
                        axis_name="d")(targets, tasks, mask)
  whole = popart.art(state, targets.reshape(24, 3), tasks.reshape(24, 3), mask.reshape(24, 3),
                     SETTINGS)
  for leaf_devices, leaf_whole in zip(per_device, whole):
    for device in range(4):
      np.testing.assert_allclose(leaf_devices[device], leaf_whole, rtol=1e-6)


def test_scale_stays_within_its_bounds():
  settings = popart.PopArtSettings(step_size=0.5, scale_lb=0.5, scale_ub=2.0)
  state = popart.initial_state(2)
  for _ in range(5):  # Task 0: constant targets (σ → 0); task 1: ±100 (σ → 100).
    state = popart.art(state, jnp.array([3.0, 3.0, 100.0, -100.0]), jnp.array([0, 0, 1, 1]),
                       jnp.ones(4), settings)
  np.testing.assert_allclose(state.scale, [0.5, 2.0])


def _value_network(num_tasks):
  """An MLP agent whose value head has one normalised output per task."""
  network = networks.make_network(NetworkConfig(torso="mlp", mlp_hidden_sizes=(8,)),
                                  num_actions=2, num_tasks=num_tasks)
  rng = np.random.default_rng(num_tasks)
  observation = jnp.asarray(rng.normal(size=(3, 4, 5)).astype(np.float32))  # [T, B, obs]
  first = jnp.zeros((3, 4), bool)
  params = network.init(jax.random.PRNGKey(1), observation, first, ())
  # Random parameters throughout, the value head's bias included (Flax starts it at 0).
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])

  def unnormalized(params, state):
    """Every task's V(x) = σ n(x) + μ, `[T, B, K]`."""
    output, _ = network.apply(params, observation, first, ())
    return output.value * state.scale + state.shift

  return params, unnormalized


def test_pop_preserves_every_unnormalised_output():
  """Random parameters, random statistics and random targets of very different scales for
  three tasks: after each ART step and POP of the value head, σ' n'(x) + μ' = σ n(x) + μ."""
  num_tasks = 3
  params, unnormalized = _value_network(num_tasks)
  state = _state(5, num_tasks)
  settings = popart.PopArtSettings(step_size=0.02, scale_lb=1e-3, scale_ub=1e6)
  update = popart.popart(num_tasks, settings).update
  before = unnormalized(params, state)
  rng = np.random.default_rng(5)
  for _ in range(10):
    tasks = rng.integers(0, num_tasks, (6, 4)).astype(np.int32)
    targets = rng.normal(1.0, 1.0, (6, 4)) * np.array([1.0, 100.0, 1e4])[tasks]
    linear, new_state = update(networks.value_linear(params), state,
                               jnp.asarray(targets, jnp.float32), jnp.asarray(tasks),
                               jnp.ones((6, 4)))
    assert np.all(new_state.scale != state.scale)  # Every task's statistics moved.
    params, state = networks.with_value_linear(params, linear), new_state
    np.testing.assert_allclose(unnormalized(params, state), before, rtol=1e-4,
                               atol=1e-4 * float(jnp.max(jnp.abs(before))))


def test_only_the_updated_tasks_statistics_and_outputs_change():
  """Targets of task 1 alone: tasks 0 and 2 keep their statistics, their value head columns
  and so their normalised and unnormalised outputs, bit for bit."""
  num_tasks = 3
  params, unnormalized = _value_network(num_tasks)
  state = _state(6, num_tasks)
  targets = jnp.asarray(np.random.default_rng(6).normal(50.0, 20.0, (6, 4)), jnp.float32)
  tasks = jnp.ones((6, 4), jnp.int32)
  linear, new_state = popart.popart(num_tasks, SETTINGS).update(
      networks.value_linear(params), state, targets, tasks, jnp.ones((6, 4)))
  new_params = networks.with_value_linear(params, linear)
  others = np.array([0, 2])
  for old_leaf, new_leaf in zip(state, new_state):
    np.testing.assert_array_equal(new_leaf[others], old_leaf[others])
    assert new_leaf[1] != old_leaf[1]
  old_linear = networks.value_linear(params)
  np.testing.assert_array_equal(linear["kernel"][:, others], old_linear["kernel"][:, others])
  np.testing.assert_array_equal(linear["bias"][others], old_linear["bias"][others])
  np.testing.assert_array_equal(unnormalized(new_params, new_state)[..., others],
                                unnormalized(params, state)[..., others])


def test_settings_refuse_bad_values_naming_them():
  with pytest.raises(ValueError, match=r"step_size must be in \(0, 1\], got 0.0"):
    popart.PopArtSettings(step_size=0.0)
  with pytest.raises(ValueError, match="scale_lb=2.0, scale_ub=1.0"):
    popart.PopArtSettings(scale_lb=2.0, scale_ub=1.0)
  with pytest.raises(ValueError, match="num_tasks must be >= 1, got 0"):
    popart.initial_state(0)


def _one_step_batch(values, bootstrap_value):
  """T=2, B=1: two real steps, rewards 1 and 2, γ = 0.9, on-policy (ρ = 1)."""
  transitions = types.Transitions(
      actions=jnp.zeros((2, 1), jnp.int32),
      behaviour_log_probs=jnp.full((2, 1), jnp.log(0.5)),
      rewards=jnp.array([[1.0], [2.0]]), discounts=jnp.full((2, 1), 0.9),
      mask=jnp.ones((2, 1)))
  policy = distributions.Categorical(jnp.zeros((2, 1, 2)))
  return policy, jnp.asarray(values, jnp.float32), jnp.asarray(bootstrap_value, jnp.float32), \
      transitions


@pytest.mark.parametrize("objective", [objectives.impala_loss, objectives.appo_loss])
def test_a_unit_value_scale_changes_nothing(objective):
  args = _one_step_batch([[0.5], [1.5]], [3.0])
  plain = objective(*args)
  scaled = objective(*args, value_scale=jnp.ones((2, 1)))
  for name in plain[1]:
    np.testing.assert_array_equal(plain[1][name], scaled[1][name], err_msg=name)


def test_value_scale_measures_the_baseline_and_advantages_in_sigma_units():
  """With V = σ n + μ the baseline is ½ Σ ((v_s − μ)/σ − n(x_s))² and its gradient with
  respect to n is −((v_s − μ)/σ − n(x_s)); the policy term uses A_s/σ (Hessel et al. 2019).

  σ = 4, μ = 10; n = (0.5, −0.25), n(x_2) = 1 (bootstrap), so V = (12, 9), V(x_2) = 14.
  On-policy V-trace with λ = 1 is the discounted return: v_1 = 2 + 0.9·14 = 14.6,
  v_0 = 1 + 0.9·14.6 = 14.14. Normalised: ((14.14 − 10)/4, (14.6 − 10)/4) = (1.035, 1.15).
  """
  sigma, mu = 4.0, 10.0
  normalized = jnp.array([[0.5], [-0.25]])
  settings = objectives.ImpalaSettings(entropy_cost=0.0)

  def loss(normalized):
    values = sigma * normalized + mu
    policy, _, bootstrap, transitions = _one_step_batch(values, [sigma * 1.0 + mu])
    return objectives.impala_loss(policy, values, bootstrap, transitions, settings,
                                  value_scale=jnp.full((2, 1), sigma))

  (total, metrics), grad = jax.value_and_grad(loss, has_aux=True)(normalized)
  residual = np.array([1.035 - 0.5, 1.15 + 0.25])
  np.testing.assert_allclose(metrics["baseline_loss"], 0.5 * 0.5 * np.sum(residual ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(grad[:, 0], -0.5 * residual, rtol=1e-5)
  # A_s = r_s + γ v_{s+1} − V(x_s) = v_s − V(x_s) here: (2.14, 5.6), then divided by σ.
  # π(a_s) = 0.5, so the policy loss is −Σ log 0.5 · A_s/σ.
  np.testing.assert_allclose(metrics["policy_loss"], -np.log(0.5) * (2.14 + 5.6) / sigma,
                             rtol=1e-5)
  # The metrics stay in the game's units.
  np.testing.assert_allclose(metrics["vs_mean"], (14.14 + 14.6) / 2, rtol=1e-5)
  np.testing.assert_allclose(metrics["value_mean"], (12.0 + 9.0) / 2, rtol=1e-5)
  assert np.isfinite(total)
