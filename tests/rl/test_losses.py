"""Tests for impala_jax.rl.losses (the terms) and impala_jax.rl.objectives (IMPALA, APPO).

Arrays are time-major `[T, B, ...]`; expected values are worked out by hand from the paper's
formulas (§4.1, §4.2) in the comments next to them.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impala_jax import types
from impala_jax.rl import distributions
from impala_jax.rl import losses
from impala_jax.rl import objectives

METRIC_KEYS = {"loss", "policy_loss", "baseline_loss", "entropy_loss", "entropy", "rho_mean",
               "rho_clipped_fraction", "value_mean", "vs_mean", "pg_advantage_mean"}


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _one_step_categorical(reward, behaviour_prob=0.25):
  """T=1, B=1, three actions, π = (0.5, 0.25, 0.25), action 1, γ = 0.9, V(x_0) = 0.5, V(x_1) = 2."""
  return dict(
      logits=_f32([[[math.log(0.5), math.log(0.25), math.log(0.25)]]]),  # [T=1, B=1, A=3]
      values=_f32([[0.5]]),
      bootstrap_value=_f32([2.0]),
      actions=jnp.array([[1]], jnp.int32),
      behaviour_log_probs=_f32([[math.log(behaviour_prob)]]),
      rewards=_f32([[reward]]),
      discounts=_f32([[0.9]]),
      mask=_f32([[1.0]]),
  )


def _arguments(inputs):
  """A dict of arrays (logits, or mean and log_std; values, bootstrap_value; the transitions'
  fields) → the objectives' (policy, values, bootstrap_value, transitions)."""
  inputs = dict(inputs)
  if "logits" in inputs:
    policy = distributions.Categorical(inputs.pop("logits"))
  else:
    policy = distributions.DiagGaussian(inputs.pop("mean"), inputs.pop("log_std"))
  # A run of one task unless the inputs say otherwise: the objectives do not read it.
  inputs.setdefault("task", jnp.zeros(inputs["mask"].shape, jnp.int32))
  transitions = types.Transitions(**{name: inputs.pop(name) for name in types.Transitions._fields})
  return policy, inputs.pop("values"), inputs.pop("bootstrap_value"), transitions, inputs


def _loss(inputs, **settings):
  """impala_loss on a dict of arrays (`_arguments`), with these `ImpalaSettings`."""
  policy, values, bootstrap_value, transitions, rest = _arguments(inputs)
  assert not rest, rest
  return objectives.impala_loss(policy, values, bootstrap_value, transitions,
                                objectives.ImpalaSettings(**settings))


def _grads(inputs, **kwargs):
  # allow_int: the dict holds integer actions too (their "gradient" is float0, unused).
  return jax.grad(lambda x: _loss(x, **kwargs)[0], allow_int=True)(inputs)


@pytest.mark.parametrize("reward, advantage", [(1.0, 2.3), (-2.0, -0.7)])
def test_policy_gradient_on_policy(reward, advantage):
  # On-policy, ρ = 1: A_0 = r_0 + γ V(x_1) − V(x_0) = r + 1.8 − 0.5.
  inputs = _one_step_categorical(reward)
  grads = _grads(inputs, baseline_cost=0.0, entropy_cost=0.0)
  # ∂/∂logits of −log π(a|x)·A = −A (onehot(a) − softmax(logits)).
  expected = -advantage * (np.array([0.0, 1.0, 0.0]) - np.array([0.5, 0.25, 0.25]))
  np.testing.assert_allclose(grads["logits"][0, 0], expected, rtol=1e-5)
  # A gradient-descent step raises the chosen action's logit iff the advantage is positive.
  assert np.sign(-grads["logits"][0, 0, 1]) == np.sign(advantage)

  loss, metrics = _loss(inputs, baseline_cost=0.0, entropy_cost=0.0)
  np.testing.assert_allclose(loss, -math.log(0.25) * advantage, rtol=1e-5)
  np.testing.assert_allclose(metrics["pg_advantage_mean"], advantage, rtol=1e-5)


