"""The IMPALA loss: V-trace actor-critic with an entropy bonus (Espeholt et al. 2018, §4.2).

For an unroll x_0..x_T under behaviour policy μ, with V-trace targets v_s and advantages
A_s = ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)) from `impala_jax.vtrace` (held constant):

  policy loss    = −Σ_s log π(a_s|x_s) · A_s
  baseline loss  = baseline_cost · ½ Σ_s (v_s − V(x_s))²
  entropy loss   = −entropy_cost · Σ_s H(π(·|x_s))

Their gradients are the paper's policy-gradient, value and entropy updates. The sums run over
time and batch, as in the paper (its learning rates assume that scale); `reduction="mean"`
divides each by the number of real steps instead.

Masking EnvPool's autoreset steps. When x_s ends an episode (terminated or truncated), EnvPool
ignores a_s and resets, so step s is not a transition: mask_s = 0. We set log ρ_s = −inf, so
ρ_s = c_s = ρ^pg_s = 0 exactly, and V-trace's backward recursion gives

  v_s − V(x_s) = δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})) = 0 + 0:  v_s = V(x_s) exactly,

whatever r_s, γ_s, a_s, μ(a_s|x_s) or anything in the next episode hold. One step earlier,
v_{s−1} − V(x_{s−1}) = δ_{s−1} = ρ_{s−1} (r_{s−1} + γ_{s−1} V(x_s) − V(x_{s−1})): the last real
step bootstraps from V(x_s), which is right for a truncated end (γ_{s−1} = γ) and harmless for a
terminal one (γ_{s−1} = 0). The same holds for A_{s−1}, which uses v_s = V(x_s). So the cut is
exact, not an approximation, and nothing of the next episode leaks into the targets. The
per-step terms at s are then dropped from every sum by the mask.
"""

import math
from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from impala_jax import distributions
from impala_jax import vtrace as vtrace_lib

Array = chex.Array

REDUCTIONS = ("sum", "mean")


