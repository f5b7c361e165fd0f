"""The IMPALA and APPO objectives, composed from the pieces in `rl.losses`.

  impala_loss = policy_gradient + baseline_cost · baseline + entropy_cost · entropy  (paper §4.2)
  appo_loss   = clipped_surrogate + baseline_cost · baseline + entropy_cost · entropy

both on V-trace targets and advantages (`losses.correction_targets`, paper §4.1), scoring a
batch of `types.Transitions`. Their settings, `ImpalaSettings` and `AppoSettings`, hold the
paper's defaults (Table G.1). IMPALA can instead take the targets and advantages of the paper's
off-policy correction ablation (§5.3, Table 2; `ImpalaSettings.correction`, `rl.corrections`).

By default APPO follows Sample Factory's definition (Petrenko et al. 2020, "Sample Factory",
§3.3 and its `learner.py`): the ratio is taken against the behaviour policy μ that acted, the
advantages are V-trace's (recomputed from the current parameters on every minibatch,
ρ̄_pg-clipped as in Sample Factory and RLlib) and standardised per minibatch, and several
epochs of minibatches pass over each batch (`learning.update`). Unlike Sample Factory there
is no value clipping: the actors do not record V(x) (SEED-style inference returns only
actions), and Andrychowicz et al. 2021 ("What matters in on-policy RL", §3.3) found value
clipping no better than none.

With a proximal policy (`proximal_log_probs`), APPO is instead Hilton et al.'s decoupled PPO
objective (2021, "Batch size-invariance for policy optimization", arXiv 2110.00641, Eq. 2):

  L = −E_μ[ (π_prox/μ) · min(r A, clip(r, 1 − ε, 1 + ε) A) ],   r = π/π_prox,

where π_prox is the learner's policy at the start of this update. The clip then bounds how far
one update moves the policy, whatever the age of the data; the off-policy correction π_prox/μ
is V-trace's, truncated at ρ̄_pg and already inside its advantages (ρ_s = π_prox/μ there, so
the targets stay fixed across the update's epochs, as PPO's are). Against μ, data a few
updates old starts with many ratios outside the clip range and their gradients blocked. RLlib's
APPO has the same structure with a target network in the role of π_prox.

Masking EnvPool's autoreset steps. When x_s ends an episode (terminated or truncated), EnvPool
ignores a_s and resets, so step s is not a transition: mask_s = 0. We set log ρ_s = −inf, so
ρ_s = c_s = ρ^pg_s = 0 exactly, and V-trace's backward recursion gives

  v_s − V(x_s) = δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})) = 0 + 0:  v_s = V(x_s) exactly,

whatever r_s, γ_s, a_s, μ(a_s|x_s) or anything in the next episode hold. One step earlier,
v_{s−1} − V(x_{s−1}) = δ_{s−1} = ρ_{s−1} (r_{s−1} + γ_{s−1} V(x_s) − V(x_{s−1})): the last real
step bootstraps from V(x_s), which is right for a truncated end (γ_{s−1} = γ) and harmless for a
terminal one (γ_{s−1} = 0). The same holds for A_{s−1}, which uses v_s = V(x_s). So the cut is
exact, not an approximation, and nothing of the next episode leaks into the targets. The
per-step terms at s are then dropped from every sum by the mask. The ablation's corrections
make the same cut from the same −inf: "none" and "epsilon" are V-trace with ρ = c = 1 at real
steps and 0 at masked ones, and "is_1step" sets v_s = V(x_s) and A_s = 0 at masked steps and
bootstraps step s−1 from V(x_s) (`rl.corrections`).

With PopArt (`rl.popart`) both objectives take the unnormalised values V = σ n + μ, on which
the correction runs, and `value_scale`, σ of each step's task: the baseline and the advantages
are then measured in units of σ, ½ ((v_s − V(x_s))/σ)² = ½ ((v_s − μ)/σ − n(x_s))² and A_s/σ
(Hessel et al. 2019, §3). The loss terms are then in σ units; value_mean, vs_mean and
pg_advantage_mean stay in the game's.
"""

import dataclasses
import math
from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from impala_jax import types
from impala_jax.rl import corrections
from impala_jax.rl import distributions
from impala_jax.rl import losses

Array = chex.Array