def test_policy_gradient_off_policy_is_clipped():
  # μ(a) = 0.125, π(a) = 0.25: π/μ = 2, clipped to ρ̄ = ρ̄_pg = 1, so A is as on-policy: 2.3.
  # With ρ̄_pg = None the advantage is 2 · 2.3; with μ(a) = 0.5 (π/μ = 0.5) it is 0.5 · 2.3.
  for behaviour_prob, pg_threshold, advantage in [(0.125, 1.0, 2.3), (0.125, None, 4.6),
                                                  (0.5, 1.0, 1.15)]:
    inputs = _one_step_categorical(1.0, behaviour_prob=behaviour_prob)
    grads = _grads(inputs, baseline_cost=0.0, entropy_cost=0.0,
                   clip_pg_rho_threshold=pg_threshold)
    expected = -advantage * (np.array([0.0, 1.0, 0.0]) - np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(grads["logits"][0, 0], expected, rtol=1e-5)


def test_baseline_gradient_treats_targets_as_constants():
  # T=2, B=1, on-policy: v_1 = r_1 + γ V(x_2) = 0 + 0.9·2 = 1.8; v_0 = r_0 + γ v_1 = 1 + 1.62.
  inputs = dict(
      logits=_f32([[[0.3, -0.2, 0.1]], [[0.0, 0.5, -0.5]]]),  # [T=2, B=1, A=3]
      values=_f32([[0.5], [1.0]]),
      bootstrap_value=_f32([2.0]),
      actions=jnp.array([[0], [2]], jnp.int32),
      rewards=_f32([[1.0], [0.0]]),
      discounts=_f32([[0.9], [0.9]]),
      mask=_f32([[1.0], [1.0]]),
  )
  inputs["behaviour_log_probs"] = distributions.Categorical(inputs["logits"]).log_prob(
      inputs["actions"])
  grads = _grads(inputs, baseline_cost=0.5, entropy_cost=0.01)
  # ∂/∂V(x_s) of 0.5 · ½ (v_s − V(x_s))² with v_s constant: −0.5 (v_s − V(x_s)). Were v_0 not a
  # constant, V(x_1) would also get 0.5 (v_0 − V(x_0)) · ∂v_0/∂V(x_1) from step 0's term.
  np.testing.assert_allclose(grads["values"][:, 0], [-0.5 * (2.62 - 0.5), -0.5 * (1.8 - 1.0)],
                             rtol=1e-5)
  # No gradient reaches the inputs of the targets.
  for name in ("bootstrap_value", "rewards", "discounts", "behaviour_log_probs"):
    np.testing.assert_array_equal(grads[name], np.zeros_like(grads[name]), err_msg=name)

  _, metrics = _loss(inputs)
  np.testing.assert_allclose(metrics["vs_mean"], (2.62 + 1.8) / 2, rtol=1e-5)
  # baseline loss = 0.5 · ½ Σ (v_s − V(x_s))².
  np.testing.assert_allclose(metrics["baseline_loss"],
                             0.25 * ((2.62 - 0.5) ** 2 + (1.8 - 1.0) ** 2), rtol=1e-5)


def test_entropy_gradient_step_increases_entropy():
  # r = 0, γ = 0, V(x_0) = 0: v_0 = 0 and A_0 = 0, so only the entropy term has a gradient.
  inputs = dict(
      logits=_f32([[[2.0, 0.0, -1.0]]]),  # [T=1, B=1, A=3]
      values=_f32([[0.0]]),
      bootstrap_value=_f32([1.0]),
      actions=jnp.array([[0]], jnp.int32),
      rewards=_f32([[0.0]]),
      discounts=_f32([[0.0]]),
      mask=_f32([[1.0]]),
  )
  inputs["behaviour_log_probs"] = distributions.Categorical(inputs["logits"]).log_prob(
      inputs["actions"])
  loss, metrics = _loss(inputs, entropy_cost=0.01)
  probs = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
  entropy = -np.sum(probs * np.log(probs))
  np.testing.assert_allclose(loss, -0.01 * entropy, rtol=1e-5)
  np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-5)

  grads = _grads(inputs, entropy_cost=0.01)
  stepped = distributions.Categorical(inputs["logits"] - 1.0 * grads["logits"])
  assert float(stepped.entropy()[0, 0]) > entropy
  # And the policy term really is inactive here: with entropy_cost = 0 there is no gradient.
  no_entropy_grads = _grads(inputs, entropy_cost=0.0)
  np.testing.assert_array_equal(no_entropy_grads["logits"], np.zeros((1, 1, 3)))


