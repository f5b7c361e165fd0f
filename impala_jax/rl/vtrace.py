"""V-trace off-policy targets and policy-gradient advantages.

Implements V-trace from Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with
Importance Weighted Actor-Learner Architectures" (arXiv 1802.01561), §4.1.

The n-step V-trace target for V(x_s) (paper Eq. (1)) is

  v_s = V(x_s) + Σ_{t=s}^{T-1} (Π_{i=s}^{t-1} γ_i c_i) δ_t,
  δ_t = ρ_t (r_t + γ_t V(x_{t+1}) − V(x_t)),
  ρ_t = min(ρ̄, π(a_t|x_t) / μ(a_t|x_t)),   c_i = λ·min(c̄, π(a_i|x_i) / μ(a_i|x_i)),

with V(x_T) the bootstrap value. We compute it with the backward recursion of Remark 1,

  v_s − V(x_s) = δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})),   v_T − V(x_T) = 0,

as one reverse `jax.lax.scan` over time, which is O(T) instead of the O(T²) double sum. The
policy-gradient advantage (§4.2) is

  A_s = ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)),   ρ^pg_s = min(ρ̄_pg, π(a_s|x_s) / μ(a_s|x_s)),

with v_T = V(x_T).

Conventions:
  * Everything is time-major: `[T, B]`, and `bootstrap_value` `[B]` is V(x_T).
  * γ_t is the discount *after* step t. Terminated and truncated episode ends are kept apart:
    an episode that terminates at x_{t+1} has γ_t = 0 (no value beyond a terminal state); an
    episode truncated by a time limit at x_{t+1} keeps γ_t = γ, so step t still bootstraps from
    V(x_{t+1}). To stop the trace *after* such a step (the next transition belongs to a new
    episode) set log ρ = −inf at the step that must not count: then ρ = c = 0 exactly, v equals
    V there, and the step before bootstraps from V of that observation (`rl.losses`
    uses this for EnvPool's autoreset steps).
  * Ratios are clipped in log space, exp(min(log ρ, log ρ̄)) rather than min(ρ̄, exp(log ρ)),
    so log-ratios of ±1000 stay finite whenever a threshold is set; a threshold of None means
    no clipping.
  * The returned targets and advantages are constants for differentiation (stop-gradient), as
    in the paper: gradients only flow through the loss's V(x_s) and log π(a_s|x_s).

Differences from `rlax.vtrace_td_error_and_advantage` (per sequence `[T]`, not `[T, B]`):
  * rlax fixes c̄ = 1; here c̄ is `clip_c_threshold`.
  * For λ < 1, rlax bootstraps the advantage from λ·v_{s+1} + (1 − λ)·V(x_{s+1}); here, as in
    the paper's §4.2 advantage (which has no λ), from v_{s+1}. For λ = 1 both agree.
"""

import math
from typing import NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp

from impala_jax.rl import distributions

Array = chex.Array
Numeric = Union[float, Array]


class VTraceOutput(NamedTuple):
  """V-trace targets and advantages, both `[T, B]` and both stop-gradient'ed.

  Attributes:
    vs: v_s, the V-trace targets for V(x_s) (paper Eq. (1)).
    pg_advantages: ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)), the policy-gradient advantages.
  """

  vs: Array
  pg_advantages: Array


def check_threshold(name: str, threshold: Optional[float]) -> None:
  # Only concrete numbers can be checked; a traced threshold is the caller's responsibility.
  if isinstance(threshold, (int, float)) and threshold < 0:
    raise ValueError(f"{name} must be >= 0 or None, got {threshold}.")


def clipped_ratio(log_rhos: Array, threshold: Optional[float]) -> Array:
  """min(threshold, e^{log_rhos}), computed so that huge log-ratios stay finite.

  Clipping in log space means exp never sees more than log(threshold); log ρ = −inf gives
  exactly 0.
  """
  if threshold is None:
    return jnp.exp(log_rhos)
  if isinstance(threshold, (int, float)):
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
  else:  # A traced threshold.
    log_threshold = jnp.log(threshold)
  return jnp.exp(jnp.minimum(log_rhos, log_threshold))