@dataclasses.dataclass(frozen=True)
class ImpalaSettings:
  """The IMPALA objective's settings. The defaults are the paper's (Table G.1), and this is
  their one source: `config.LossConfig` takes its defaults from these fields.

  Attributes:
    baseline_cost: weight of the baseline loss (paper: 0.5).
    entropy_cost: weight of the entropy bonus (paper: 0.01).
    clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold: V-trace's ρ̄, c̄ and ρ̄_pg
      (paper: 1; None: no clipping).
    lambda_: V-trace's λ (paper: 1).
    reduction: "sum" over time and batch (the paper, whose learning rates assume that scale),
      or "mean" over real steps (each sum divided by max(Σ mask, 1)); see `losses.REDUCTIONS`.
    correction: the off-policy correction, one of `rl.corrections.CORRECTIONS` (paper §5.3,
      Table 2): "vtrace" (the paper's method); "is_1step" (one-step TD targets for V, the TD
      error times min(ρ̄_pg, π/μ) as the advantage, no traces); "epsilon" (as "none", with
      log(π + ε) for log π in the policy gradient, ε = `rl.corrections.EPSILON`; discrete
      actions only); "none" (the n-step returns of the behaviour data, as if on-policy).
      ρ̄ and c̄ are V-trace's only, ρ̄_pg also "is_1step"'s, λ also "none"'s and "epsilon"'s.

  Raises:
    ValueError: an unknown `reduction` or `correction`, or λ outside [0, 1].
  """

  baseline_cost: float = 0.5
  entropy_cost: float = 0.01
  clip_rho_threshold: Optional[float] = 1.0
  clip_c_threshold: Optional[float] = 1.0
  clip_pg_rho_threshold: Optional[float] = 1.0
  lambda_: float = 1.0
  reduction: str = "sum"
  correction: str = "vtrace"

  def __post_init__(self):
    if not 0.0 <= self.lambda_ <= 1.0:
      raise ValueError(f"lambda_ must be in [0, 1], got {self.lambda_}.")
    losses.check_reduction(self.reduction)
    corrections.check_correction(self.correction)


@dataclasses.dataclass(frozen=True)
class AppoSettings(ImpalaSettings):
  """APPO's settings: IMPALA's (the baseline and entropy terms and V-trace are shared) plus
  the clipped surrogate's.

  APPO takes V-trace only (`correction` "vtrace"): the other corrections are the IMPALA paper's
  ablation of its own policy gradient (§5.3), and the ε-correction has no log π to act on in the
  clipped surrogate; APPO's ratio and advantages are defined on V-trace's here.

  Attributes:
    clip_epsilon: ε of the clip range [1 − ε, 1 + ε] of the ratio r (PPO's 0.2).
    normalize_advantages: standardise the advantages over each minibatch's real steps.

  Raises:
    ValueError: as `ImpalaSettings`, ε outside (0, 1), or a correction other than "vtrace".
  """

  clip_epsilon: float = 0.2
  normalize_advantages: bool = True

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 < self.clip_epsilon < 1.0:
      raise ValueError(f"clip_epsilon must be in (0, 1), got {self.clip_epsilon}.")
    if self.correction != "vtrace":
      raise ValueError(
          f"APPO takes only correction 'vtrace', got {self.correction!r}: the others are the "
          "IMPALA paper's ablation of its policy gradient (use objective 'impala' for them).")


def _check_inputs(policy, values, bootstrap_value, transitions: types.Transitions) -> None:
  floats = [values, bootstrap_value, transitions.behaviour_log_probs, transitions.rewards,
            transitions.discounts, transitions.mask]
  chex.assert_rank(floats, [2, 1, 2, 2, 2, 2])
  chex.assert_type(floats, float)
  chex.assert_equal_shape([values, transitions.behaviour_log_probs, transitions.rewards,
                           transitions.discounts, transitions.mask])
  if isinstance(policy, distributions.Categorical):
    chex.assert_rank(transitions.actions, 2)
    chex.assert_type(transitions.actions, int)
  else:
    chex.assert_rank(transitions.actions, 3)
    chex.assert_type(transitions.actions, float)
  chex.assert_equal_shape_prefix([transitions.actions, values], 2)


