"""The pieces the objectives are built from: a correction and per-step loss terms.

  correction   `correction_targets`: targets v_s and advantages A_s, held constant: V-trace's
                 A_s = ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)) (paper §4.1, Eq. 1) by default, or
                 one of the paper's ablation's (§5.3, `rl.corrections`)
  policy       `policy_gradient_loss`:   −Σ_s log π(a_s|x_s) · A_s                  (§4.2)
               `clipped_surrogate_loss`: −Σ_s min(r_s A_s, clip(r_s, 1 − ε, 1 + ε) A_s),
                 r_s = π(a_s|x_s) / π_ref(a_s|x_s)          (Schulman et al. 2017, Eq. 7)
  baseline     `baseline_loss`:          ½ Σ_s (v_s − V(x_s))²                      (§4.2)
  entropy      `entropy_loss`:           −Σ_s H(π(·|x_s))                           (§4.2)

All take time-major `[T, B]` arrays and a 0/1 `mask` of real steps. The sums run over time and
batch, as in the paper (its learning rates assume that scale); `reduction="mean"` divides each
by the number of real steps instead. `rl.objectives` composes them into IMPALA and APPO.
"""

from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from impala_jax import types
from impala_jax.rl import corrections
from impala_jax.rl import vtrace as vtrace_lib

Array = chex.Array

# How the per-step terms are reduced over time and batch (module docstring). The one list of
# them: `config.LossConfig` and the flags read it from here.
REDUCTIONS = ("sum", "mean")


def check_reduction(reduction: str) -> None:
  """Raises ValueError, naming the accepted ones, for a `reduction` not in `REDUCTIONS`."""
  if reduction not in REDUCTIONS:
    raise ValueError(
        f"Unknown loss reduction {reduction!r}; accepted: {', '.join(REDUCTIONS)}.")


def masked_sum(per_step: Array, mask: Array) -> Array:
  """Σ over real steps (mask > 0) of `per_step`, `[T, B]` → scalar.

  `where` rather than a product: a non-finite value at an ignored step (log π of an arbitrary
  action, a NaN recorded for an action EnvPool ignored) must not turn the sum into NaN.
  """
  return jnp.sum(jnp.where(mask > 0, per_step, 0.0))


def masked_mean(per_step: Array, mask: Array) -> Array:
  """Mean over real steps; 0 when there is none."""
  return masked_sum(per_step, mask) / jnp.maximum(jnp.sum(mask), 1.0)


def reduce_steps(per_step: Array, mask: Array, reduction: str) -> Array:
  """`masked_sum` (reduction "sum", the paper's) or `masked_mean` ("mean")."""
  check_reduction(reduction)
  return masked_sum(per_step, mask) if reduction == "sum" else masked_mean(per_step, mask)


