"""Heads: features `[..., F]` to a policy distribution or a value."""

from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from impala_jax.networks import initializers
from impala_jax.rl import distributions


class CategoricalHead(nn.Module):
  """Logits of a categorical policy: `[..., F]` → `Categorical(logits [..., num_actions])`."""

  num_actions: int

  @nn.compact
  def __call__(self, x: jax.Array) -> distributions.Categorical:
    return distributions.Categorical(
        logits=nn.Dense(self.num_actions, kernel_init=initializers.POLICY_INIT, name="logits")(x))


class DiagGaussianHead(nn.Module):
  """A diagonal-Gaussian policy: `[..., F]` → `DiagGaussian(mean, log_std)`, `[..., action_dim]`.

  The mean depends on the state; log σ is a learned, state-independent parameter (initialised
  to 0, i.e. σ = 1) broadcast to the mean's shape, as is common for policy-gradient agents on
  continuous control: exploration noise is the same in every state and is learned from all of
  them, which is simpler and more stable early on than a state-dependent σ.
  """

  action_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> distributions.DiagGaussian:
    mean = nn.Dense(self.action_dim, kernel_init=initializers.POLICY_INIT, name="mean")(x)
    log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,), jnp.float32)
    return distributions.DiagGaussian(mean=mean, log_std=jnp.broadcast_to(log_std, mean.shape))


class ValueHead(nn.Module):
  """The baseline V(x): `[..., F]` → `[...]` float32; with `num_tasks`, one output per task,
  `[..., num_tasks]` (PopArt's normalised values n(x), `rl.popart`).

  Either way the outputs come from one linear layer, `Dense_0` (kernel `[F, num_tasks or 1]`):
  PopArt rescales it (`agent.value_linear`), and one task's parameters are a plain head's.
  """

  num_tasks: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outputs = nn.Dense(self.num_tasks or 1, kernel_init=initializers.VALUE_INIT)(x)
    return jnp.squeeze(outputs, axis=-1) if self.num_tasks is None else outputs
