"""The off-policy corrections of the IMPALA paper's ablation: targets v_s and advantages A_s.

Espeholt et al. 2018 (arXiv 1802.01561), §5.3 "V-trace analysis" and Table 2, learn from the
actors' behaviour policy μ, a few updates behind the learner's π, with four corrections:

  vtrace    V-trace (§4.1, Eq. (1); `rl.vtrace`), the paper's method and the default.
  is_1step  "1-step importance sampling: no off-policy correction when optimising V(x); for the
            policy gradient, multiply the advantage at each time step by the corresponding
            importance weight; no traces" (`one_step_importance_sampling`).
  epsilon   "ε-correction": no correction, but log(π(a|x) + ε) for log π(a|x) in the policy
            gradient, "to prevent log π(a) from becoming very small and leading to numerical
            instabilities" (Babaeizadeh et al. 2016; `no_correction`, `epsilon_log_probs`).
  none      "No-correction: no off-policy correction": the n-step returns of the behaviour data
            as if it were on-policy (`no_correction`).

Each returns V-trace's `VTraceOutput(vs, pg_advantages)`, both `[T, B]` and stop-gradient'ed, so
the objectives score every correction with the same baseline loss ½ Σ_s (v_s − V(x_s))² and
policy loss −Σ_s log π(a_s|x_s) · A_s (§4.2); only the ε-correction also changes the log π of
the latter (`policy_gradient_log_probs`).

Masked steps. As for V-trace, log ρ_s = −inf marks a step that must not count (EnvPool's
autoreset step, `rl.objectives` module docstring): `none` and `epsilon` read nothing else of
log ρ, `is_1step` reads it only for its advantage's weight. At such a step every correction
gives v_s = V(x_s) and A_s = 0 exactly, and step s−1 bootstraps from V(x_s), the last
observation of its own episode: nothing of the next episode (r_s, γ_s, V(x_{s+1}), ...) reaches
an earlier step's target or advantage (see each function).
"""

from typing import Optional

import chex
import jax
import jax.numpy as jnp

from impala_jax import config_checks
from impala_jax.rl import vtrace as vtrace_lib

Array = chex.Array
VTraceOutput = vtrace_lib.VTraceOutput

# The corrections (module docstring), the default first. The one list of them: `config.LossConfig`
# and the flags read it from here.
CORRECTIONS = ("vtrace", "is_1step", "epsilon", "none")

# ε of the ε-correction, added to π(a|x) before the log (the paper's value).
EPSILON = 1e-6


def check_correction(correction: str) -> None:
  """Raises ValueError, naming the accepted ones, for a `correction` not in `CORRECTIONS`."""
  config_checks.check_one_of("correction", correction, CORRECTIONS)


def check_action_space(correction: str, discrete: bool) -> None:
  """Raises ValueError for the ε-correction with continuous actions.

  ε is added to a probability π(a|x) ∈ [0, 1]. A continuous policy's π(a|x) is a density, whose
  scale depends on the action's units: "+ ε" has no fixed meaning there, and the paper's
  ablation is on Atari's discrete actions only.
  """
  check_correction(correction)
  if correction == "epsilon" and not discrete:
    raise ValueError(
        f"correction 'epsilon' adds ε = {EPSILON:g} to a probability π(a|x): it is defined for "
        "discrete actions (a Categorical policy) only, and these actions are continuous (π is a "
        "density); for them use one of: "
        f"{', '.join(c for c in CORRECTIONS if c != 'epsilon')}.")


def _check_inputs(log_rhos, discounts, rewards, values, bootstrap_value) -> None:
  chex.assert_rank([log_rhos, discounts, rewards, values, bootstrap_value], [2, 2, 2, 2, 1])
  chex.assert_type([log_rhos, discounts, rewards, values, bootstrap_value], float)
  chex.assert_equal_shape([log_rhos, discounts, rewards, values])
  chex.assert_equal_shape([values[0], bootstrap_value])  # Same batch size B.