def impala_loss(
    policy: distributions.Distribution,
    values: Array,
    bootstrap_value: Array,
    actions: Array,
    behaviour_log_probs: Array,
    rewards: Array,
    discounts: Array,
    mask: Array,
    *,
    baseline_cost: float = 0.5,
    entropy_cost: float = 0.01,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    lambda_: float = 1.0,
    reduction: str = "sum",
) -> Tuple[Array, Dict[str, Array]]:
  """The IMPALA loss (paper §4.2) on a time-major batch of unrolls.

  Args:
    policy: π(·|x_t) for t = 0..T-1, a `Categorical` (logits `[T, B, A]`) or `DiagGaussian`
      (mean, log_std `[T, B, D]`), from the learner's parameters.
    values: `[T, B]` V(x_t) from the learner's parameters.
    bootstrap_value: `[B]` V(x_T).
    actions: `[T, B]` int (Categorical) or `[T, B, D]` float (DiagGaussian) actions a_t.
    behaviour_log_probs: `[T, B]` log μ(a_t|x_t), recorded by the actor.
    rewards: `[T, B]` r_t.
    discounts: `[T, B]` γ_t, the discount after step t: 0 where x_{t+1} is terminal, γ where it
      was only truncated (see `impala_jax.vtrace`).
    mask: `[T, B]` float, 1 for a real transition, 0 for an autoreset step whose action the
      environment ignored. Must be 0 or 1; masked steps contribute nothing and cut the trace
      (module docstring).
    baseline_cost: weight of the baseline loss.
    entropy_cost: weight of the entropy bonus.
    clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold, lambda_: V-trace's ρ̄, c̄,
      ρ̄_pg and λ (None: no clipping).
    reduction: "sum" over time and batch (the paper), or "mean" over real steps (each sum
      divided by max(Σ mask, 1)).

  Returns:
    (loss, metrics): the scalar loss to minimise and a dict of scalar metrics: loss,
    policy_loss, baseline_loss, entropy_loss, entropy, rho_mean (unclipped π/μ),
    rho_clipped_fraction (π/μ > ρ̄), value_mean, vs_mean, pg_advantage_mean; all means are
    over real steps.

  Raises:
    ValueError: for an unknown `reduction`.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(
        f"Unknown loss reduction {reduction!r}; accepted: {', '.join(REDUCTIONS)}.")
  chex.assert_rank([values, bootstrap_value, behaviour_log_probs, rewards, discounts, mask],
                   [2, 1, 2, 2, 2, 2])
  chex.assert_type([values, bootstrap_value, behaviour_log_probs, rewards, discounts, mask],
                   float)
  chex.assert_equal_shape([values, behaviour_log_probs, rewards, discounts, mask])
  if isinstance(policy, distributions.Categorical):
    chex.assert_rank(actions, 2)
    chex.assert_type(actions, int)
  else:
    chex.assert_rank(actions, 3)
    chex.assert_type(actions, float)
  chex.assert_equal_shape_prefix([actions, values], 2)

  real = mask > 0  # [T, B] bool
  target_log_probs = policy.log_prob(actions)  # [T, B], carries the policy gradient.
  chex.assert_equal_shape([target_log_probs, values])

  # V-trace's ratios are constants: the policy gradient comes only from log π · A below.
  log_rhos = jax.lax.stop_gradient(target_log_probs) - behaviour_log_probs
  # −inf at masked steps makes ρ = c = 0 there exactly (see the module docstring). `where`
  # rather than arithmetic so that garbage (even NaN) recorded at ignored steps can't leak.
  masked_log_rhos = jnp.where(real, log_rhos, -jnp.inf)
  vs, pg_advantages = vtrace_lib.vtrace(
      masked_log_rhos, discounts, rewards, values, bootstrap_value,
      clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)

  num_real = jnp.sum(mask)
  mean_denominator = jnp.maximum(num_real, 1.0)

  def masked_sum(per_step: Array) -> Array:
    # `where` (equal to multiplying by a 0/1 mask) also keeps a non-finite value at an ignored
    # step, e.g. log π of an arbitrary action, from turning the sum into NaN.
    return jnp.sum(jnp.where(real, per_step, 0.0))

  def reduce(per_step: Array) -> Array:
    total = masked_sum(per_step)
    return total if reduction == "sum" else total / mean_denominator

  def real_mean(per_step: Array) -> Array:
    return jax.lax.stop_gradient(masked_sum(per_step) / mean_denominator)

  entropy = policy.entropy()  # [T, B]
  policy_loss = reduce(-target_log_probs * pg_advantages)
  baseline_loss = baseline_cost * reduce(0.5 * jnp.square(vs - values))
  entropy_loss = -entropy_cost * reduce(entropy)
  loss = policy_loss + baseline_loss + entropy_loss

  # Fraction of real steps whose ratio ρ̄ clips, compared in log space to avoid overflow.
  if clip_rho_threshold is None:
    rho_clipped_fraction = jnp.zeros((), values.dtype)
  else:
    log_threshold = math.log(clip_rho_threshold) if clip_rho_threshold > 0 else -math.inf
    rho_clipped_fraction = real_mean((log_rhos > log_threshold).astype(values.dtype))

  metrics = {
      "loss": jax.lax.stop_gradient(loss),
      "policy_loss": jax.lax.stop_gradient(policy_loss),
      "baseline_loss": jax.lax.stop_gradient(baseline_loss),
      "entropy_loss": jax.lax.stop_gradient(entropy_loss),
      "entropy": real_mean(entropy),
      "rho_mean": real_mean(jnp.exp(log_rhos)),
      "rho_clipped_fraction": rho_clipped_fraction,
      "value_mean": real_mean(values),
      "vs_mean": real_mean(vs),
      "pg_advantage_mean": real_mean(pg_advantages),
  }
  return loss, metrics