def _random_categorical(seed, masked):
  """T=4, B=2, A=3 random inputs; `masked` lists the (time, batch) steps with mask 0."""
  rng = np.random.default_rng(seed)
  unroll_length, batch_size, num_actions = 4, 2, 3
  mask = np.ones((unroll_length, batch_size))
  for time_step, batch_entry in masked:
    mask[time_step, batch_entry] = 0.0
  return dict(
      logits=_f32(rng.normal(size=(unroll_length, batch_size, num_actions))),
      values=_f32(rng.normal(size=(unroll_length, batch_size))),
      bootstrap_value=_f32(rng.normal(size=(batch_size,))),
      actions=jnp.asarray(rng.integers(num_actions, size=(unroll_length, batch_size)),
                          jnp.int32),
      behaviour_log_probs=_f32(np.log(rng.uniform(0.1, 0.9, size=(unroll_length, batch_size)))),
      rewards=_f32(rng.normal(size=(unroll_length, batch_size))),
      discounts=_f32(np.full((unroll_length, batch_size), 0.9)),
      mask=_f32(mask),
  )


def test_masked_step_contributes_nothing():
  masked_step, masked_entry = 2, 0  # Time step 2 of batch entry 0.
  inputs = _random_categorical(0, masked=[(masked_step, masked_entry)])
  loss, metrics = _loss(inputs)
  grads = _grads(inputs)

  # Everything recorded at the ignored step itself: reward, action, μ, γ, π.
  changed = dict(inputs)
  at = (masked_step, masked_entry)
  changed["rewards"] = inputs["rewards"].at[at].set(100.0)
  changed["actions"] = inputs["actions"].at[at].set((inputs["actions"][at] + 1) % 3)
  changed["behaviour_log_probs"] = inputs["behaviour_log_probs"].at[at].set(jnp.nan)
  changed["discounts"] = inputs["discounts"].at[at].set(0.0)
  changed["logits"] = inputs["logits"].at[at].set(jnp.array([5.0, -5.0, 0.0]))
  changed_loss, changed_metrics = _loss(changed)
  assert np.isfinite(changed_loss)
  # The masked step's entropy was part of nothing, so the change of π there leaves the loss.
  np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)
  for key in METRIC_KEYS:
    np.testing.assert_allclose(changed_metrics[key], metrics[key], rtol=1e-6, err_msg=key)

  # After the cut (next episode): the earlier steps' targets and so their gradients don't move.
  after = dict(inputs)
  after["rewards"] = inputs["rewards"].at[masked_step + 1:, masked_entry].add(10.0)
  after["values"] = inputs["values"].at[masked_step + 1:, masked_entry].add(-3.0)
  after["bootstrap_value"] = inputs["bootstrap_value"].at[masked_entry].add(7.0)
  after_grads = _grads(after)
  for name in ("values", "logits"):
    np.testing.assert_allclose(after_grads[name][:masked_step, masked_entry],
                               grads[name][:masked_step, masked_entry], rtol=1e-6, err_msg=name)
  # Nothing is learnt at the masked step: V(x_s) and π(·|x_s) there get no gradient.
  np.testing.assert_array_equal(grads["values"][at], 0.0)
  np.testing.assert_array_equal(grads["logits"][at], np.zeros(3))
  # Whereas the other batch entry, unmasked, does see a change of its future.
  other = dict(inputs)
  other["rewards"] = inputs["rewards"].at[masked_step + 1:, 1].add(10.0)
  assert not np.allclose(_grads(other)["values"][:masked_step, 1],
                         grads["values"][:masked_step, 1])


