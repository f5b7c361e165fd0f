"""The IMPALA and APPO losses, composed from small pure pieces (Espeholt et al. 2018, §4).

A loss is a correction, which turns an off-policy batch into value targets and policy-gradient
advantages, plus objective terms that score the learner's outputs against them:

  correction   `vtrace_targets`: V-trace targets v_s and advantages
                 A_s = ρ^pg_s (r_s + γ_s v_{s+1} − V(x_s)), held constant (paper §4.1, Eq. 1)
  policy       `policy_gradient_loss`:   −Σ_s log π(a_s|x_s) · A_s                  (§4.2)
               `clipped_surrogate_loss`: −Σ_s min(r_s A_s, clip(r_s, 1 − ε, 1 + ε) A_s),
                 r_s = π(a_s|x_s) / μ(a_s|x_s)              (Schulman et al. 2017, Eq. 7)
  baseline     `baseline_loss`:          ½ Σ_s (v_s − V(x_s))²                      (§4.2)
  entropy      `entropy_loss`:           −Σ_s H(π(·|x_s))                           (§4.2)

  impala_loss = policy_gradient + baseline_cost · baseline + entropy_cost · entropy
  appo_loss   = clipped_surrogate + baseline_cost · baseline + entropy_cost · entropy

The sums run over time and batch, as in the paper (its learning rates assume that scale);
`reduction="mean"` divides each by the number of real steps instead.

APPO follows Sample Factory's definition (Petrenko et al. 2020, "Sample Factory", §3.3 and its
`learner.py`): the ratio is taken against the behaviour policy μ that acted, the advantages are
V-trace's (recomputed from the current parameters on every minibatch, ρ̄_pg-clipped as in
Sample Factory and RLlib) and standardised per minibatch, and several epochs of minibatches
pass over each batch (`learning.update`). Unlike Sample Factory there is no value clipping: the
actors do not record V(x) (SEED-style inference returns only actions), and Andrychowicz et al.
2021 ("What matters in on-policy RL", §3.3) found value clipping no better than none.

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

from impala_jax import config as config_lib
from impala_jax.rl import distributions
from impala_jax.rl import vtrace as vtrace_lib

Array = chex.Array

REDUCTIONS = config_lib.REDUCTIONS


def _check_reduction(reduction: str) -> None:
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
  _check_reduction(reduction)
  return masked_sum(per_step, mask) if reduction == "sum" else masked_mean(per_step, mask)


def vtrace_targets(
    target_log_probs: Array,
    behaviour_log_probs: Array,
    values: Array,
    bootstrap_value: Array,
    rewards: Array,
    discounts: Array,
    mask: Array,
    *,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    lambda_: float = 1.0,
) -> Tuple[vtrace_lib.VTraceOutput, Array]:
  """The V-trace correction of a masked batch: targets, advantages and the log-ratios.

  Args:
    target_log_probs: `[T, B]` log π(a_t|x_t) (any gradient is stopped here).
    behaviour_log_probs: `[T, B]` log μ(a_t|x_t).
    values, rewards, discounts, mask: `[T, B]`, see `impala_loss`.
    bootstrap_value: `[B]` V(x_T).
    clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold, lambda_: ρ̄, c̄, ρ̄_pg, λ.

  Returns:
    `(VTraceOutput(vs, pg_advantages), log_rhos)`, all `[T, B]` and constant for the gradient;
    `log_rhos` is log π − log μ unmasked (for metrics), V-trace saw −inf at masked steps.
  """
  log_rhos = jax.lax.stop_gradient(target_log_probs) - behaviour_log_probs
  # −inf at masked steps makes ρ = c = 0 there exactly (module docstring).
  masked_log_rhos = jnp.where(mask > 0, log_rhos, -jnp.inf)
  targets = vtrace_lib.vtrace(
      masked_log_rhos, discounts, rewards, values, bootstrap_value,
      clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
  return targets, log_rhos


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


def clipped_surrogate_loss(log_probs: Array, behaviour_log_probs: Array, advantages: Array,
                           mask: Array, epsilon: float, reduction: str = "sum") -> Array:
  """PPO's clipped surrogate, −Σ_s min(r_s A_s, clip(r_s, 1 − ε, 1 + ε) A_s) (PPO Eq. 7).

  r_s = π(a_s|x_s) / μ(a_s|x_s) against the behaviour policy that acted (Sample Factory's
  APPO). Where the clip is active in the direction it blocks (r > 1 + ε with A > 0, or
  r < 1 − ε with A < 0) the step contributes no gradient. Same value as
  `rlax.clipped_surrogate_pg_loss` for reduction "mean" and no masked steps.

  Args:
    log_probs: `[T, B]` log π(a_s|x_s), carrying the gradient.
    behaviour_log_probs: `[T, B]` log μ(a_s|x_s).
    advantages: `[T, B]` A_s, held constant.
    mask: `[T, B]` 1 for real steps.
    epsilon: the clip range ε.
    reduction: "sum" or "mean" over real steps.
  """
  chex.assert_equal_shape([log_probs, behaviour_log_probs, advantages, mask])
  advantages = jax.lax.stop_gradient(advantages)
  # Ignored steps may hold garbage for μ: give them ratio 1 before exp, then mask them out.
  log_ratio = jnp.where(mask > 0, log_probs - behaviour_log_probs, 0.0)
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


def _check_inputs(policy, values, bootstrap_value, actions, behaviour_log_probs, rewards,
                  discounts, mask) -> None:
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


def _rho_clipped_fraction(log_rhos: Array, mask: Array,
                          clip_rho_threshold: Optional[float]) -> Array:
  """Fraction of real steps whose π/μ exceeds ρ̄, compared in log space (no overflow)."""
  if clip_rho_threshold is None:
    return jnp.zeros((), log_rhos.dtype)
  log_threshold = math.log(clip_rho_threshold) if clip_rho_threshold > 0 else -math.inf
  return masked_mean((log_rhos > log_threshold).astype(log_rhos.dtype), mask)


def _loss_and_metrics(policy_loss, baseline, entropy_term, *, baseline_cost, entropy_cost,
                      entropy, values, targets, log_rhos, mask, clip_rho_threshold,
                      extra=None):
  baseline_term = baseline_cost * baseline
  entropy_term = entropy_cost * entropy_term
  loss = policy_loss + baseline_term + entropy_term
  mean = lambda x: jax.lax.stop_gradient(masked_mean(x, mask))
  metrics = {
      "loss": loss,
      "policy_loss": policy_loss,
      "baseline_loss": baseline_term,
      "entropy_loss": entropy_term,
      "entropy": mean(entropy),
      "rho_mean": mean(jnp.exp(log_rhos)),
      "rho_clipped_fraction": _rho_clipped_fraction(log_rhos, mask, clip_rho_threshold),
      "value_mean": mean(values),
      "vs_mean": mean(targets.vs),
      "pg_advantage_mean": mean(targets.pg_advantages),
  }
  metrics.update(extra or {})
  metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
  return loss, metrics


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
      was only truncated (see `impala_jax.rl.vtrace`).
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
  _check_reduction(reduction)
  _check_inputs(policy, values, bootstrap_value, actions, behaviour_log_probs, rewards,
                discounts, mask)
  log_probs = policy.log_prob(actions)  # [T, B], carries the policy gradient.
  targets, log_rhos = vtrace_targets(
      log_probs, behaviour_log_probs, values, bootstrap_value, rewards, discounts, mask,
      clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
  entropy = policy.entropy()  # [T, B]
  return _loss_and_metrics(
      policy_gradient_loss(log_probs, targets.pg_advantages, mask, reduction),
      baseline_loss(values, targets.vs, mask, reduction),
      entropy_loss(entropy, mask, reduction),
      baseline_cost=baseline_cost, entropy_cost=entropy_cost, entropy=entropy, values=values,
      targets=targets, log_rhos=log_rhos, mask=mask, clip_rho_threshold=clip_rho_threshold)


def appo_loss(
    policy: distributions.Distribution,
    values: Array,
    bootstrap_value: Array,
    actions: Array,
    behaviour_log_probs: Array,
    rewards: Array,
    discounts: Array,
    mask: Array,
    *,
    clip_epsilon: float = 0.2,
    normalize_advantages: bool = True,
    baseline_cost: float = 0.5,
    entropy_cost: float = 0.01,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    lambda_: float = 1.0,
    reduction: str = "sum",
) -> Tuple[Array, Dict[str, Array]]:
  """APPO: the PPO clipped surrogate on V-trace advantages (module docstring).

  Arguments as `impala_loss`, plus:
    clip_epsilon: ε of the clip range [1 − ε, 1 + ε] of r = π/μ.
    normalize_advantages: standardise the advantages over this batch's real steps.

  Returns:
    (loss, metrics): `impala_loss`'s metrics plus `clip_fraction` (real steps whose ratio
    lies outside the clip range) and `approx_kl` (mean of (r − 1) − log r, an estimate of
    KL(μ‖π) ≥ 0).
  """
  _check_reduction(reduction)
  _check_inputs(policy, values, bootstrap_value, actions, behaviour_log_probs, rewards,
                discounts, mask)
  log_probs = policy.log_prob(actions)
  targets, log_rhos = vtrace_targets(
      log_probs, behaviour_log_probs, values, bootstrap_value, rewards, discounts, mask,
      clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
      clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
  advantages = targets.pg_advantages
  if normalize_advantages:
    advantages = standardize(advantages, mask)
  entropy = policy.entropy()
  safe_log_rhos = jnp.where(mask > 0, log_rhos, 0.0)
  ratio = jnp.exp(safe_log_rhos)
  extra = {
      "clip_fraction": masked_mean((jnp.abs(ratio - 1.0) > clip_epsilon).astype(ratio.dtype),
                                   mask),
      "approx_kl": masked_mean((ratio - 1.0) - safe_log_rhos, mask),
  }
  return _loss_and_metrics(
      clipped_surrogate_loss(log_probs, behaviour_log_probs, advantages, mask, clip_epsilon,
                             reduction),
      baseline_loss(values, targets.vs, mask, reduction),
      entropy_loss(entropy, mask, reduction),
      baseline_cost=baseline_cost, entropy_cost=entropy_cost, entropy=entropy, values=values,
      targets=targets, log_rhos=log_rhos, mask=mask, clip_rho_threshold=clip_rho_threshold,
      extra=extra)