def vtrace(
    log_rhos: Array,
    discounts: Array,
    rewards: Array,
    values: Array,
    bootstrap_value: Array,
    *,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    lambda_: Numeric = 1.0,
) -> VTraceOutput:
  """V-trace targets v_s (paper Eq. (1)) and policy-gradient advantages, time-major.

  Args:
    log_rhos: `[T, B]` log π(a_t|x_t) − log μ(a_t|x_t), the log importance ratios. −inf marks a
      step that must not count (ρ = c = 0: no TD error there, and the trace is cut).
    discounts: `[T, B]` γ_t, the discount after step t (0 where x_{t+1} is terminal).
    rewards: `[T, B]` r_t, the reward for action a_t at x_t.
    values: `[T, B]` V(x_t) under the current (learner) parameters.
    bootstrap_value: `[B]` V(x_T).
    clip_rho_threshold: ρ̄, clipping of ρ_t in the TD errors δ_t; None for no clipping.
    clip_c_threshold: c̄, clipping of the trace coefficients c_i; None for no clipping.
    clip_pg_rho_threshold: ρ̄_pg, clipping of the advantage's ratio; None for no clipping.
    lambda_: λ ∈ [0, 1], a scalar or `[T, B]`; c_i = λ·min(c̄, ρ_i).

  Returns:
    `VTraceOutput(vs, pg_advantages)`, each `[T, B]`, with stop_gradient applied.
  """
  chex.assert_rank([log_rhos, discounts, rewards, values, bootstrap_value],
                   [2, 2, 2, 2, 1])
  chex.assert_type([log_rhos, discounts, rewards, values, bootstrap_value], float)
  chex.assert_equal_shape([log_rhos, discounts, rewards, values])
  chex.assert_equal_shape([values[0], bootstrap_value])  # Same batch size B.
  for name, threshold in (("clip_rho_threshold", clip_rho_threshold),
                          ("clip_c_threshold", clip_c_threshold),
                          ("clip_pg_rho_threshold", clip_pg_rho_threshold)):
    check_threshold(name, threshold)

  # The whole computation produces targets: no gradient must reach any input through it.
  log_rhos, discounts, rewards, values, bootstrap_value = jax.lax.stop_gradient(
      (log_rhos, discounts, rewards, values, bootstrap_value))

  rhos = clipped_ratio(log_rhos, clip_rho_threshold)        # ρ_t
  cs = lambda_ * clipped_ratio(log_rhos, clip_c_threshold)  # c_t
  cs = jnp.broadcast_to(cs, values.shape).astype(values.dtype)

  # V(x_{t+1}) for t = 0..T-1.
  values_t_plus_1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
  deltas = rhos * (rewards + discounts * values_t_plus_1 - values)  # δ_t

  def backward_step(acc, xs):
    # acc is v_{s+1} − V(x_{s+1}); Remark 1: v_s − V(x_s) = δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})).
    delta, discount_c = xs
    acc = delta + discount_c * acc
    return acc, acc

  _, vs_minus_values = jax.lax.scan(
      backward_step, jnp.zeros_like(bootstrap_value), (deltas, discounts * cs),
      reverse=True)
  vs = values + vs_minus_values

  vs_t_plus_1 = jnp.concatenate([vs[1:], bootstrap_value[None]], axis=0)  # v_T = V(x_T).
  pg_rhos = clipped_ratio(log_rhos, clip_pg_rho_threshold)
  pg_advantages = pg_rhos * (rewards + discounts * vs_t_plus_1 - values)

  return VTraceOutput(vs=jax.lax.stop_gradient(vs),
                      pg_advantages=jax.lax.stop_gradient(pg_advantages))


def log_rhos_from_log_probs(target_log_probs: Array, behaviour_log_probs: Array) -> Array:
  """log ρ = log π(a|x) − log μ(a|x), elementwise (any equal shapes, e.g. `[T, B]`).

  Not stop-gradient'ed: `vtrace` treats its inputs as constants anyway.
  """
  chex.assert_type([target_log_probs, behaviour_log_probs], float)
  chex.assert_equal_shape([target_log_probs, behaviour_log_probs])
  return target_log_probs - behaviour_log_probs


def categorical_log_rhos(target_logits: Array, behaviour_logits: Array,
                         actions: Array) -> Array:
  """log ρ for discrete actions.

  Args:
    target_logits: `[T, B, A]` logits of π (learner).
    behaviour_logits: `[T, B, A]` logits of μ (actor).
    actions: `[T, B]` integer actions a_t.

  Returns:
    `[T, B]` log π(a_t|x_t) − log μ(a_t|x_t).
  """
  chex.assert_rank([target_logits, behaviour_logits, actions], [3, 3, 2])
  chex.assert_type([target_logits, behaviour_logits, actions], [float, float, int])
  chex.assert_equal_shape([target_logits, behaviour_logits])
  chex.assert_equal_shape_prefix([target_logits, actions], 2)
  return log_rhos_from_log_probs(
      distributions.Categorical(target_logits).log_prob(actions),
      distributions.Categorical(behaviour_logits).log_prob(actions))


def gaussian_log_rhos(target_mean: Array, target_log_std: Array, behaviour_mean: Array,
                      behaviour_log_std: Array, actions: Array) -> Array:
  """log ρ for continuous actions under diagonal Gaussians.

  Args:
    target_mean, target_log_std: `[T, B, D]` parameters of π (learner).
    behaviour_mean, behaviour_log_std: `[T, B, D]` parameters of μ (actor).
    actions: `[T, B, D]` actions a_t.

  Returns:
    `[T, B]` log π(a_t|x_t) − log μ(a_t|x_t).
  """
  arrays = [target_mean, target_log_std, behaviour_mean, behaviour_log_std, actions]
  chex.assert_rank(arrays, 3)
  chex.assert_type(arrays, float)
  chex.assert_equal_shape(arrays)
  return log_rhos_from_log_probs(
      distributions.DiagGaussian(target_mean, target_log_std).log_prob(actions),
      distributions.DiagGaussian(behaviour_mean, behaviour_log_std).log_prob(actions))