@pytest.mark.parametrize("discount, expected_target", [
    (0.9, 1.0 + 0.9 * 3.0),  # Truncated: v_0 = r_0 + γ V(x_1).
    (0.0, 1.0),               # Terminated: v_0 = r_0.
])
def test_episode_end_bootstraps_from_last_observation(discount, expected_target):
  # T=2, B=1: x_1 ends the episode, so step 1 (the autoreset step) is masked out. Its reward and
  # the bootstrap value belong to the next episode and must not matter.
  inputs = dict(
      logits=_f32([[[0.2, 0.1]], [[-0.3, 0.4]]]),  # [T=2, B=1, A=2]
      values=_f32([[0.5], [3.0]]),
      bootstrap_value=_f32([-50.0]),
      actions=jnp.array([[1], [0]], jnp.int32),
      rewards=_f32([[1.0], [100.0]]),
      discounts=_f32([[discount], [0.9]]),
      mask=_f32([[1.0], [0.0]]),
  )
  inputs["behaviour_log_probs"] = distributions.Categorical(inputs["logits"]).log_prob(
      inputs["actions"])
  _, metrics = _loss(inputs)
  # Means over the one real step: step 0.
  np.testing.assert_allclose(metrics["vs_mean"], expected_target, rtol=1e-6)
  np.testing.assert_allclose(metrics["pg_advantage_mean"], expected_target - 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["value_mean"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["baseline_loss"],
                             0.5 * 0.5 * (expected_target - 0.5) ** 2, rtol=1e-6)


def test_mean_is_sum_over_real_steps():
  inputs = _random_categorical(1, masked=[(2, 0), (0, 1)])  # 8 steps, 6 real.
  sum_loss, sum_metrics = _loss(inputs, reduction="sum")
  mean_loss, mean_metrics = _loss(inputs, reduction="mean")
  np.testing.assert_allclose(mean_loss, sum_loss / 6, rtol=1e-6)
  for key in ("policy_loss", "baseline_loss", "entropy_loss"):
    np.testing.assert_allclose(mean_metrics[key], sum_metrics[key] / 6, rtol=1e-6, err_msg=key)
  sum_grads, mean_grads = _grads(inputs, reduction="sum"), _grads(inputs, reduction="mean")
  for name in ("logits", "values"):
    np.testing.assert_allclose(mean_grads[name], sum_grads[name] / 6, rtol=1e-5, atol=1e-7)

  # With no real step at all, the denominator is 1 and both give 0, not NaN.
  empty = dict(inputs, mask=jnp.zeros_like(inputs["mask"]))
  for reduction in losses.REDUCTIONS:
    loss, metrics = _loss(empty, reduction=reduction)
    assert loss == 0.0, reduction
    assert all(np.isfinite(v) for v in metrics.values()), reduction


def test_unknown_reduction_raises():
  for settings in (objectives.ImpalaSettings, objectives.AppoSettings):
    with pytest.raises(ValueError, match=r"Unknown loss reduction 'median'; accepted: sum, mean"):
      settings(reduction="median")


@pytest.mark.parametrize("settings, message", [
    (dict(lambda_=1.5), "lambda_ must be in"), (dict(clip_epsilon=1.0), "clip_epsilon must be")])
def test_invalid_settings_raise(settings, message):
  with pytest.raises(ValueError, match=message):
    objectives.AppoSettings(**settings)


def test_default_settings_are_the_papers():
  # Espeholt et al. 2018, Table G.1; APPO adds PPO's ε = 0.2 to the same terms.
  assert objectives.ImpalaSettings() == objectives.ImpalaSettings(
      baseline_cost=0.5, entropy_cost=0.01, clip_rho_threshold=1.0, clip_c_threshold=1.0,
      clip_pg_rho_threshold=1.0, lambda_=1.0, reduction="sum")
  appo = objectives.AppoSettings()
  assert (appo.clip_epsilon, appo.normalize_advantages) == (0.2, True)
  assert all(getattr(appo, field.name) == getattr(objectives.ImpalaSettings(), field.name)
             for field in dataclasses.fields(objectives.ImpalaSettings))


def test_diag_gaussian_policy():
  # T=1, B=1, D=2, on-policy: A = r + γ V(x_1) − V(x_0) = 1 + 0.9·2 − 0.5 = 2.3.
  mean, log_std, action = np.array([0.1, -0.4]), np.array([-0.5, 0.2]), np.array([0.6, -1.0])
  inputs = dict(
      mean=_f32(mean[None, None]),  # [T=1, B=1, D=2]
      log_std=_f32(log_std[None, None]),
      values=_f32([[0.5]]),
      bootstrap_value=_f32([2.0]),
      actions=_f32(action[None, None]),
      rewards=_f32([[1.0]]),
      discounts=_f32([[0.9]]),
      mask=_f32([[1.0]]),
  )
  inputs["behaviour_log_probs"] = distributions.DiagGaussian(
      inputs["mean"], inputs["log_std"]).log_prob(inputs["actions"])
  grads = _grads(inputs, entropy_cost=0.01)
  std = np.exp(log_std)
  z = (action - mean) / std
  advantage = 2.3
  # log π = Σ_d −½ z_d² − log σ_d − ½ log 2π: ∂/∂μ = z/σ, ∂/∂log σ = z² − 1; H = Σ log σ + const.
  np.testing.assert_allclose(grads["mean"][0, 0], -advantage * z / std, rtol=1e-5)
  np.testing.assert_allclose(grads["log_std"][0, 0], -advantage * (z ** 2 - 1) - 0.01,
                             rtol=1e-5)

  # A larger random batch: finite loss, metrics and gradients.
  rng = np.random.default_rng(2)
  shape = (5, 3, 2)  # [T, B, D]
  big = dict(
      mean=_f32(rng.normal(size=shape)),
      log_std=_f32(rng.normal(scale=0.3, size=shape)),
      values=_f32(rng.normal(size=shape[:2])),
      bootstrap_value=_f32(rng.normal(size=shape[1:2])),
      actions=_f32(rng.normal(size=shape)),
      behaviour_log_probs=_f32(rng.normal(size=shape[:2]) - 2.0),
      rewards=_f32(rng.normal(size=shape[:2])),
      discounts=_f32(np.full(shape[:2], 0.99)),
      mask=_f32(np.ones(shape[:2])),
  )
  loss, metrics = _loss(big)
  assert np.isfinite(loss)
  assert all(np.isfinite(v) for v in metrics.values())
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(_grads(big)))


