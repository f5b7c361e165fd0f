"""Tests for impala_jax.rl.vtrace.

Every array is time-major `[T, B]` with T != B, and every slice names the axis it cuts (a test
that slices the batch axis where it meant time checks nothing; one of rlax's own tests does).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
import scipy.stats

from impala_jax.rl import vtrace

UNROLL_LENGTH = 7  # T, axis 0.
BATCH_SIZE = 3     # B, axis 1.
TIME_AXIS = 0
BATCH_AXIS = 1

# (name, clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold, lambda_)
SETTINGS = [
    ("paper_defaults", 1.0, 1.0, 1.0, 1.0),
    ("rho_2_c_half_pg_1.5", 2.0, 0.5, 1.5, 1.0),
    ("c_1.3_rho_0.8", 0.8, 1.3, 0.9, 1.0),
    ("lambda_0.7", 1.0, 1.0, 1.0, 0.7),
    ("lambda_0", 1.0, 1.0, 1.0, 0.0),
    ("no_clipping", None, None, None, 1.0),
    ("no_clipping_lambda_0.5", None, None, None, 0.5),
    ("rho_unclipped_c_clipped", None, 1.0, None, 0.9),
]


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
  """The float dtype of a test; float64 runs with x64 enabled and restores the setting after."""
  if request.param == "float64":
    with jax.enable_x64(True):
      yield np.float64
  else:
    yield np.float32


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def vtrace_fn(request):
  return jax.jit(vtrace.vtrace, static_argnames=(
      "clip_rho_threshold", "clip_c_threshold", "clip_pg_rho_threshold")
                 ) if request.param else vtrace.vtrace


def _random_inputs(seed, dtype, log_rho_scale=1.0):
  """Random `[T, B]` inputs with episode ends (zero discounts) inside the unroll."""
  rng = np.random.default_rng(seed)
  shape = (UNROLL_LENGTH, BATCH_SIZE)
  discounts = np.full(shape, 0.9)
  # Episode ends in the middle of the unroll for batch entries 0 and 2, and at the first step
  # of batch entry 1.
  discounts[3, 0] = 0.0
  discounts[0, 1] = 0.0
  discounts[1, 2] = 0.0
  discounts[5, 2] = 0.0
  inputs = dict(
      log_rhos=rng.normal(scale=log_rho_scale, size=shape),
      discounts=discounts,
      rewards=rng.normal(size=shape),
      values=rng.normal(size=shape),
      bootstrap_value=rng.normal(size=(BATCH_SIZE,)),
  )
  return {k: v.astype(dtype) for k, v in inputs.items()}


def _ground_truth(log_rhos, discounts, rewards, values, bootstrap_value, clip_rho_threshold,
                  clip_c_threshold, clip_pg_rho_threshold, lambda_):
  """The paper's definition (Eq. (1)) as an explicit double sum, float64 numpy, no recursion.

  v_s = V(x_s) + Σ_{t=s}^{T-1} (Π_{i=s}^{t-1} γ_i c_i) δ_t and
  A_s = ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)), for each batch entry b separately.
  """
  log_rhos, discounts, rewards, values, bootstrap_value = (
      np.asarray(x, np.float64)
      for x in (log_rhos, discounts, rewards, values, bootstrap_value))
  num_steps, batch_size = log_rhos.shape
  with np.errstate(over="ignore"):  # e^{1000} = inf; min(threshold, inf) is the threshold.
    ratios = np.exp(log_rhos)
  clip = lambda x, threshold: x if threshold is None else np.minimum(threshold, x)
  rhos = clip(ratios, clip_rho_threshold)
  cs = lambda_ * clip(ratios, clip_c_threshold)
  pg_rhos = clip(ratios, clip_pg_rho_threshold)

  vs = np.zeros((num_steps, batch_size))
  pg_advantages = np.zeros((num_steps, batch_size))
  for b in range(batch_size):  # Batch axis.
    value = lambda t: bootstrap_value[b] if t == num_steps else values[t, b]
    for s in range(num_steps):  # Time axis.
      total = values[s, b]
      for t in range(s, num_steps):
        trace = 1.0
        for i in range(s, t):
          trace *= discounts[i, b] * cs[i, b]
        delta = rhos[t, b] * (rewards[t, b] + discounts[t, b] * value(t + 1) - values[t, b])
        total += trace * delta
      vs[s, b] = total
    for s in range(num_steps):
      v_next = bootstrap_value[b] if s + 1 == num_steps else vs[s + 1, b]
      pg_advantages[s, b] = pg_rhos[s, b] * (
          rewards[s, b] + discounts[s, b] * v_next - values[s, b])
  return vs, pg_advantages


def _tolerance(dtype):
  return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _kwargs(setting):
  _, rho, c, pg, lambda_ = setting
  return dict(clip_rho_threshold=rho, clip_c_threshold=c, clip_pg_rho_threshold=pg,
              lambda_=lambda_)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_matches_paper_definition(setting, dtype, vtrace_fn):
  inputs = _random_inputs(0, dtype)
  out = vtrace_fn(**{k: jnp.asarray(v) for k, v in inputs.items()}, **_kwargs(setting))
  expected_vs, expected_pg = _ground_truth(**inputs, **_kwargs(setting))

  assert out.vs.shape == (UNROLL_LENGTH, BATCH_SIZE)
  assert out.pg_advantages.shape == (UNROLL_LENGTH, BATCH_SIZE)
  assert out.vs.dtype == dtype and out.pg_advantages.dtype == dtype
  np.testing.assert_allclose(out.vs, expected_vs, **_tolerance(dtype))
  np.testing.assert_allclose(out.pg_advantages, expected_pg, **_tolerance(dtype))


def _rlax_vtrace(inputs, clip_rho_threshold, clip_pg_rho_threshold, lambda_):
  """rlax's V-trace, which is per sequence `[T]`, vmapped over the batch axis (axis 1).

  rlax takes ratios (not log-ratios), V(x_t) and V(x_{t+1}) separately, has no None threshold
  (∞ is equivalent) and fixes c̄ = 1.
  """
  values = jnp.asarray(inputs["values"])
  values_t_plus_1 = jnp.concatenate(
      [values[1:], jnp.asarray(inputs["bootstrap_value"])[None]], axis=TIME_AXIS)
  inf_if_none = lambda x: np.inf if x is None else x
  per_sequence = functools.partial(
      rlax.vtrace_td_error_and_advantage, lambda_=lambda_,
      clip_rho_threshold=inf_if_none(clip_rho_threshold),
      clip_pg_rho_threshold=inf_if_none(clip_pg_rho_threshold))
  out = jax.vmap(per_sequence, in_axes=BATCH_AXIS, out_axes=BATCH_AXIS)(
      values, values_t_plus_1, jnp.asarray(inputs["rewards"]),
      jnp.asarray(inputs["discounts"]), jnp.exp(jnp.asarray(inputs["log_rhos"])))
  return out.errors + values, out.pg_advantage


RLAX_SETTINGS = [s for s in SETTINGS if s[2] == 1.0]  # rlax fixes c̄ = 1.


@pytest.mark.parametrize("setting", RLAX_SETTINGS, ids=[s[0] for s in RLAX_SETTINGS])
def test_matches_rlax(setting, dtype, vtrace_fn):
  inputs = _random_inputs(1, dtype)
  kwargs = _kwargs(setting)
  out = vtrace_fn(**{k: jnp.asarray(v) for k, v in inputs.items()}, **kwargs)
  rlax_vs, rlax_pg = _rlax_vtrace(inputs, kwargs["clip_rho_threshold"],
                                  kwargs["clip_pg_rho_threshold"], kwargs["lambda_"])

  # Sanity check of the vmap: rlax's batch entry b is column b of ours.
  assert rlax_vs.shape == (UNROLL_LENGTH, BATCH_SIZE)
  np.testing.assert_allclose(out.vs, rlax_vs, **_tolerance(dtype))
  if kwargs["lambda_"] == 1.0:
    np.testing.assert_allclose(out.pg_advantages, rlax_pg, **_tolerance(dtype))
  else:
    # The documented difference: for λ < 1 rlax bootstraps the advantage from
    # λ v_{s+1} + (1 − λ) V(x_{s+1}), we (and the brief) from v_{s+1}.
    lambda_ = kwargs["lambda_"]
    values = np.asarray(inputs["values"], np.float64)
    bootstrap = np.asarray(inputs["bootstrap_value"], np.float64)[None]
    vs_next = np.concatenate([np.asarray(out.vs, np.float64)[1:], bootstrap], axis=TIME_AXIS)
    values_next = np.concatenate([values[1:], bootstrap], axis=TIME_AXIS)
    ratios = np.exp(np.asarray(inputs["log_rhos"], np.float64))
    pg_threshold = kwargs["clip_pg_rho_threshold"]
    pg_rhos = ratios if pg_threshold is None else np.minimum(pg_threshold, ratios)
    # rlax's last step bootstraps from V(x_T) = v_T, so only earlier steps differ.
    rlax_bootstrap = lambda_ * vs_next + (1.0 - lambda_) * values_next
    rlax_bootstrap[-1] = bootstrap[0]
    rlax_convention = pg_rhos * (
        inputs["rewards"] + inputs["discounts"] * rlax_bootstrap - values)
    np.testing.assert_allclose(rlax_pg, rlax_convention, **_tolerance(dtype))
    assert not np.allclose(out.pg_advantages, rlax_pg)


def test_on_policy_is_n_step_bootstrapped_return(dtype, vtrace_fn):
  """π = μ (log ρ = 0), λ = 1: v_s = Σ_{t≥s} (Π γ) r_t + (Π γ) V(x_T), a plain forward loop."""
  inputs = _random_inputs(2, dtype)
  inputs["log_rhos"] = np.zeros_like(inputs["log_rhos"])
  out = vtrace_fn(**{k: jnp.asarray(v) for k, v in inputs.items()})

  expected = np.zeros((UNROLL_LENGTH, BATCH_SIZE))
  for b in range(BATCH_SIZE):  # Batch axis.
    for s in range(UNROLL_LENGTH):  # Time axis.
      n_step_return, discount_product = 0.0, 1.0
      for t in range(s, UNROLL_LENGTH):
        n_step_return += discount_product * inputs["rewards"][t, b]
        discount_product *= inputs["discounts"][t, b]
      expected[s, b] = n_step_return + discount_product * inputs["bootstrap_value"][b]
  np.testing.assert_allclose(out.vs, expected, **_tolerance(dtype))
  # On-policy the advantage is the n-step return minus the baseline.
  np.testing.assert_allclose(out.pg_advantages, expected - inputs["values"],
                             **_tolerance(dtype))


@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[1], SETTINGS[3]],
                         ids=[SETTINGS[0][0], SETTINGS[1][0], SETTINGS[3][0]])
def test_extreme_log_rhos_stay_finite(setting, dtype, vtrace_fn):
  inputs = _random_inputs(3, dtype)
  log_rhos = inputs["log_rhos"]
  log_rhos[1, 0] = 1000.0   # Time step 1, batch entry 0.
  log_rhos[4, 0] = -1000.0  # Time step 4, batch entry 0.
  log_rhos[:, 2] = 1000.0   # Every time step of batch entry 2.
  log_rhos[2, 1] = -1000.0
  out = vtrace_fn(**{k: jnp.asarray(v) for k, v in inputs.items()}, **_kwargs(setting))

  assert np.all(np.isfinite(out.vs)) and np.all(np.isfinite(out.pg_advantages))
  expected_vs, expected_pg = _ground_truth(**inputs, **_kwargs(setting))
  np.testing.assert_allclose(out.vs, expected_vs, **_tolerance(dtype))
  np.testing.assert_allclose(out.pg_advantages, expected_pg, **_tolerance(dtype))


def test_minus_infinity_log_rho_cuts_the_trace(dtype, vtrace_fn):
  """log ρ_s = −inf: ρ_s = c_s = 0, so v_s = V(x_s), A_s = 0 and step s−1 bootstraps from V(x_s)."""
  inputs = _random_inputs(4, dtype)
  inputs["discounts"][:] = 0.9  # No episode ends: the cut comes from −inf alone.
  masked_step, masked_entry = 3, 1  # Time step 3 of batch entry 1.
  inputs["log_rhos"][masked_step, masked_entry] = -np.inf
  out = vtrace_fn(**{k: jnp.asarray(v) for k, v in inputs.items()})

  assert np.all(np.isfinite(out.vs)) and np.all(np.isfinite(out.pg_advantages))
  vs = np.asarray(out.vs)[:, masked_entry]  # [T], this batch entry's time axis.
  pg = np.asarray(out.pg_advantages)[:, masked_entry]
  values = inputs["values"][:, masked_entry]
  assert vs[masked_step] == values[masked_step]  # Exactly.
  assert pg[masked_step] == 0.0
  # One step earlier the target is the one-step bootstrap from V(x_s): the trace is cut.
  previous = masked_step - 1
  rho = min(1.0, np.exp(inputs["log_rhos"][previous, masked_entry]))
  one_step = values[previous] + rho * (
      inputs["rewards"][previous, masked_entry]
      + inputs["discounts"][previous, masked_entry] * values[masked_step] - values[previous])
  np.testing.assert_allclose(vs[previous], one_step, **_tolerance(dtype))

  # Nothing at or after the cut changes the targets before it.
  changed = {k: v.copy() for k, v in inputs.items()}
  changed["rewards"][masked_step:, masked_entry] += 10.0
  changed["values"][masked_step + 1:, masked_entry] -= 5.0
  changed["discounts"][masked_step:, masked_entry] = 0.3
  changed["bootstrap_value"][masked_entry] += 7.0
  changed_out = vtrace_fn(**{k: jnp.asarray(v) for k, v in changed.items()})
  np.testing.assert_array_equal(np.asarray(changed_out.vs)[:masked_step + 1, masked_entry],
                                vs[:masked_step + 1])
  np.testing.assert_array_equal(
      np.asarray(changed_out.pg_advantages)[:masked_step, masked_entry], pg[:masked_step])


@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[5]],
                         ids=[SETTINGS[0][0], SETTINGS[5][0]])
def test_no_gradient_through_outputs(setting, vtrace_fn):
  inputs = {k: jnp.asarray(v) for k, v in _random_inputs(5, np.float32).items()}

  def objective(inputs):
    out = vtrace_fn(**inputs, **_kwargs(setting))
    return jnp.sum(out.vs) + jnp.sum(out.pg_advantages)

  grads = jax.grad(objective)(inputs)
  for name, grad in grads.items():
    np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)


def test_no_clipping_with_large_ratios_differs_from_clipping():
  """None really means no clipping: with ratios > 1 the clipped and unclipped targets differ."""
  inputs = {k: jnp.asarray(v) for k, v in _random_inputs(6, np.float32).items()}
  inputs["log_rhos"] = jnp.full_like(inputs["log_rhos"], 0.5)
  clipped = vtrace.vtrace(**inputs)
  unclipped = vtrace.vtrace(**inputs, clip_rho_threshold=None, clip_c_threshold=None,
                            clip_pg_rho_threshold=None)
  assert not np.allclose(clipped.vs, unclipped.vs)
  assert not np.allclose(clipped.pg_advantages, unclipped.pg_advantages)


@pytest.mark.parametrize("bad", [
    "values_wrong_time", "values_wrong_batch", "bootstrap_wrong_rank", "bootstrap_wrong_batch",
    "log_rhos_rank_1", "int_rewards"])
def test_shape_and_dtype_mismatches_raise(bad):
  inputs = {k: jnp.asarray(v) for k, v in _random_inputs(7, np.float32).items()}
  if bad == "values_wrong_time":
    inputs["values"] = inputs["values"][:-1]  # Drops a time step (axis 0).
  elif bad == "values_wrong_batch":
    inputs["values"] = inputs["values"][:, :-1]  # Drops a batch entry (axis 1).
  elif bad == "bootstrap_wrong_rank":
    inputs["bootstrap_value"] = inputs["values"]  # [T, B] instead of [B].
  elif bad == "bootstrap_wrong_batch":
    inputs["bootstrap_value"] = inputs["bootstrap_value"][:-1]
  elif bad == "log_rhos_rank_1":
    inputs["log_rhos"] = inputs["log_rhos"][:, 0]  # One batch entry's time axis.
  elif bad == "int_rewards":
    inputs["rewards"] = inputs["rewards"].astype(jnp.int32)
  with pytest.raises(AssertionError):
    vtrace.vtrace(**inputs)


def test_negative_threshold_raises():
  inputs = {k: jnp.asarray(v) for k, v in _random_inputs(8, np.float32).items()}
  with pytest.raises(ValueError, match="clip_c_threshold"):
    vtrace.vtrace(**inputs, clip_c_threshold=-1.0)


def test_categorical_log_rhos():
  rng = np.random.default_rng(9)
  num_actions = 4
  target_logits = rng.normal(size=(UNROLL_LENGTH, BATCH_SIZE, num_actions)).astype(np.float32)
  behaviour_logits = rng.normal(size=target_logits.shape).astype(np.float32)
  actions = rng.integers(num_actions, size=(UNROLL_LENGTH, BATCH_SIZE)).astype(np.int32)
  log_rhos = vtrace.categorical_log_rhos(jnp.asarray(target_logits),
                                         jnp.asarray(behaviour_logits), jnp.asarray(actions))

  def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

  expected = np.zeros((UNROLL_LENGTH, BATCH_SIZE))
  for t in range(UNROLL_LENGTH):  # Time axis.
    for b in range(BATCH_SIZE):  # Batch axis.
      a = actions[t, b]
      expected[t, b] = (log_softmax(target_logits[t, b])[a]
                        - log_softmax(behaviour_logits[t, b])[a])
  assert log_rhos.shape == (UNROLL_LENGTH, BATCH_SIZE)
  np.testing.assert_allclose(log_rhos, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(AssertionError):  # Actions [B, T] instead of [T, B].
    vtrace.categorical_log_rhos(jnp.asarray(target_logits), jnp.asarray(behaviour_logits),
                                jnp.asarray(actions.T))


def test_gaussian_log_rhos():
  rng = np.random.default_rng(10)
  shape = (UNROLL_LENGTH, BATCH_SIZE, 2)  # [T, B, D]
  target_mean, behaviour_mean, actions = (rng.normal(size=shape) for _ in range(3))
  target_log_std, behaviour_log_std = (rng.normal(scale=0.5, size=shape) for _ in range(2))
  log_rhos = vtrace.gaussian_log_rhos(
      *(jnp.asarray(x, jnp.float32) for x in
        (target_mean, target_log_std, behaviour_mean, behaviour_log_std, actions)))
  expected = (
      scipy.stats.norm.logpdf(actions, target_mean, np.exp(target_log_std)).sum(axis=-1)
      - scipy.stats.norm.logpdf(actions, behaviour_mean, np.exp(behaviour_log_std)).sum(axis=-1))
  assert log_rhos.shape == (UNROLL_LENGTH, BATCH_SIZE)
  np.testing.assert_allclose(log_rhos, expected, rtol=1e-4, atol=1e-4)


def test_log_rhos_from_log_probs_are_log_probability_ratios():
  """exp(log ρ) is π(a|x) / μ(a|x) divided in probability space, and on-policy ρ = 1."""
  target_probs = np.array([[0.9, 0.1], [0.5, 0.25], [0.05, 0.8]])  # [T=3, B=2]
  behaviour_probs = np.array([[0.3, 0.4], [0.5, 0.5], [0.5, 0.2]])
  log_rhos = vtrace.log_rhos_from_log_probs(jnp.log(target_probs), jnp.log(behaviour_probs))
  np.testing.assert_allclose(np.exp(log_rhos), target_probs / behaviour_probs, rtol=1e-5)
  np.testing.assert_array_equal(
      vtrace.log_rhos_from_log_probs(jnp.log(target_probs), jnp.log(target_probs)),
      np.zeros((3, 2)))
  with pytest.raises(AssertionError):  # [B, T] against [T, B].
    vtrace.log_rhos_from_log_probs(jnp.log(target_probs), jnp.log(behaviour_probs).T)