def correction_targets(
    target_log_probs: Array,
    values: Array,
    bootstrap_value: Array,
    transitions: types.Transitions,
    *,
    clip_rho_threshold: Optional[float],
    clip_c_threshold: Optional[float],
    clip_pg_rho_threshold: Optional[float],
    lambda_: float,
    correction: str = "vtrace",
) -> Tuple[vtrace_lib.VTraceOutput, Array]:
  """The off-policy correction of a masked batch: targets, advantages and the log-ratios.

  Args:
    target_log_probs: `[T, B]` log π(a_t|x_t) (any gradient is stopped here).
    values: `[T, B]` V(x_t).
    bootstrap_value: `[B]` V(x_T).
    transitions: the steps' log μ(a_t|x_t), rewards, discounts and mask, `[T, B]`
      (`types.Transitions`; the actions are not read).
    clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold, lambda_: ρ̄, c̄, ρ̄_pg, λ
      (`rl.objectives.ImpalaSettings`).
    correction: one of `rl.corrections.CORRECTIONS`: "vtrace" (paper §4.1), or "is_1step",
      "epsilon" or "none" (the ablation of §5.3).

  Returns:
    `(VTraceOutput(vs, pg_advantages), log_rhos)`, all `[T, B]` and constant for the gradient;
    `log_rhos` is log π − log μ unmasked (for metrics), the correction saw −inf at masked steps.
  """
  log_rhos = jax.lax.stop_gradient(target_log_probs) - transitions.behaviour_log_probs
  # −inf at masked steps makes ρ = c = 0 there exactly (`rl.objectives` module docstring); every
  # correction reads its mask from there (`rl.corrections`).
  masked_log_rhos = jnp.where(transitions.mask > 0, log_rhos, -jnp.inf)
  corrected = corrections.targets(
      correction, masked_log_rhos, transitions.discounts, transitions.rewards, values,
      bootstrap_value, clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
  return corrected, log_rhos


def policy_gradient_loss(log_probs: Array, advantages: Array, mask: Array,
                         reduction: str = "sum") -> Array:
  """IMPALA's policy loss, −Σ_s log π(a_s|x_s) · A_s (paper §4.2); A_s held constant.

  Args:
    log_probs: `[T, B]` log π(a_s|x_s), carrying the gradient.
    advantages: `[T, B]` A_s.
    mask: `[T, B]` 1 for real steps, 0 for ignored ones.
    reduction: "sum" or "mean" over real steps.
  """
  chex.assert_equal_shape([log_probs, advantages, mask])
  advantages = jax.lax.stop_gradient(advantages)
  return reduce_steps(-log_probs * advantages, mask, reduction)


def clipped_surrogate_loss(log_probs: Array, reference_log_probs: Array, advantages: Array,
                           mask: Array, epsilon: float, reduction: str = "sum") -> Array:
  """PPO's clipped surrogate, −Σ_s min(r_s A_s, clip(r_s, 1 − ε, 1 + ε) A_s) (PPO Eq. 7).

  r_s = π(a_s|x_s) / π_ref(a_s|x_s), against the behaviour policy μ that acted (Sample
  Factory's APPO) or the learner's policy at the start of the update (decoupled PPO, see
  `rl.objectives`). Where the clip is active in the direction it blocks (r > 1 + ε with A > 0, or
  r < 1 − ε with A < 0) the step contributes no gradient. Same value as
  `rlax.clipped_surrogate_pg_loss` for reduction "mean" and no masked steps.

  Args:
    log_probs: `[T, B]` log π(a_s|x_s), carrying the gradient.
    reference_log_probs: `[T, B]` log π_ref(a_s|x_s), held constant.
    advantages: `[T, B]` A_s, held constant.
    mask: `[T, B]` 1 for real steps.
    epsilon: the clip range ε.
    reduction: "sum" or "mean" over real steps.
  """
  chex.assert_equal_shape([log_probs, reference_log_probs, advantages, mask])
  advantages = jax.lax.stop_gradient(advantages)
  reference_log_probs = jax.lax.stop_gradient(reference_log_probs)
  # Ignored steps may hold garbage for μ: give them ratio 1 before exp, then mask them out.
  log_ratio = jnp.where(mask > 0, log_probs - reference_log_probs, 0.0)
  ratio = jnp.exp(log_ratio)
  surrogate = jnp.minimum(ratio * advantages,
                          jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * advantages)
  return reduce_steps(-surrogate, mask, reduction)


def baseline_loss(values: Array, targets: Array, mask: Array, reduction: str = "sum") -> Array:
  """½ Σ_s (v_s − V(x_s))² (paper §4.2); only V gets a gradient."""
  chex.assert_equal_shape([values, targets, mask])
  targets = jax.lax.stop_gradient(targets)
  return reduce_steps(0.5 * jnp.square(targets - values), mask, reduction)


def entropy_loss(entropy: Array, mask: Array, reduction: str = "sum") -> Array:
  """−Σ_s H(π(·|x_s)): minimising it raises the policy's entropy (paper §4.2)."""
  chex.assert_equal_shape([entropy, mask])
  return -reduce_steps(entropy, mask, reduction)


def standardize(advantages: Array, mask: Array, eps: float = 1e-8) -> Array:
  """(A − mean) / std over the real steps (PPO's per-minibatch advantage normalisation)."""
  mean = masked_mean(advantages, mask)
  std = jnp.sqrt(masked_mean(jnp.square(advantages - mean), mask))
  return jax.lax.stop_gradient((advantages - mean) / (std + eps))