def test_metrics_present_finite_and_jittable():
  inputs = _random_categorical(3, masked=[(1, 1)])
  loss, metrics = _loss(inputs)
  assert set(metrics) == METRIC_KEYS
  for key, value in metrics.items():
    assert np.shape(value) == (), key
    assert np.isfinite(value), key
  np.testing.assert_allclose(
      metrics["loss"],
      metrics["policy_loss"] + metrics["baseline_loss"] + metrics["entropy_loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], loss)

  jitted = jax.jit(functools.partial(_loss, reduction="mean"))
  jit_loss, jit_metrics = jitted(inputs)
  eager_loss, eager_metrics = _loss(inputs, reduction="mean")
  np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-5)
  for key in METRIC_KEYS:
    np.testing.assert_allclose(jit_metrics[key], eager_metrics[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threshold, expected_fraction", [
    (1.0, 2 / 3),   # Real ratios 2.0, 0.5, 1.5: two exceed 1.
    (1.8, 1 / 3),   # Only 2.0 exceeds 1.8.
    (None, 0.0),    # No clipping.
])
def test_rho_clipped_fraction(threshold, expected_fraction):
  rng = np.random.default_rng(4)
  logits = _f32(rng.normal(size=(4, 1, 3)))  # [T=4, B=1, A=3]
  actions = jnp.array([[0], [2], [1], [1]], jnp.int32)
  ratios = np.array([[2.0], [0.5], [1.5], [5.0]])  # π/μ per step; the last step is masked.
  target_log_probs = distributions.Categorical(logits).log_prob(actions)
  inputs = dict(
      logits=logits,
      values=_f32(rng.normal(size=(4, 1))),
      bootstrap_value=_f32([0.0]),
      actions=actions,
      behaviour_log_probs=target_log_probs - _f32(np.log(ratios)),  # log μ = log π − log(π/μ).
      rewards=_f32(rng.normal(size=(4, 1))),
      discounts=_f32(np.full((4, 1), 0.9)),
      mask=_f32([[1.0], [1.0], [1.0], [0.0]]),
  )
  _, metrics = _loss(inputs, clip_rho_threshold=threshold)
  np.testing.assert_allclose(metrics["rho_clipped_fraction"], expected_fraction, rtol=1e-6)
  np.testing.assert_allclose(metrics["rho_mean"], (2.0 + 0.5 + 1.5) / 3, rtol=1e-5)


# -- APPO: the PPO clipped surrogate on V-trace advantages --------------------------------------


def _appo(inputs, **settings):
  """appo_loss on a dict of arrays (`_arguments`, plus proximal_log_probs or not)."""
  policy, values, bootstrap_value, transitions, rest = _arguments(inputs)
  return objectives.appo_loss(policy, values, bootstrap_value, transitions,
                              objectives.AppoSettings(**settings), **rest)


def _appo_grads(inputs, **kwargs):
  return jax.grad(lambda x: _appo(x, **kwargs)[0], allow_int=True)(inputs)


def test_appo_gradient_equals_impala_at_ratio_one():
  # On-policy (π = μ, ratio 1, clipping inactive) and without advantage normalisation, the
  # surrogate's gradient A ∇r = A ∇log π is IMPALA's policy gradient, term for term.
  inputs = _random_categorical(5, masked=[(1, 0)])
  inputs["behaviour_log_probs"] = distributions.Categorical(inputs["logits"]).log_prob(
      inputs["actions"])
  for reduction in losses.REDUCTIONS:
    appo = _appo_grads(inputs, normalize_advantages=False, reduction=reduction)
    impala = _grads(inputs, reduction=reduction)
    for name in ("logits", "values"):
      np.testing.assert_allclose(appo[name], impala[name], rtol=1e-5, atol=1e-7,
                                 err_msg=f"{name}, {reduction}")


@pytest.mark.parametrize("ratio, advantage, blocked", [
    (1.5, 1.0, True),    # r > 1 + ε with A > 0: the clip stops raising π(a) further.
    (0.5, -1.0, True),   # r < 1 − ε with A < 0: the clip stops lowering π(a) further.
    (1.5, -1.0, False),  # r > 1 + ε with A < 0: pulled back, gradient flows.
    (0.5, 1.0, False),   # r < 1 − ε with A > 0: pulled back, gradient flows.
    (1.1, 1.0, False),   # Inside the clip range.
])
def test_clipped_surrogate_blocks_gradient_only_in_the_clipped_direction(ratio, advantage,
                                                                         blocked):
  logits = _f32([[[0.2, -0.1, 0.4]]])  # [T=1, B=1, A=3]
  actions = jnp.array([[2]], jnp.int32)
  log_probs = distributions.Categorical(logits).log_prob(actions)
  behaviour_log_probs = log_probs - math.log(ratio)
  mask = _f32([[1.0]])

  def loss_of(logits):
    return losses.clipped_surrogate_loss(
        distributions.Categorical(logits).log_prob(actions), behaviour_log_probs,
        _f32([[advantage]]), mask, epsilon=0.2)

  grad = jax.grad(loss_of)(logits)
  if blocked:
    np.testing.assert_array_equal(grad, np.zeros_like(grad))
  else:
    assert float(jnp.abs(grad).max()) > 1e-3
  # The value: −min(r A, clip(r, 0.8, 1.2) A).
  expected = -min(ratio * advantage, min(max(ratio, 0.8), 1.2) * advantage)
  np.testing.assert_allclose(loss_of(logits), expected, rtol=1e-5)


def test_clipped_surrogate_agrees_with_rlax_on_random_inputs():
  import rlax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  time_steps = 50
  log_probs = _f32(rng.normal(size=(time_steps, 1)) - 1.0)
  behaviour_log_probs = log_probs + _f32(rng.normal(scale=0.4, size=(time_steps, 1)))
  advantages = _f32(rng.normal(size=(time_steps, 1)))
  mask = _f32(np.ones((time_steps, 1)))
  for epsilon in (0.1, 0.2, 0.3):
    ours = losses.clipped_surrogate_loss(log_probs, behaviour_log_probs, advantages, mask,
                                         epsilon, reduction="mean")
    reference = rlax.clipped_surrogate_pg_loss(
        jnp.exp(log_probs - behaviour_log_probs)[:, 0], advantages[:, 0], epsilon)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, err_msg=f"epsilon={epsilon}")
    # And the gradients with respect to log π.
    ours_grad = jax.grad(lambda lp: losses.clipped_surrogate_loss(
        lp, behaviour_log_probs, advantages, mask, epsilon, reduction="mean"))(log_probs)
    reference_grad = jax.grad(lambda lp: rlax.clipped_surrogate_pg_loss(
        jnp.exp(lp - behaviour_log_probs)[:, 0], advantages[:, 0], epsilon))(log_probs)
    np.testing.assert_allclose(ours_grad, reference_grad, rtol=1e-5, atol=1e-8)