def _rho_clipped_fraction(log_rhos: Array, mask: Array,
                          clip_rho_threshold: Optional[float]) -> Array:
  """Fraction of real steps whose π/μ exceeds ρ̄, compared in log space (no overflow)."""
  if clip_rho_threshold is None:
    return jnp.zeros((), log_rhos.dtype)
  log_threshold = math.log(clip_rho_threshold) if clip_rho_threshold > 0 else -math.inf
  return losses.masked_mean((log_rhos > log_threshold).astype(log_rhos.dtype), mask)


def _loss_and_metrics(policy_loss, baseline, entropy_term, settings: ImpalaSettings, *,
                      entropy, values, targets, log_rhos, mask, extra=None):
  baseline_term = settings.baseline_cost * baseline
  entropy_term = settings.entropy_cost * entropy_term
  loss = policy_loss + baseline_term + entropy_term
  mean = lambda x: jax.lax.stop_gradient(losses.masked_mean(x, mask))
  metrics = {
      "loss": loss,
      "policy_loss": policy_loss,
      "baseline_loss": baseline_term,
      "entropy_loss": entropy_term,
      "entropy": mean(entropy),
      "rho_mean": mean(jnp.exp(log_rhos)),
      "rho_clipped_fraction": _rho_clipped_fraction(log_rhos, mask,
                                                    settings.clip_rho_threshold),
      "value_mean": mean(values),
      "vs_mean": mean(targets.vs),
      "pg_advantage_mean": mean(targets.pg_advantages),
  }
  metrics.update(extra or {})
  metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
  return loss, metrics


def _in_value_units(values: Array, targets, value_scale: Optional[Array]):
  """(V, v_s, A_s), or with PopArt's σ (`value_scale` `[T, B]`) (V/σ, v_s/σ, A_s/σ): the
  baseline's and the policy gradient's inputs (module docstring). σ is held constant."""
  if value_scale is None:
    return values, targets.vs, targets.pg_advantages
  chex.assert_equal_shape([value_scale, values])
  scale = jax.lax.stop_gradient(value_scale)
  return values / scale, targets.vs / scale, targets.pg_advantages / scale


def impala_loss(
    policy: distributions.Distribution,
    values: Array,
    bootstrap_value: Array,
    transitions: types.Transitions,
    settings: ImpalaSettings = ImpalaSettings(),
    value_scale: Optional[Array] = None,
) -> Tuple[Array, Dict[str, Array]]:
  """The IMPALA loss (paper §4.2) on a time-major batch of unrolls.

  Args:
    policy: π(·|x_t) for t = 0..T-1, a `Categorical` (logits `[T, B, A]`) or `DiagGaussian`
      (mean, log_std `[T, B, D]`), from the learner's parameters.
    values: `[T, B]` V(x_t) from the learner's parameters.
    bootstrap_value: `[B]` V(x_T).
    transitions: the steps scored (`types.Transitions`): actions a_t (`[T, B]` int for a
      Categorical, `[T, B, D]` float for a DiagGaussian), log μ(a_t|x_t) recorded by the
      actor, rewards r_t, discounts γ_t (0 where x_{t+1} is terminal, γ where it was only
      truncated, see `impala_jax.rl.vtrace`) and the 0/1 mask; masked steps contribute
      nothing and cut the trace (module docstring).
    settings: the loss weights, V-trace's ρ̄, c̄, ρ̄_pg and λ, the reduction and the
      off-policy correction; the paper's by default.
    value_scale: PopArt's `[T, B]` σ of each step's task, or None (module docstring).

  Returns:
    (loss, metrics): the scalar loss to minimise and a dict of scalar metrics: loss,
    policy_loss, baseline_loss, entropy_loss, entropy, rho_mean (unclipped π/μ),
    rho_clipped_fraction (π/μ > ρ̄), value_mean, vs_mean, pg_advantage_mean; all means are
    over real steps; the same keys for every correction.

  Raises:
    ValueError: the "epsilon" correction for a policy that is not a `Categorical` (at trace
      time).
  """
  _check_inputs(policy, values, bootstrap_value, transitions)
  mask, reduction = transitions.mask, settings.reduction
  log_probs = policy.log_prob(transitions.actions)  # [T, B], carries the policy gradient.
  # log π, or log(π + ε) for the ε-correction: only the policy gradient's term changes.
  pg_log_probs = corrections.policy_gradient_log_probs(
      settings.correction, log_probs, discrete=isinstance(policy, distributions.Categorical))
  targets, log_rhos = losses.correction_targets(
      log_probs, values, bootstrap_value, transitions,
      clip_rho_threshold=settings.clip_rho_threshold,
      clip_c_threshold=settings.clip_c_threshold,
      clip_pg_rho_threshold=settings.clip_pg_rho_threshold, lambda_=settings.lambda_,
      correction=settings.correction)
  entropy = policy.entropy()  # [T, B]
  baseline_values, baseline_targets, advantages = _in_value_units(values, targets, value_scale)
  return _loss_and_metrics(
      losses.policy_gradient_loss(pg_log_probs, advantages, mask, reduction),
      losses.baseline_loss(baseline_values, baseline_targets, mask, reduction),
      losses.entropy_loss(entropy, mask, reduction),
      settings, entropy=entropy, values=values, targets=targets, log_rhos=log_rhos, mask=mask)