def no_correction(
    log_rhos: Array,
    discounts: Array,
    rewards: Array,
    values: Array,
    bootstrap_value: Array,
    *,
    lambda_: float = 1.0,
) -> VTraceOutput:
  """No correction (§5.3): the behaviour data's n-step returns, as if π = μ.

  V-trace (Eq. (1)) with ρ_t = 1 and c_t = λ at every real step, whatever π/μ:

    v_s = V(x_s) + Σ_{t=s}^{T-1} (Π_{i=s}^{t-1} γ_i λ) δ_t,   δ_t = r_t + γ_t V(x_{t+1}) − V(x_t),
    A_s = r_s + γ_s v_{s+1} − V(x_s),   v_T = V(x_T),

  i.e. for λ = 1 (the paper's) v_s = Σ_{t=s}^{T-1} (Π_{i=s}^{t-1} γ_i) r_t + (Π_{i=s}^{T-1} γ_i)
  V(x_T), the n-step bootstrapped return, and A_s = v_s − V(x_s); for λ < 1 the λ-return. No
  threshold applies (ρ̄ < 1 would otherwise scale the on-policy ρ = 1 down).

  Masked steps (log ρ_s = −inf) keep ρ_s = c_s = 0, exactly as in V-trace: v_s = V(x_s),
  A_s = 0, and v_{s−1} = r_{s−1} + γ_{s−1} V(x_s) + ... stops at x_s (`rl.objectives`).

  Args:
    log_rhos: `[T, B]`; only its −inf entries are read: they mark the steps that must not count.
    discounts, rewards, values, bootstrap_value: as for `rl.vtrace.vtrace`: γ_t, r_t, V(x_t)
      `[T, B]` and V(x_T) `[B]`.
    lambda_: λ ∈ [0, 1], a scalar or `[T, B]`; c_t = λ.

  Returns:
    `VTraceOutput(vs, pg_advantages)`, each `[T, B]`, with stop_gradient applied.
  """
  _check_inputs(log_rhos, discounts, rewards, values, bootstrap_value)
  # log ρ = 0 (ρ = 1) at real steps, −inf (ρ = 0) where masked.
  on_policy_log_rhos = jnp.where(jnp.isneginf(log_rhos), log_rhos, jnp.zeros_like(log_rhos))
  return vtrace_lib.vtrace(
      on_policy_log_rhos, discounts, rewards, values, bootstrap_value,
      clip_rho_threshold=None, clip_c_threshold=None, clip_pg_rho_threshold=None,
      lambda_=lambda_)


def one_step_importance_sampling(
    log_rhos: Array,
    discounts: Array,
    rewards: Array,
    values: Array,
    bootstrap_value: Array,
    *,
    clip_pg_rho_threshold: Optional[float] = 1.0,
) -> VTraceOutput:
  """1-step importance sampling (§5.3): one-step TD targets for V, ρ-weighted TD errors for π.

    v_s = r_s + γ_s V(x_{s+1}),
    A_s = ρ^pg_s (r_s + γ_s V(x_{s+1}) − V(x_s)),   ρ^pg_s = min(ρ̄_pg, π(a_s|x_s) / μ(a_s|x_s)),

  with V(x_T) the bootstrap value: no importance weight in the value target ("no off-policy
  correction when optimising V(x)") and no trace in either. The paper does not say whether its
  1-step importance weight was truncated; we truncate it at ρ̄_pg (`clip_pg_rho_threshold`), as
  V-trace's advantage is (§4.2); None leaves it untruncated.

  Masked steps (log ρ_s = −inf): v_s = V(x_s) and A_s = 0, whatever r_s, γ_s or V(x_{s+1}) (the
  next episode's) hold. Step s−1's target r_{s−1} + γ_{s−1} V(x_s) reads only x_s, the last
  observation of its own episode.

  Args:
    log_rhos: `[T, B]` log π(a_t|x_t) − log μ(a_t|x_t); −inf marks a step that must not count.
    discounts, rewards, values, bootstrap_value: as for `rl.vtrace.vtrace`: γ_t, r_t, V(x_t)
      `[T, B]` and V(x_T) `[B]`.
    clip_pg_rho_threshold: ρ̄_pg; None for no truncation.

  Returns:
    `VTraceOutput(vs, pg_advantages)`, each `[T, B]`, with stop_gradient applied.
  """
  _check_inputs(log_rhos, discounts, rewards, values, bootstrap_value)
  vtrace_lib.check_threshold("clip_pg_rho_threshold", clip_pg_rho_threshold)
  log_rhos, discounts, rewards, values, bootstrap_value = jax.lax.stop_gradient(
      (log_rhos, discounts, rewards, values, bootstrap_value))

  real = ~jnp.isneginf(log_rhos)  # A NaN stays real, so that it shows.
  values_t_plus_1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
  td_targets = rewards + discounts * values_t_plus_1  # r_s + γ_s V(x_{s+1})
  # `where`, not ρ = 0: the masked step's r_s + γ_s V(x_{s+1}) belongs to the next episode.
  vs = jnp.where(real, td_targets, values)
  pg_rhos = vtrace_lib.clipped_ratio(log_rhos, clip_pg_rho_threshold)
  pg_advantages = jnp.where(real, pg_rhos * (td_targets - values), jnp.zeros_like(values))
  return VTraceOutput(vs=jax.lax.stop_gradient(vs),
                      pg_advantages=jax.lax.stop_gradient(pg_advantages))


