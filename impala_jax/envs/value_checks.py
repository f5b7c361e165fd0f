"""Values that enter training from outside the learner's own code, checked where they enter.

`distributed.wire` checks a message's layout (dtypes, shapes, sizes; bools 0 or 1). This checks
its values, at each boundary:

  * a remote env host's STEP (`distributed.env_server`): observations, rewards, step counts;
  * an actor host's unrolls and episode records in the Redis store (`distributed.store_learner`):
    observations, rewards, actions, log-probabilities, recurrent state, lengths and returns;
  * your own environment's results (`envs.custom`): observations and rewards.

Accepted: finite values within what the environment declares (`specs.DeclaredRanges`: its
observation space's bounds, a clipped reward's [-1, 1], a dm_env reward spec, its time limit)
and, for data from other hosts, within `config.ValueLimits`: magnitudes that keep the
learner's float32 arithmetic finite. One NaN reward or an action outside the action space would
otherwise reach the loss (`take_along_axis` reads NaN there) and end the run.

A violation raises `ValueViolation`, whose message names the field, the first bad value, where
it is, and what is accepted; the caller rejects that message (and counts it against its host).
"""

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import types
from impala_jax.envs import family as family_lib
from impala_jax.envs import specs

# The behaviour policy's log-probability of the action it sampled, per action dimension. An
# action sampled with probability below e^-50 (1e-22) does not happen, and beyond it the
# importance ratio π/μ = exp(log π - log μ) overflows float32 (e^88) once an advantage
# multiplies it.
LOG_PROB_LIMIT = 50.0
# log_softmax is <= 0 exactly; allow for the float rounding of other implementations.
_LOG_PROB_SLACK = 1e-3


class ValueViolation(ValueError):
  """Values outside what the task declares or the learner accepts; the message says which."""


def _first_bad(ok: np.ndarray) -> Tuple[int, ...]:
  return tuple(int(i) for i in np.unravel_index(int(np.argmin(ok)), ok.shape))


def check_range(name: str, values, low, high) -> None:
  """Raises `ValueViolation` unless every value is finite and within `[low, high]`.

  Args:
    name: what the values are, for the message.
    values: an array (any shape, float or integer).
    low, high: bounds that broadcast to `values` (±inf: that side unbounded).
  """
  values = np.asarray(values)
  if not values.size:
    return
  with np.errstate(invalid="ignore"):
    ok = (values >= low) & (values <= high)
  if values.dtype.kind == "f":
    ok &= np.isfinite(values)
  if ok.all():
    return
  where = _first_bad(ok)
  bad = values[where]
  lo = np.broadcast_to(low, values.shape)[where]
  hi = np.broadcast_to(high, values.shape)[where]
  at = f" at index {list(where)}" if values.ndim else ""
  raise ValueViolation(f"{name} holds {bad.item():g}{at}; accepted: finite values in "
                       f"[{float(lo):g}, {float(hi):g}].")


class ValueChecker:
  """Checks one task's data against its declared ranges and, for other hosts', `limits`.

  Args:
    spec: the learner's environment spec (its `ranges` are the declared ones).
    limits: magnitudes accepted from other hosts; None checks the declared ranges only (your
      own environment, whose values you own).
  """

  def __init__(self, spec: specs.EnvSpec, limits: Optional[config_lib.ValueLimits] = None):
    max_abs_value = limits.max_abs_value if limits else math.inf
    max_abs_reward = limits.max_abs_reward if limits else math.inf
    declared = spec.ranges
    self._spec = spec
    self._max_abs_value = max_abs_value
    # uint8 (Atari) and integer observations are bounded by their dtype.
    self._float_observations = np.dtype(spec.observation_dtype).kind == "f"
    self._observation_low = (-max_abs_value if declared.observation_low is None
                             else np.maximum(declared.observation_low, -max_abs_value))
    self._observation_high = (max_abs_value if declared.observation_high is None
                              else np.minimum(declared.observation_high, max_abs_value))
    self._reward = (max(declared.reward_low, -max_abs_reward),
                    min(declared.reward_high, max_abs_reward))
    # A game's own reward per step (the score's): Atari's is unclipped, bounded by the limit.
    atari = spec.family is family_lib.EnvFamily.ATARI
    self._game_reward = (-max_abs_reward, max_abs_reward) if atari else self._reward
    self._max_steps = declared.max_episode_steps

  def observations(self, observation, name: str = "observation") -> None:
    if self._float_observations:
      check_range(name, observation, self._observation_low, self._observation_high)

  def env_results(self, observation, reward) -> None:
    """One `recv()` of an environment: `[n, ...]` observations and `[n]` rewards."""
    self.observations(observation)
    check_range("reward", reward, *self._reward)

  def step(self, arrays: Mapping[str, np.ndarray]) -> None:
    """A remote host's STEP (`distributed.env_protocol.step_schema`'s arrays)."""
    self.env_results(arrays["observation"], arrays["reward"])
    check_range("game_reward", arrays["game_reward"], *self._game_reward)
    check_range("elapsed_step", arrays["elapsed_step"], 0,
                math.inf if self._max_steps is None else self._max_steps)

  def unroll(self, unroll: types.Unroll) -> None:
    """An actor host's unroll (leaves `[T+1, B, ...]`)."""
    spec = self._spec
    self.env_results(unroll.observation, unroll.reward)
    if spec.discrete:
      check_range("action", unroll.action, 0, spec.num_actions - 1)
      check_range("behaviour_log_prob", unroll.behaviour_log_prob, -LOG_PROB_LIMIT,
                  _LOG_PROB_SLACK)
    else:
      check_range("action", unroll.action, -self._max_abs_value, self._max_abs_value)
      limit = LOG_PROB_LIMIT * spec.action_dim
      check_range("behaviour_log_prob", unroll.behaviour_log_prob, -limit, limit)
    for i, leaf in enumerate(jax.tree.leaves(unroll.core_state)):
      check_range(f"core state leaf {i}", leaf, -self._max_abs_value, self._max_abs_value)

  def episodes(self, returns: np.ndarray, lengths: np.ndarray) -> None:
    """Episode records: lengths within [1, the time limit], and returns finite and within what
    `length` steps of the game's rewards can add up to."""
    lengths = np.asarray(lengths)
    check_range("episode_length", lengths, 1,
                math.inf if self._max_steps is None else self._max_steps)
    low, high = self._game_reward
    lengths = lengths.astype(np.float64)
    check_range("episode_return", returns, lengths * min(low, 0.0), lengths * max(high, 0.0))


def own_environment_error(env_name: str, violation: ValueViolation) -> ValueViolation:
  """The error for your own environment's bad values: it names the environment and the fix."""
  return ValueViolation(f"Environment {env_name}: {violation} Fix the environment, or declare "
                        "the range it really has in its observation space (or reward spec).")


def non_finite_fields(unroll: types.Unroll) -> List[str]:
  """The float fields of a batch that hold NaN or infinity (for the learner's error message)."""
  names: Sequence[str] = ("observation", "reward", "action", "behaviour_log_prob")
  found = [n for n in names
           if np.asarray(getattr(unroll, n)).dtype.kind == "f" and
           not np.isfinite(getattr(unroll, n)).all()]
  if any(not np.isfinite(leaf).all() for leaf in jax.tree.leaves(unroll.core_state)):
    found.append("core_state")
  return found