def test_appo_normalises_advantages_over_real_steps_and_masks_garbage():
  inputs = _random_categorical(7, masked=[(2, 1)])
  inputs["behaviour_log_probs"] = inputs["behaviour_log_probs"].at[2, 1].set(jnp.nan)
  loss, metrics = _appo(inputs, reduction="mean")
  assert np.isfinite(loss)
  assert set(metrics) == METRIC_KEYS | {"clip_fraction", "approx_kl"}
  assert all(np.isfinite(v) for v in metrics.values())
  assert metrics["approx_kl"] >= 0.0
  # Standardised over the real steps: mean 0, std 1 there, whatever the masked step holds.
  advantages = _f32(np.arange(8.0).reshape(4, 2))
  mask = _f32(np.ones((4, 2))).at[2, 1].set(0.0)
  standardized = losses.standardize(advantages, mask)
  real = np.asarray(standardized)[np.asarray(mask) > 0]
  np.testing.assert_allclose(real.mean(), 0.0, atol=1e-6)
  np.testing.assert_allclose(real.std(), 1.0, rtol=1e-5)


# -- APPO against a proximal policy (decoupled PPO) ---------------------------------------------


def _with_proximal(inputs, proximal_logits):
  return dict(inputs, proximal_log_probs=distributions.Categorical(
      _f32(proximal_logits)).log_prob(inputs["actions"]))