def appo_loss(
    policy: distributions.Distribution,
    values: Array,
    bootstrap_value: Array,
    transitions: types.Transitions,
    settings: AppoSettings = AppoSettings(),
    proximal_log_probs: Optional[Array] = None,
    value_scale: Optional[Array] = None,
) -> Tuple[Array, Dict[str, Array]]:
  """APPO: the PPO clipped surrogate on V-trace advantages (module docstring).

  Arguments as `impala_loss`, plus:
    settings: `impala_loss`'s, plus the clip range ε and whether to standardise advantages.
    proximal_log_probs: `[T, B]` log π_prox(a_t|x_t) from the parameters at the start of the
      update, or None. Given, r = π/π_prox and V-trace weighs by π_prox/μ (decoupled PPO,
      module docstring); None: r = π/μ and V-trace weighs by π/μ (Sample Factory).
    value_scale: PopArt's `[T, B]` σ of each step's task, or None (module docstring).

  Returns:
    (loss, metrics): `impala_loss`'s metrics plus `clip_fraction` (real steps whose ratio
    lies outside the clip range) and `approx_kl` (mean of (r − 1) − log r, an estimate of
    the KL divergence from the ratio's reference policy to π, ≥ 0).
  """
  _check_inputs(policy, values, bootstrap_value, transitions)
  mask, reduction = transitions.mask, settings.reduction
  log_probs = policy.log_prob(transitions.actions)
  if proximal_log_probs is None:
    reference_log_probs = transitions.behaviour_log_probs
    vtrace_log_probs = log_probs
  else:
    chex.assert_equal_shape([proximal_log_probs, transitions.behaviour_log_probs])
    reference_log_probs = vtrace_log_probs = jax.lax.stop_gradient(proximal_log_probs)
  targets, log_rhos = losses.correction_targets(
      vtrace_log_probs, values, bootstrap_value, transitions,
      clip_rho_threshold=settings.clip_rho_threshold,
      clip_c_threshold=settings.clip_c_threshold,
      clip_pg_rho_threshold=settings.clip_pg_rho_threshold, lambda_=settings.lambda_,
      correction=settings.correction)  # "vtrace": `AppoSettings` takes no other.
  baseline_values, baseline_targets, advantages = _in_value_units(values, targets, value_scale)
  if settings.normalize_advantages:
    advantages = losses.standardize(advantages, mask)
  entropy = policy.entropy()
  log_ratio = jnp.where(mask > 0, jax.lax.stop_gradient(log_probs) - reference_log_probs, 0.0)
  ratio = jnp.exp(log_ratio)
  extra = {
      "clip_fraction": losses.masked_mean(
          (jnp.abs(ratio - 1.0) > settings.clip_epsilon).astype(ratio.dtype), mask),
      "approx_kl": losses.masked_mean((ratio - 1.0) - log_ratio, mask),
  }
  return _loss_and_metrics(
      losses.clipped_surrogate_loss(log_probs, reference_log_probs, advantages, mask,
                                    settings.clip_epsilon, reduction),
      losses.baseline_loss(baseline_values, baseline_targets, mask, reduction),
      losses.entropy_loss(entropy, mask, reduction),
      settings, entropy=entropy, values=values, targets=targets, log_rhos=log_rhos, mask=mask,
      extra=extra)
