"""Tests for impala_jax.distributions against scipy/numpy formulas and distrax.

Leading dimensions are time-major `[T, B]` with T != B; the action dimension is last.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

from impala_jax.rl import distributions

UNROLL_LENGTH = 5  # T
BATCH_SIZE = 3     # B
NUM_ACTIONS = 4    # A
ACTION_DIM = 2     # D


def _categorical_inputs(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(UNROLL_LENGTH, BATCH_SIZE, NUM_ACTIONS))
  actions = rng.integers(NUM_ACTIONS, size=(UNROLL_LENGTH, BATCH_SIZE))
  return logits.astype(np.float32), actions.astype(np.int32)


def test_categorical_log_prob_and_entropy():
  logits, actions = _categorical_inputs(0)
  policy = distributions.Categorical(jnp.asarray(logits))
  log_probs = np.asarray(scipy.special.log_softmax(logits.astype(np.float64), axis=-1))
  expected_log_prob = np.take_along_axis(log_probs, actions[..., None], axis=-1)[..., 0]
  expected_entropy = scipy.stats.entropy(np.exp(log_probs), axis=-1)

  log_prob = policy.log_prob(jnp.asarray(actions))
  assert log_prob.shape == (UNROLL_LENGTH, BATCH_SIZE)
  np.testing.assert_allclose(log_prob, expected_log_prob, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(policy.entropy(), expected_entropy, rtol=1e-5, atol=1e-6)

  reference = distrax.Categorical(logits=jnp.asarray(logits))
  np.testing.assert_allclose(log_prob, reference.log_prob(jnp.asarray(actions)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(policy.entropy(), reference.entropy(), rtol=1e-5, atol=1e-6)


def test_categorical_sample_and_mode():
  logits, _ = _categorical_inputs(1)
  policy = distributions.Categorical(jnp.asarray(logits))
  sample = policy.sample(jax.random.key(0))
  assert sample.shape == (UNROLL_LENGTH, BATCH_SIZE)
  assert sample.dtype == jnp.int32
  assert np.all((np.asarray(sample) >= 0) & (np.asarray(sample) < NUM_ACTIONS))
  mode = policy.mode()
  assert mode.shape == (UNROLL_LENGTH, BATCH_SIZE) and mode.dtype == jnp.int32
  np.testing.assert_array_equal(mode, logits.argmax(axis=-1))


def test_categorical_sample_frequencies_match_probs():
  probs = np.array([0.1, 0.2, 0.7])
  num_samples = 20_000
  policy = distributions.Categorical(jnp.asarray(np.log(np.tile(probs, (num_samples, 1))),
                                                 jnp.float32))
  samples = np.asarray(policy.sample(jax.random.key(42)))
  frequencies = np.bincount(samples, minlength=3) / num_samples
  # Standard error is at most sqrt(0.25 / 20000) ≈ 0.0035; 0.015 is over 4 standard errors.
  np.testing.assert_allclose(frequencies, probs, atol=0.015)


def _gaussian_inputs(seed):
  rng = np.random.default_rng(seed)
  shape = (UNROLL_LENGTH, BATCH_SIZE, ACTION_DIM)
  mean = rng.normal(size=shape)
  log_std = rng.normal(scale=0.5, size=shape)
  actions = rng.normal(scale=2.0, size=shape)
  return mean.astype(np.float32), log_std.astype(np.float32), actions.astype(np.float32)


def test_diag_gaussian_log_prob_and_entropy():
  mean, log_std, actions = _gaussian_inputs(2)
  policy = distributions.DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std))
  std = np.exp(log_std.astype(np.float64))
  expected_log_prob = scipy.stats.norm.logpdf(actions, mean, std).sum(axis=-1)
  expected_entropy = scipy.stats.norm.entropy(scale=std).sum(axis=-1)

  log_prob = policy.log_prob(jnp.asarray(actions))
  assert log_prob.shape == (UNROLL_LENGTH, BATCH_SIZE)
  np.testing.assert_allclose(log_prob, expected_log_prob, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(policy.entropy(), expected_entropy, rtol=1e-5, atol=1e-5)

  reference = distrax.MultivariateNormalDiag(jnp.asarray(mean), jnp.exp(jnp.asarray(log_std)))
  np.testing.assert_allclose(log_prob, reference.log_prob(jnp.asarray(actions)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(policy.entropy(), reference.entropy(), rtol=1e-5, atol=1e-5)


def test_diag_gaussian_sample_and_mode():
  mean, log_std, _ = _gaussian_inputs(3)
  policy = distributions.DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std))
  sample = policy.sample(jax.random.key(0))
  assert sample.shape == (UNROLL_LENGTH, BATCH_SIZE, ACTION_DIM)
  assert sample.dtype == jnp.float32
  np.testing.assert_array_equal(policy.mode(), mean)


def test_diag_gaussian_sample_moments():
  num_samples = 20_000
  mean, std = np.array([1.0, -2.0]), np.array([0.5, 3.0])
  policy = distributions.DiagGaussian(
      jnp.asarray(np.tile(mean, (num_samples, 1)), jnp.float32),
      jnp.asarray(np.tile(np.log(std), (num_samples, 1)), jnp.float32))
  samples = np.asarray(policy.sample(jax.random.key(7)))
  # Standard error of the mean is std / sqrt(20000) <= 0.022; of the std about std / 200.
  np.testing.assert_allclose(samples.mean(axis=0), mean, atol=0.1)
  np.testing.assert_allclose(samples.std(axis=0), std, rtol=0.05)
