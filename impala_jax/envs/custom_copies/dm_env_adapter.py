"""A `dm_env.Environment` in the pool's terms: its specs as a `Conversion`, its reset and step.

The same four functions as `gymnasium_adapter`. A dm_env has no episode flags of its own: a
`LAST` step with discount 0 is `terminated`, with discount > 0 `truncated` (a cut-off).
"""

from typing import Any, Optional, Tuple

import dm_env
from dm_env import specs as dm_specs
import numpy as np

from . import conversion as conversion_lib


def conversion_of(env: dm_env.Environment) -> conversion_lib.Conversion:
  """Reads `env`'s specs: one `Array` observation; `DiscreteArray`, a scalar integer
  `BoundedArray` or a 1-D float `(Bounded)Array` action.

  Raises:
    ValueError: other specs (the message names them and what is accepted).
  """
  observation_spec, action_spec = env.observation_spec(), env.action_spec()
  if not isinstance(observation_spec, dm_specs.Array):
    raise ValueError(f"Unsupported observation spec {observation_spec!r} "
                     f"({type(observation_spec).__name__}); accepted: "
                     f"{conversion_lib.ACCEPTED_OBSERVATIONS}. Return one array (concatenate "
                     "the parts).")
  args = (env, observation_spec.shape, observation_spec.dtype, observation_spec)
  declared = _declared(env, observation_spec)
  make = conversion_lib.make_conversion
  if isinstance(action_spec, dm_specs.DiscreteArray):
    return make(*args, num_actions=action_spec.num_values, env_action_dtype=action_spec.dtype,
                declared=declared)
  if isinstance(action_spec, dm_specs.Array):
    dtype = np.dtype(action_spec.dtype)
    if (isinstance(action_spec, dm_specs.BoundedArray) and action_spec.shape == () and
        np.issubdtype(dtype, np.integer)):
      low, high = int(action_spec.minimum), int(action_spec.maximum)
      return make(*args, num_actions=high - low + 1, action_offset=low,
                  env_action_dtype=dtype, declared=declared)
    if len(action_spec.shape) == 1 and np.issubdtype(dtype, np.floating):
      size = action_spec.shape[0]
      if isinstance(action_spec, dm_specs.BoundedArray):
        low = np.broadcast_to(action_spec.minimum, (size,))
        high = np.broadcast_to(action_spec.maximum, (size,))
      else:
        low, high = np.full((size,), -np.inf), np.full((size,), np.inf)
      return make(*args, low=low, high=high, env_action_dtype=dtype, declared=declared)
  raise ValueError(f"Unsupported action spec {action_spec!r} ({type(action_spec).__name__}); "
                   f"accepted: {conversion_lib.ACCEPTED_ACTIONS}.")


def _declared(env: dm_env.Environment, observation_spec: Any) -> tuple:
  """(observation low, high, reward low, high) from a dm_env's bounded specs."""
  low = high = None
  if isinstance(observation_spec, dm_specs.BoundedArray):
    low = np.broadcast_to(observation_spec.minimum, observation_spec.shape)
    high = np.broadcast_to(observation_spec.maximum, observation_spec.shape)
  reward_spec = env.reward_spec()
  reward_low, reward_high = -float("inf"), float("inf")
  if isinstance(reward_spec, dm_specs.BoundedArray) and reward_spec.shape == ():
    reward_low, reward_high = float(reward_spec.minimum), float(reward_spec.maximum)
  return low, high, reward_low, reward_high


def discrete_action(index: int, dtype: np.dtype) -> np.ndarray:
  """A discrete action as a dm_env takes it: a scalar array of its action spec's dtype."""
  return np.asarray(index, dtype)


def reset(env: dm_env.Environment, seed: Optional[int]) -> Any:
  """Resets `env`; returns its raw observation."""
  del seed  # gymnasium's reset takes one; a dm_env is seeded by its factory.
  return env.reset().observation


def step(env: dm_env.Environment, action: Any) -> Tuple[Any, float, bool, bool]:
  """(raw observation, reward, terminated, truncated) of one step (module doc)."""
  timestep = env.step(action)
  reward = 0.0 if timestep.reward is None else float(np.asarray(timestep.reward))
  terminated = truncated = False
  if timestep.last():
    # dm_env: discount 0 ends the episode for good; > 0 is a cut-off (a time limit).
    discount = None if timestep.discount is None else float(np.asarray(timestep.discount))
    if discount is not None and not 0.0 <= discount <= 1.0:  # NaN fails too.
      raise ValueError(f"{type(env).__name__} ended an episode with discount "
                       f"{discount}; a discount must be a finite number in [0, 1].")
    terminated = discount is None or discount == 0.0
    truncated = not terminated
  return timestep.observation, reward, terminated, truncated