def test_proximal_appo_gradient_is_impalas_at_the_update_start_however_stale_the_data():
  # With π_prox = π (the first optimizer step of an update) r = π/π_prox = 1: no clip is
  # active and the surrogate's gradient A ∇log π, with V-trace weighing by π_prox/μ = π/μ, is
  # IMPALA's, though μ is far from π. Against μ the same data gives a different gradient.
  inputs = _random_categorical(11, masked=[(3, 1)])
  inputs["behaviour_log_probs"] = inputs["behaviour_log_probs"] - 0.7  # π/μ ≈ 2 at most steps.
  proximal = _with_proximal(inputs, inputs["logits"])
  impala = _grads(inputs, reduction="mean")
  appo_proximal = jax.grad(lambda x: _appo(x, reduction="mean", normalize_advantages=False)[0],
                           allow_int=True)(proximal)
  appo_behaviour = _appo_grads(inputs, reduction="mean", normalize_advantages=False)
  for name in ("logits", "values"):
    np.testing.assert_allclose(appo_proximal[name], impala[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)
  assert float(jnp.abs(appo_behaviour["logits"] - impala["logits"]).max()) > 1e-3
  _, metrics = _appo(proximal, reduction="mean")
  assert float(metrics["clip_fraction"]) == 0.0
  assert float(metrics["approx_kl"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("ratio, advantage_sign, blocked", [
    (1.5, 1.0, True), (0.5, -1.0, True), (1.5, -1.0, False), (0.5, 1.0, False)])
def test_proximal_appo_clips_the_ratio_to_the_proximal_policy_not_to_mu(
    ratio, advantage_sign, blocked):
  # T=1, B=1: π(a) = 0.25 and μ(a) = 0.25 (π/μ = 1, inside any clip range), but π/π_prox =
  # `ratio`. The advantage's sign is set by the reward (V(x_0) = 0.5, V(x_1) = 2, γ = 0.9).
  inputs = _one_step_categorical(reward=advantage_sign * 5.0)
  inputs["proximal_log_probs"] = _f32([[math.log(0.25 / ratio)]])
  grads = jax.grad(lambda x: _appo(x, entropy_cost=0.0, normalize_advantages=False,
                                   clip_epsilon=0.2)[0], allow_int=True)(inputs)
  if blocked:
    np.testing.assert_array_equal(grads["logits"], np.zeros_like(grads["logits"]))
  else:
    assert float(jnp.abs(grads["logits"]).max()) > 1e-3
  _, metrics = _appo(inputs, clip_epsilon=0.2)
  assert float(metrics["clip_fraction"]) == 1.0


def test_proximal_appo_targets_do_not_depend_on_the_current_policy():
  # V-trace weighs by π_prox/μ: its targets (and so the baseline loss) are the same for any π,
  # as PPO's are fixed over an update's epochs.
  inputs = _with_proximal(_random_categorical(12, masked=[]), np.zeros((4, 2, 3)))
  moved = dict(inputs, logits=inputs["logits"] + _f32(np.random.default_rng(0).normal(
      size=(4, 2, 3))))
  _, metrics = _appo(inputs)
  _, moved_metrics = _appo(moved)
  for name in ("vs_mean", "pg_advantage_mean", "baseline_loss", "rho_mean"):
    np.testing.assert_allclose(moved_metrics[name], metrics[name], rtol=1e-6, err_msg=name)
  assert abs(float(moved_metrics["policy_loss"]) - float(metrics["policy_loss"])) > 1e-4
