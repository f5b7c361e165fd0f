"""Action distributions produced by the policy heads.

Both are NamedTuples, hence pytrees: a network can return them from `apply`, they pass through
`jit`/`pmap`/`vmap`, and they index and stack like the arrays they hold. Leading dimensions are
free (`[B]`, `[T, B]`, ...); the action dimension is last.
"""

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

_LOG_2PI = 1.8378770664093453  # log(2π)


class Categorical(NamedTuple):
  """A categorical distribution over `num_actions` discrete actions.

  Attributes:
    logits: `[..., num_actions]` unnormalised log-probabilities.
  """

  logits: jax.Array

  def log_prob(self, action: jax.Array) -> jax.Array:
    """log π(a|x) of integer actions `[...]`; returns `[...]`."""
    log_probs = jax.nn.log_softmax(self.logits)
    return jnp.take_along_axis(
        log_probs, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

  def entropy(self) -> jax.Array:
    """H(π(·|x)), `[...]`."""
    log_probs = jax.nn.log_softmax(self.logits)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)

  def sample(self, key: jax.Array) -> jax.Array:
    """Integer actions `[...]` (int32)."""
    return jax.random.categorical(key, self.logits).astype(jnp.int32)

  def mode(self) -> jax.Array:
    return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)


class DiagGaussian(NamedTuple):
  """A Gaussian with diagonal covariance over `action_dim` continuous actions.

  Attributes:
    mean: `[..., action_dim]`.
    log_std: `[..., action_dim]`, natural log of the standard deviation.
  """

  mean: jax.Array
  log_std: jax.Array

  def log_prob(self, action: jax.Array) -> jax.Array:
    """log π(a|x) of actions `[..., action_dim]`; returns `[...]`."""
    z = (action - self.mean) * jnp.exp(-self.log_std)
    return jnp.sum(-0.5 * jnp.square(z) - self.log_std - 0.5 * _LOG_2PI, axis=-1)

  def entropy(self) -> jax.Array:
    """H(π(·|x)) in nats, `[...]`."""
    return jnp.sum(self.log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)

  def sample(self, key: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    return self.mean + jnp.exp(self.log_std) * noise

  def mode(self) -> jax.Array:
    return self.mean


Distribution = Union[Categorical, DiagGaussian]
