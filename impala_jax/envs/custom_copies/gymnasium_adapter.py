"""A `gymnasium.Env` in the pool's terms: its spaces as a `Conversion`, its reset and step.

`dm_env_adapter` has the same four functions for a `dm_env.Environment`; `environment.Copy`
picks one of the two by the environment's type.
"""

from typing import Any, Optional, Tuple

import gymnasium
import numpy as np

from . import conversion as conversion_lib


def conversion_of(env: gymnasium.Env) -> conversion_lib.Conversion:
  """Reads `env`'s spaces: a `Box` observation; `Discrete` or 1-D float `Box` actions.

  Raises:
    ValueError: other spaces (the message names them and what is accepted).
  """
  spaces = gymnasium.spaces
  observation_space, action_space = env.observation_space, env.action_space
  if not isinstance(observation_space, spaces.Box):
    hint = (" Flatten it (gymnasium.wrappers.FlattenObservation) or pick the array you need."
            if isinstance(observation_space, (spaces.Dict, spaces.Tuple)) else "")
    raise ValueError(f"Unsupported observation space {observation_space} "
                     f"({type(observation_space).__name__}); accepted: "
                     f"{conversion_lib.ACCEPTED_OBSERVATIONS}.{hint}")
  args = (env, observation_space.shape, observation_space.dtype, observation_space)
  # gymnasium declares no reward range.
  declared = (observation_space.low, observation_space.high, -float("inf"), float("inf"))
  if isinstance(action_space, spaces.Discrete):
    return conversion_lib.make_conversion(
        *args, num_actions=action_space.n, action_offset=action_space.start,
        env_action_dtype=np.int64, declared=declared)
  if (isinstance(action_space, spaces.Box) and len(action_space.shape) == 1 and
      np.issubdtype(action_space.dtype, np.floating)):
    return conversion_lib.make_conversion(
        *args, low=action_space.low, high=action_space.high,
        env_action_dtype=action_space.dtype, declared=declared)
  raise ValueError(f"Unsupported action space {action_space} ({type(action_space).__name__}); "
                   f"accepted: {conversion_lib.ACCEPTED_ACTIONS}.")


def discrete_action(index: int, dtype: np.dtype) -> Any:
  """A discrete action as gymnasium takes it: a Python int."""
  del dtype  # A dm_env's action spec has one; gymnasium's Discrete takes an int.
  return index


def reset(env: gymnasium.Env, seed: Optional[int]) -> Any:
  """Resets `env` (seeding it when `seed` is given); returns its raw observation."""
  observation, _ = env.reset(seed=seed)
  return observation


def step(env: gymnasium.Env, action: Any) -> Tuple[Any, float, bool, bool]:
  """(raw observation, reward, terminated, truncated): gymnasium's flags map one to one."""
  observation, reward, terminated, truncated, _ = env.step(action)
  return observation, float(reward), bool(terminated), bool(truncated)
