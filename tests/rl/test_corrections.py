"""Tests for impala_jax.rl.corrections: the off-policy corrections of the paper's ablation (§5.3).

Arrays are time-major `[T, B]` with T != B. The hand-worked example's expected numbers come from
each correction's formula, written out in the comments next to them, not from the code.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from impala_jax import config as config_lib
from impala_jax import types
from impala_jax.rl import corrections
from impala_jax.rl import distributions
from impala_jax.rl import losses
from impala_jax.rl import objectives
from impala_jax.rl import vtrace as vtrace_lib

TIME_AXIS = 0
BATCH_AXIS = 1
UNROLL_LENGTH, BATCH_SIZE = 6, 3  # Random inputs' T and B.
CORRECTION_ERROR = "Unknown correction 'retrace'; accepted: vtrace, is_1step, epsilon, none."


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# -- A hand-worked example: T=3, B=2 --------------------------------------------------------------
#
# Batch entry 0: three real steps. Batch entry 1: x_1 ended its episode by a time limit (so
# γ_0 = 0.5 still bootstraps from V(x_1)) and step 1 is EnvPool's autoreset step, masked; its
# reward 100, and V(x_2), V(x_3) after it, belong to the next episode.
VALUES = [[1.0, 0.5], [2.0, -1.0], [0.5, 3.0]]  # V(x_t), [T=3, B=2]
BOOTSTRAP = [4.0, 10.0]                           # V(x_3), [B=2]
REWARDS = [[1.0, 2.0], [0.0, 100.0], [2.0, 1.0]]
DISCOUNTS = [[0.9, 0.5], [0.9, 0.9], [0.5, 0.9]]
RATIOS = [[2.0, 0.5], [0.25, 3.0], [1.0, 1.5]]    # π(a_t|x_t) / μ(a_t|x_t)
MASK = [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]

# (correction, clip_pg_rho_threshold, expected v_s, expected A_s), each [T=3, B=2].
HAND_WORKED = [
    # No correction, λ = 1: v_s = r_s + γ_s v_{s+1}, v_3 = V(x_3); A_s = r_s + γ_s v_{s+1} − V(x_s).
    # Entry 0: v_2 = 2 + 0.5·4 = 4, v_1 = 0 + 0.9·4 = 3.6, v_0 = 1 + 0.9·3.6 = 4.24;
    #   A = (4.24 − 1, 3.6 − 2, 4 − 0.5) = (3.24, 1.6, 3.5).
    # Entry 1: v_2 = 1 + 0.9·10 = 10; masked v_1 = V(x_1) = −1, A_1 = 0; v_0 = 2 + 0.5·(−1) = 1.5;
    #   A_0 = 1.5 − 0.5 = 1, A_2 = 10 − 3 = 7. The ratios (2, 0.25, ...) play no part.
    ("none", 1.0, [[4.24, 1.5], [3.6, -1.0], [4.0, 10.0]], [[3.24, 1.0], [1.6, 0.0], [3.5, 7.0]]),
    # 1-step IS, ρ̄_pg = 1: v_s = r_s + γ_s V(x_{s+1}); A_s = min(1, π/μ)(v_s − V(x_s)).
    # Entry 0: v = (1 + 0.9·2, 0 + 0.9·0.5, 2 + 0.5·4) = (2.8, 0.45, 4);
    #   A = (1·1.8, 0.25·(0.45 − 2), 1·3.5) = (1.8, −0.3875, 3.5).
    # Entry 1: v_0 = 2 + 0.5·(−1) = 1.5, masked v_1 = V(x_1) = −1, v_2 = 1 + 0.9·10 = 10;
    #   A = (0.5·(1.5 − 0.5), 0, 1·(10 − 3)) = (0.5, 0, 7).
    ("is_1step", 1.0, [[2.8, 1.5], [0.45, -1.0], [4.0, 10.0]],
     [[1.8, 0.5], [-0.3875, 0.0], [3.5, 7.0]]),
    # The same, untruncated (ρ̄_pg = None): entry 0's A_0 = 2·1.8 = 3.6, entry 1's A_2 = 1.5·7.
    ("is_1step", None, [[2.8, 1.5], [0.45, -1.0], [4.0, 10.0]],
     [[3.6, 0.5], [-0.3875, 0.0], [3.5, 10.5]]),
    # V-trace (ρ̄ = c̄ = ρ̄_pg = 1), for contrast: ρ = c = min(1, π/μ).
    # Entry 0: ρ = (1, 0.25, 1). δ_2 = 2 + 0.5·4 − 0.5 = 3.5, v_2 = 4;
    #   δ_1 = 0.25·(0.9·0.5 − 2) = −0.3875, v_1 = 2 + (−0.3875 + 0.9·0.25·3.5) = 2.4;
    #   δ_0 = 1 + 0.9·2 − 1 = 1.8, v_0 = 1 + (1.8 + 0.9·1·0.4) = 3.16.
    #   A = (1 + 0.9·2.4 − 1, 0.25·(0.9·4 − 2), 2 + 0.5·4 − 0.5) = (2.16, 0.4, 3.5).
    # Entry 1: ρ = (0.5, 0 (masked), 1). v_2 = 3 + (1 + 9 − 3) = 10, v_1 = −1,
    #   v_0 = 0.5 + 0.5·(2 + 0.5·(−1) − 0.5) = 1; A = (0.5·1, 0, 7).
    ("vtrace", 1.0, [[3.16, 1.0], [2.4, -1.0], [4.0, 10.0]], [[2.16, 0.5], [0.4, 0.0], [3.5, 7.0]]),
]
# The ε-correction's targets are the no-correction's (it changes only log π).
HAND_WORKED.append(("epsilon",) + HAND_WORKED[0][1:])


def _hand_worked_transitions():
  log_probs = _f32(np.log([[0.5, 0.2], [0.1, 0.6], [0.4, 0.3]]))  # log π(a_t|x_t)
  return log_probs, types.Transitions(
      actions=jnp.zeros((3, 2), jnp.int32),  # Not read by the targets.
      behaviour_log_probs=log_probs - _f32(np.log(RATIOS)),  # log μ = log π − log(π/μ).
      rewards=_f32(REWARDS), discounts=_f32(DISCOUNTS), mask=_f32(MASK))


def _targets(log_probs, transitions, values=None, bootstrap=None, correction="vtrace",
             clip_pg_rho_threshold=1.0, lambda_=1.0):
  return losses.correction_targets(
      log_probs, _f32(VALUES) if values is None else values,
      _f32(BOOTSTRAP) if bootstrap is None else bootstrap, transitions,
      clip_rho_threshold=1.0, clip_c_threshold=1.0,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_, correction=correction)


@pytest.mark.parametrize("correction, pg_threshold, expected_vs, expected_advantages",
                         HAND_WORKED, ids=[f"{c[0]}_pg_{c[1]}" for c in HAND_WORKED])
def test_hand_worked_example(correction, pg_threshold, expected_vs, expected_advantages):
  log_probs, transitions = _hand_worked_transitions()
  out, log_rhos = _targets(log_probs, transitions, correction=correction,
                           clip_pg_rho_threshold=pg_threshold)
  assert out.vs.shape == out.pg_advantages.shape == (3, 2)
  np.testing.assert_allclose(out.vs, expected_vs, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out.pg_advantages, expected_advantages, rtol=1e-6, atol=1e-6)
  # The masked step (time 1, entry 1): v = V(x_1) and A = 0 exactly, not merely close.
  assert out.vs[1, 1] == VALUES[1][1]
  assert out.pg_advantages[1, 1] == 0.0
  np.testing.assert_allclose(np.exp(log_rhos), RATIOS, rtol=1e-6)  # Unmasked, for metrics.


def _random(seed, masked=()):
  """Random `[T, B]` inputs with terminal steps (γ = 0); `masked` lists (time, batch) steps."""
  rng = np.random.default_rng(seed)
  shape = (UNROLL_LENGTH, BATCH_SIZE)
  discounts = np.where(rng.uniform(size=shape) < 0.2, 0.0, 0.9)
  mask = np.ones(shape)
  for at in masked:
    mask[at] = 0.0
  log_probs = _f32(np.log(rng.uniform(0.05, 0.95, size=shape)))
  transitions = types.Transitions(
      actions=jnp.zeros(shape, jnp.int32),
      behaviour_log_probs=log_probs + _f32(rng.normal(scale=0.7, size=shape)),
      rewards=_f32(rng.normal(size=shape)), discounts=_f32(discounts), mask=_f32(mask))
  return (log_probs, transitions, _f32(rng.normal(size=shape)),
          _f32(rng.normal(size=(BATCH_SIZE,))))


# -- Against rlax and the definitions ------------------------------------------------------------


def _values_t_plus_1(values, bootstrap):
  return jnp.concatenate([values[1:], bootstrap[None]], axis=TIME_AXIS)


@pytest.mark.parametrize("lambda_", [1.0, 0.7])
def test_no_correction_is_on_policy_vtrace_and_lambda_returns(lambda_):
  # "none": V-trace with every ρ = 1, i.e. rlax's V-trace with rhos of 1 (per sequence, vmapped
  # over the batch axis), and the λ-return of the behaviour data (rlax.lambda_returns).
  log_probs, transitions, values, bootstrap = _random(0)
  out, _ = _targets(log_probs, transitions, values, bootstrap, correction="none",
                    lambda_=lambda_)
  per_sequence = functools.partial(rlax.vtrace_td_error_and_advantage, lambda_=lambda_)
  reference = jax.vmap(per_sequence, in_axes=BATCH_AXIS, out_axes=BATCH_AXIS)(
      values, _values_t_plus_1(values, bootstrap), transitions.rewards, transitions.discounts,
      jnp.ones_like(values))
  np.testing.assert_allclose(out.vs, reference.errors + values, rtol=1e-5, atol=1e-5)
  if lambda_ == 1.0:  # For λ < 1 rlax's advantage differs by design (`rl.vtrace` docstring).
    np.testing.assert_allclose(out.pg_advantages, reference.pg_advantage, rtol=1e-5, atol=1e-5)
  lambda_returns = jax.vmap(functools.partial(rlax.lambda_returns, lambda_=lambda_),
                            in_axes=BATCH_AXIS, out_axes=BATCH_AXIS)(
      transitions.rewards, transitions.discounts, _values_t_plus_1(values, bootstrap))
  np.testing.assert_allclose(out.vs, lambda_returns, rtol=1e-5, atol=1e-5)


def test_no_correction_ignores_the_ratios_and_the_thresholds():
  log_probs, transitions, values, bootstrap = _random(1)
  out, _ = _targets(log_probs, transitions, values, bootstrap, correction="none")
  on_policy = transitions._replace(behaviour_log_probs=log_probs)  # π = μ.
  on_policy_out, _ = _targets(log_probs, on_policy, values, bootstrap, correction="vtrace")
  np.testing.assert_allclose(out.vs, on_policy_out.vs, rtol=1e-6)
  np.testing.assert_allclose(out.pg_advantages, on_policy_out.pg_advantages, rtol=1e-6)
  # ρ̄ < 1 would scale V-trace's on-policy ρ = 1 down; "none" has no ρ to clip.
  masked_log_rhos = jnp.where(transitions.mask > 0, log_probs - transitions.behaviour_log_probs,
                              -jnp.inf)
  low = corrections.targets("none", masked_log_rhos, transitions.discounts,
                            transitions.rewards, values, bootstrap, clip_rho_threshold=0.3,
                            clip_c_threshold=0.3, clip_pg_rho_threshold=0.3, lambda_=1.0)
  np.testing.assert_array_equal(low.vs, out.vs)
  np.testing.assert_array_equal(low.pg_advantages, out.pg_advantages)


@pytest.mark.parametrize("pg_threshold", [1.0, 1.5, None])
def test_one_step_is_targets_are_td_targets_and_advantages_weighted_td_errors(pg_threshold):
  log_probs, transitions, values, bootstrap = _random(2)
  out, log_rhos = _targets(log_probs, transitions, values, bootstrap, correction="is_1step",
                           clip_pg_rho_threshold=pg_threshold)
  # rlax.td_learning: the TD error r_t + γ_t V(x_{t+1}) − V(x_t), per transition.
  td_errors = jax.vmap(jax.vmap(rlax.td_learning))(
      values, transitions.rewards, transitions.discounts, _values_t_plus_1(values, bootstrap))
  np.testing.assert_allclose(out.vs, values + td_errors, rtol=1e-5, atol=1e-6)
  ratios = np.exp(np.asarray(log_rhos, np.float64))
  weights = ratios if pg_threshold is None else np.minimum(pg_threshold, ratios)
  np.testing.assert_allclose(out.pg_advantages, weights * td_errors, rtol=1e-5, atol=1e-6)
  # No trace: a reward reaches its own step's target only (step 3's: v_3 alone).
  later = transitions._replace(rewards=transitions.rewards.at[3].add(5.0))
  later_out, _ = _targets(log_probs, later, values, bootstrap, correction="is_1step",
                          clip_pg_rho_threshold=pg_threshold)
  changed = np.any(np.asarray(later_out.vs) != np.asarray(out.vs), axis=BATCH_AXIS)
  np.testing.assert_array_equal(changed, [t == 3 for t in range(UNROLL_LENGTH)])


def test_vtrace_through_the_dispatch_is_bit_identical_to_vtrace():
  # Today's path, `rl.vtrace.vtrace` on the masked log-ratios, against the dispatch: eager and
  # jitted, default and other settings.
  log_probs, transitions, values, bootstrap = _random(3, masked=[(2, 0), (0, 2)])
  masked_log_rhos = jnp.where(transitions.mask > 0, log_probs - transitions.behaviour_log_probs,
                              -jnp.inf)
  for settings in (dict(clip_rho_threshold=1.0, clip_c_threshold=1.0, clip_pg_rho_threshold=1.0,
                        lambda_=1.0),
                   dict(clip_rho_threshold=2.0, clip_c_threshold=None, clip_pg_rho_threshold=1.5,
                        lambda_=0.8)):
    direct = vtrace_lib.vtrace(masked_log_rhos, transitions.discounts, transitions.rewards,
                               values, bootstrap, **settings)
    dispatched, _ = losses.correction_targets(log_probs, values, bootstrap, transitions,
                                              correction="vtrace", **settings)
    jitted, _ = jax.jit(functools.partial(losses.correction_targets, correction="vtrace",
                                          **settings))(log_probs, values, bootstrap, transitions)
    direct_jitted = jax.jit(functools.partial(vtrace_lib.vtrace, **settings))(
        masked_log_rhos, transitions.discounts, transitions.rewards, values, bootstrap)
    for name in ("vs", "pg_advantages"):
      np.testing.assert_array_equal(getattr(dispatched, name), getattr(direct, name), name)
      np.testing.assert_array_equal(getattr(jitted, name), getattr(direct_jitted, name), name)


def test_default_impala_loss_is_bit_identical_to_the_vtrace_loss_assembled_by_hand():
  # The loss as it was before the corrections: V-trace targets, log π in the policy gradient.
  _, transitions, values, bootstrap = _random(4, masked=[(1, 1)])
  logits = _f32(np.random.default_rng(4).normal(size=(UNROLL_LENGTH, BATCH_SIZE, 3)))
  transitions = transitions._replace(
      actions=jnp.asarray(np.random.default_rng(5).integers(3, size=(UNROLL_LENGTH,
                                                                     BATCH_SIZE)), jnp.int32))
  settings = objectives.ImpalaSettings()

  def by_hand(logits, values):
    policy = distributions.Categorical(logits)
    log_probs = policy.log_prob(transitions.actions)
    masked_log_rhos = jnp.where(
        transitions.mask > 0,
        jax.lax.stop_gradient(log_probs) - transitions.behaviour_log_probs, -jnp.inf)
    out = vtrace_lib.vtrace(masked_log_rhos, transitions.discounts, transitions.rewards, values,
                            bootstrap)
    return (losses.policy_gradient_loss(log_probs, out.pg_advantages, transitions.mask)
            + settings.baseline_cost * losses.baseline_loss(values, out.vs, transitions.mask)
            + settings.entropy_cost * losses.entropy_loss(policy.entropy(), transitions.mask))

  def ours(logits, values):
    return objectives.impala_loss(distributions.Categorical(logits), values, bootstrap,
                                  transitions, settings)[0]

  for fn in (lambda f: f, jax.jit):
    expected, expected_grads = fn(jax.value_and_grad(by_hand, argnums=(0, 1)))(logits, values)
    loss, grads = fn(jax.value_and_grad(ours, argnums=(0, 1)))(logits, values)
    np.testing.assert_array_equal(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads):
      np.testing.assert_array_equal(grad, expected_grad)


# -- Masked steps: nothing of the next episode leaks back, for every correction --------------------


@pytest.mark.parametrize("correction", corrections.CORRECTIONS)
def test_masked_step_cuts_every_correction(correction):
  masked_step, masked_entry = 3, 1
  log_probs, transitions, values, bootstrap = _random(6, masked=[(masked_step, masked_entry)])
  transitions = transitions._replace(discounts=jnp.full_like(transitions.discounts, 0.9))
  kwargs = dict(correction=correction, clip_pg_rho_threshold=None)
  out, _ = _targets(log_probs, transitions, values, bootstrap, **kwargs)
  vs, pg = np.asarray(out.vs), np.asarray(out.pg_advantages)
  assert np.all(np.isfinite(vs)) and np.all(np.isfinite(pg))
  at = (masked_step, masked_entry)
  assert vs[at] == values[at] and pg[at] == 0.0  # Exactly.
  # The step before bootstraps from V(x_s), the last observation of its own episode. For the
  # trace-free corrections and for λ = 1 with ρ = 1 ("none", "epsilon") this is the one-step
  # target r + γ V(x_s); V-trace weighs its TD error by min(1, π/μ).
  before = (masked_step - 1, masked_entry)
  one_step = float(transitions.rewards[before] + 0.9 * values[at])
  if correction == "vtrace":
    rho = min(1.0, float(jnp.exp(log_probs[before] - transitions.behaviour_log_probs[before])))
    one_step = float(values[before]) + rho * (one_step - float(values[before]))
  np.testing.assert_allclose(vs[before], one_step, rtol=1e-6)

  # Everything at the masked step and after it: its reward, γ, μ (even NaN), the next
  # episode's values and V(x_T). The steps before, and the masked step's own v and A, stay.
  changed = transitions._replace(
      rewards=transitions.rewards.at[masked_step:, masked_entry].add(100.0),
      discounts=transitions.discounts.at[masked_step:, masked_entry].set(0.3),
      behaviour_log_probs=transitions.behaviour_log_probs.at[at].set(jnp.nan))
  changed_out, _ = _targets(
      log_probs, changed, values.at[masked_step + 1:, masked_entry].add(-7.0),
      bootstrap.at[masked_entry].add(50.0), **kwargs)
  np.testing.assert_array_equal(np.asarray(changed_out.vs)[:masked_step + 1, masked_entry],
                                vs[:masked_step + 1, masked_entry])
  np.testing.assert_array_equal(
      np.asarray(changed_out.pg_advantages)[:masked_step + 1, masked_entry],
      pg[:masked_step + 1, masked_entry])


@pytest.mark.parametrize("correction", corrections.CORRECTIONS)
def test_masked_step_contributes_nothing_to_the_loss(correction):
  rng = np.random.default_rng(7)
  at = (2, 0)
  logits = _f32(rng.normal(size=(4, 2, 3)))
  values = _f32(rng.normal(size=(4, 2)))
  bootstrap = _f32(rng.normal(size=(2,)))
  transitions = types.Transitions(
      actions=jnp.asarray(rng.integers(3, size=(4, 2)), jnp.int32),
      behaviour_log_probs=_f32(np.log(rng.uniform(0.1, 0.9, size=(4, 2)))),
      rewards=_f32(rng.normal(size=(4, 2))), discounts=_f32(np.full((4, 2), 0.9)),
      mask=_f32(np.ones((4, 2))).at[at].set(0.0))
  settings = objectives.ImpalaSettings(correction=correction)

  def loss(logits, values, transitions):
    return objectives.impala_loss(distributions.Categorical(logits), values, bootstrap,
                                  transitions, settings)

  (value, metrics), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      logits, values, transitions)
  assert set(metrics) == {"loss", "policy_loss", "baseline_loss", "entropy_loss", "entropy",
                          "rho_mean", "rho_clipped_fraction", "value_mean", "vs_mean",
                          "pg_advantage_mean"}
  np.testing.assert_array_equal(grads[0][at], np.zeros(3))  # Nothing learnt at the step.
  np.testing.assert_array_equal(grads[1][at], 0.0)
  garbage = transitions._replace(
      rewards=transitions.rewards.at[at].set(100.0),
      behaviour_log_probs=transitions.behaviour_log_probs.at[at].set(jnp.nan),
      actions=transitions.actions.at[at].set((transitions.actions[at] + 1) % 3))
  garbage_value, garbage_metrics = loss(logits.at[at].set(_f32([5.0, -5.0, 0.0])), values,
                                        garbage)
  np.testing.assert_allclose(garbage_value, value, rtol=1e-6)
  for key, metric in metrics.items():
    np.testing.assert_allclose(garbage_metrics[key], metric, rtol=1e-6, err_msg=key)


def test_targets_are_constants_for_the_gradient():
  log_probs, transitions, values, bootstrap = _random(8, masked=[(2, 2)])

  def total(log_probs, values, bootstrap, correction):
    out, _ = _targets(log_probs, transitions, values, bootstrap, correction=correction)
    return jnp.sum(out.vs) + jnp.sum(out.pg_advantages)

  for correction in corrections.CORRECTIONS:
    grads = jax.grad(total, argnums=(0, 1, 2))(log_probs, values, bootstrap, correction)
    for grad in grads:
      np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=correction)


# -- The ε-correction ---------------------------------------------------------------------------


def _one_step(log_pi_action, reward=1.0):
  """T=1, B=1, two actions, action 0 with log π = `log_pi_action` and μ = π; V(x_0) = 0.5,
  V(x_1) = 2, γ = 0.9: A_0 = r + 1.8 − 0.5 for every correction (on-policy, one step)."""
  # logits (log π(0), log(1 − π(0))) are log-probabilities already.
  logits = np.array([log_pi_action, math.log1p(-math.exp(log_pi_action))])
  return (_f32(logits[None, None]), _f32([[0.5]]), _f32([2.0]), types.Transitions(
      actions=jnp.array([[0]], jnp.int32), behaviour_log_probs=_f32([[log_pi_action]]),
      rewards=_f32([[reward]]), discounts=_f32([[0.9]]), mask=_f32([[1.0]])))


def _policy_loss_and_grad(correction, logits, values, bootstrap, transitions):
  settings = objectives.ImpalaSettings(correction=correction, baseline_cost=0.0,
                                       entropy_cost=0.0)
  loss = lambda lg: objectives.impala_loss(distributions.Categorical(lg), values, bootstrap,
                                           transitions, settings)
  return jax.value_and_grad(loss, has_aux=True)(logits)


@pytest.mark.parametrize("pi", [1e-6, 1e-7, 1e-3])
def test_epsilon_scales_the_policy_gradient_by_pi_over_pi_plus_epsilon(pi):
  logits, values, bootstrap, transitions = _one_step(math.log(pi))
  advantage = 1.0 + 0.9 * 2.0 - 0.5
  (loss, metrics), grad = _policy_loss_and_grad("epsilon", logits, values, bootstrap,
                                                transitions)
  probs = np.array([pi, 1.0 - pi])
  # −log(π + ε)·A, and its gradient −A · π/(π + ε) · ∇log π, ∇log π = onehot(0) − softmax.
  np.testing.assert_allclose(loss, -math.log(pi + corrections.EPSILON) * advantage, rtol=1e-5)
  expected = -advantage * pi / (pi + corrections.EPSILON) * (np.array([1.0, 0.0]) - probs)
  np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["pg_advantage_mean"], advantage, rtol=1e-5)


def test_epsilon_differs_from_none_only_in_the_policy_gradient_term():
  rng = np.random.default_rng(9)
  logits = _f32(rng.normal(size=(UNROLL_LENGTH, BATCH_SIZE, 3)))
  _, transitions, values, bootstrap = _random(9, masked=[(4, 0)])
  transitions = transitions._replace(actions=jnp.asarray(
      rng.integers(3, size=(UNROLL_LENGTH, BATCH_SIZE)), jnp.int32))
  results = {}
  for correction in ("none", "epsilon"):
    settings = objectives.ImpalaSettings(correction=correction)
    loss = lambda lg, v, s=settings: objectives.impala_loss(
        distributions.Categorical(lg), v, bootstrap, transitions, s)
    results[correction] = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logits,
                                                                                 values)
  (_, none_metrics), none_grads = results["none"]
  (_, epsilon_metrics), epsilon_grads = results["epsilon"]
  for key in none_metrics:
    if key in ("loss", "policy_loss"):
      continue
    np.testing.assert_array_equal(epsilon_metrics[key], none_metrics[key], err_msg=key)
  np.testing.assert_array_equal(epsilon_grads[1], none_grads[1])  # V's gradient: the same.
  # Where π ≫ ε (here π > 0.01) log(π + ε) ≈ log π: the same to within ε/π ≤ 1e-4.
  np.testing.assert_allclose(epsilon_metrics["policy_loss"], none_metrics["policy_loss"],
                             rtol=1e-4)
  np.testing.assert_allclose(epsilon_grads[0], none_grads[0], rtol=1e-4, atol=1e-6)
  assert not np.array_equal(epsilon_metrics["policy_loss"], none_metrics["policy_loss"])


def test_epsilon_keeps_a_vanishing_probability_finite():
  # π(a) = e^{−10⁴} underflows to 0: −log π · A would be 2.3·10⁴; −log(π + ε) · A = −log ε · A.
  logits, values, bootstrap, transitions = _one_step(-200.0)
  logits = logits.at[0, 0].set(_f32([-1e4, 0.0]))
  (loss, _), grad = _policy_loss_and_grad("epsilon", logits, values, bootstrap, transitions)
  np.testing.assert_allclose(loss, -math.log(corrections.EPSILON) * 2.3, rtol=1e-5)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(corrections.epsilon_log_probs(_f32([0.0, -1e4])),
                             [math.log1p(corrections.EPSILON), math.log(corrections.EPSILON)],
                             rtol=1e-6)


def test_epsilon_is_refused_for_a_gaussian_policy():
  policy = distributions.DiagGaussian(_f32(np.zeros((2, 1, 2))), _f32(np.zeros((2, 1, 2))))
  transitions = types.Transitions(
      actions=_f32(np.zeros((2, 1, 2))), behaviour_log_probs=_f32([[-1.0], [-1.0]]),
      rewards=_f32([[0.0], [1.0]]), discounts=_f32([[0.9], [0.9]]), mask=_f32([[1.0], [1.0]]))
  settings = objectives.ImpalaSettings(correction="epsilon")
  with pytest.raises(ValueError, match=r"correction 'epsilon' .* discrete actions .* "
                                       r"vtrace, is_1step, none\.$"):
    objectives.impala_loss(policy, _f32([[0.0], [0.0]]), _f32([0.0]), transitions, settings)
  for correction in ("vtrace", "is_1step", "none"):  # The others take Gaussians.
    loss, _ = objectives.impala_loss(policy, _f32([[0.0], [0.0]]), _f32([0.0]), transitions,
                                     dataclasses.replace(settings, correction=correction))
    assert np.isfinite(loss), correction
  with pytest.raises(ValueError, match="discrete actions"):
    corrections.check_action_space("epsilon", discrete=False)
  corrections.check_action_space("epsilon", discrete=True)


# -- Names and settings -------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: objectives.ImpalaSettings(correction="retrace"),
    lambda: objectives.AppoSettings(correction="retrace"),
    lambda: config_lib.LossConfig(correction="retrace"),
    lambda: config_lib.LossConfig(objective="appo", correction="retrace"),
    lambda: corrections.targets("retrace", *([_f32(np.zeros((3, 2)))] * 4), _f32(np.zeros(2)),
                                clip_rho_threshold=1.0, clip_c_threshold=1.0,
                                clip_pg_rho_threshold=1.0, lambda_=1.0),
], ids=["impala_settings", "appo_settings", "loss_config", "appo_loss_config", "targets"])
def test_an_unknown_correction_is_named_with_every_accepted_one(build):
  with pytest.raises(ValueError) as error:
    build()
  assert str(error.value) == CORRECTION_ERROR


@pytest.mark.parametrize("correction", ["is_1step", "epsilon", "none"])
def test_appo_takes_only_vtrace(correction):
  for build in (lambda: objectives.AppoSettings(correction=correction),
                lambda: config_lib.LossConfig(objective="appo", correction=correction)):
    with pytest.raises(ValueError, match=rf"^APPO takes only correction 'vtrace', got "
                                         rf"'{correction}'"):
      build()
  # IMPALA takes it, and the config hands it to IMPALA's settings.
  loss_config = config_lib.LossConfig(correction=correction)
  assert loss_config.settings() == objectives.ImpalaSettings(correction=correction)


def test_correction_defaults_to_vtrace_everywhere():
  assert corrections.CORRECTIONS[0] == "vtrace"
  assert objectives.ImpalaSettings().correction == "vtrace"
  assert objectives.AppoSettings().correction == "vtrace"
  assert config_lib.LossConfig().correction == "vtrace"
  assert config_lib.CORRECTIONS == corrections.CORRECTIONS
