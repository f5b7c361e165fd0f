"""Tests for impala_jax.learning.optimizers: ε placement, Adam's own ε, the schedule."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from impala_jax import config as config_lib
from impala_jax.learning import optimizers


def _first_update(config, gradient):
  optimizer = optimizers.make_optimizer(config, anneal_steps=1000)
  params = {"w": jnp.zeros((1,))}
  state = optimizer.init(params)
  updates, _ = optimizer.update({"w": jnp.array([gradient])}, state, params)
  return float(updates["w"][0])


@pytest.mark.parametrize("eps_in_sqrt, expected_denominator", [
    # ms = (1 − 0.99) g² = 1e-4 for g = 0.1. Inside: √(1e-4 + 0.01) = 0.1005 (floored at 0.1).
    (True, math.sqrt(1e-4 + 0.01)),
    # Outside: √1e-4 + 0.01 = 0.02, a step 5× larger for this gradient.
    (False, math.sqrt(1e-4) + 0.01),
])
def test_rmsprop_epsilon_inside_or_outside_the_square_root(eps_in_sqrt, expected_denominator):
  config = config_lib.OptimizerConfig(learning_rate=1e-3, rmsprop_epsilon=0.01,
                                      rmsprop_eps_in_sqrt=eps_in_sqrt,
                                      anneal_learning_rate=False, max_grad_norm=None)
  np.testing.assert_allclose(_first_update(config, 0.1), -1e-3 * 0.1 / expected_denominator,
                             rtol=1e-5)


def test_adam_uses_its_own_epsilon():
  # Adam's first step is lr · ĝ / (|ĝ| + ε) with bias correction: ≈ lr for ε ≪ |g|.
  gradient = 1e-3
  for adam_epsilon in (1e-5, 1e-2):
    config = config_lib.OptimizerConfig(optimizer="adam", learning_rate=1e-3,
                                        adam_epsilon=adam_epsilon, rmsprop_epsilon=0.01,
                                        anneal_learning_rate=False, max_grad_norm=None)
    np.testing.assert_allclose(_first_update(config, gradient),
                               -1e-3 * gradient / (gradient + adam_epsilon), rtol=1e-4)


def test_linear_schedule_reaches_zero_at_its_horizon_not_at_the_run_end():
  config = config_lib.TrainConfig(
      batch_size=8, unroll_length=20, total_env_steps=2_000_000,
      optimizer=config_lib.OptimizerConfig(learning_rate=6e-4, anneal_env_steps=50_000_000))
  steps = config.anneal_optimizer_steps
  assert steps == 50_000_000 // 160  # One optimizer step per update for IMPALA.
  schedule = optimizers.learning_rate_schedule(config.optimizer, steps)
  # At the end of this 2M-step run the rate is still 96% of the initial one.
  assert float(schedule(config.total_updates)) == pytest.approx(6e-4 * (1 - 2 / 50), rel=1e-6)
  assert float(schedule(steps)) == 0.0
  constant = config_lib.OptimizerConfig(anneal_learning_rate=False)
  assert optimizers.learning_rate_schedule(constant, steps) == constant.learning_rate


def test_schedule_counts_every_minibatch_of_every_epoch():
  config = config_lib.TrainConfig(batch_size=8, unroll_length=20, num_epochs=3,
                                  num_minibatches=2,
                                  optimizer=config_lib.OptimizerConfig(anneal_env_steps=1600))
  assert config.anneal_optimizer_steps == (1600 // 160) * 3 * 2


def test_gradient_clipping_comes_first():
  config = config_lib.OptimizerConfig(learning_rate=1.0, optimizer="rmsprop",
                                      rmsprop_eps_in_sqrt=False, max_grad_norm=1.0,
                                      anneal_learning_rate=False)
  optimizer = optimizers.make_optimizer(config, anneal_steps=10)
  assert isinstance(optimizer, optax.GradientTransformation)
  # A gradient of norm 100 is clipped to norm 1 before RMSProp sees it.
  clipped = _first_update(config, 100.0)
  unclipped = _first_update(config_lib.OptimizerConfig(
      learning_rate=1.0, rmsprop_eps_in_sqrt=False, max_grad_norm=None,
      anneal_learning_rate=False), 1.0)
  np.testing.assert_allclose(clipped, unclipped, rtol=1e-5)