def targets(
    correction: str,
    log_rhos: Array,
    discounts: Array,
    rewards: Array,
    values: Array,
    bootstrap_value: Array,
    *,
    clip_rho_threshold: Optional[float],
    clip_c_threshold: Optional[float],
    clip_pg_rho_threshold: Optional[float],
    lambda_: float,
) -> VTraceOutput:
  """v_s and A_s of `correction` (one of `CORRECTIONS`), time-major `[T, B]`.

  Arguments as `rl.vtrace.vtrace`'s. Each correction reads the settings it has: "vtrace" all;
  "is_1step" ρ̄_pg; "epsilon" and "none" λ (their targets are the same; ε acts on the policy
  gradient's log π, `policy_gradient_log_probs`).

  Raises:
    ValueError: an unknown `correction`.
  """
  check_correction(correction)
  arrays = (log_rhos, discounts, rewards, values, bootstrap_value)
  if correction == "vtrace":
    return vtrace_lib.vtrace(
        *arrays, clip_rho_threshold=clip_rho_threshold, clip_c_threshold=clip_c_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
  if correction == "is_1step":
    return one_step_importance_sampling(*arrays, clip_pg_rho_threshold=clip_pg_rho_threshold)
  return no_correction(*arrays, lambda_=lambda_)  # "none" and "epsilon".


def epsilon_log_probs(log_probs: Array, epsilon: float = EPSILON) -> Array:
  """log(π(a|x) + ε) from log π(a|x), elementwise (any shape, e.g. `[T, B]`).

  Computed as logaddexp(log π, log ε), so it stays ≥ log ε (≈ −13.8 for the default ε) and
  finite even where π underflows to 0. Its gradient is log π's scaled by π / (π + ε) ∈ (0, 1):
  where π ≫ ε it is log π's, where π ≪ ε it vanishes.
  """
  return jnp.logaddexp(log_probs, jnp.log(jnp.asarray(epsilon, log_probs.dtype)))


def policy_gradient_log_probs(correction: str, log_probs: Array, discrete: bool) -> Array:
  """The log-probabilities the policy gradient −Σ_s log π(a_s|x_s) · A_s multiplies (§4.2):
  log π(a_s|x_s) itself, or log(π(a_s|x_s) + ε) for the ε-correction.

  Args:
    correction: one of `CORRECTIONS`.
    log_probs: `[T, B]` log π(a_s|x_s), carrying the gradient.
    discrete: whether π is a Categorical (the ε-correction's only kind).

  Raises:
    ValueError: an unknown correction, or "epsilon" for continuous actions (`check_action_space`).
  """
  check_action_space(correction, discrete)
  return epsilon_log_probs(log_probs) if correction == "epsilon" else log_probs
