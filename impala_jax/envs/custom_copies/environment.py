"""`Copy`: one environment, with its observations and actions converted to the pool's formats.

Whether it is a gymnasium or a dm_env environment is decided once, by `adapter_of`; the rest
goes through that adapter's functions.
"""

from typing import Any, List, Optional, Tuple, Union

import dm_env
import gymnasium
import numpy as np

from . import conversion as conversion_lib
from . import dm_env_adapter
from . import factories
from . import gymnasium_adapter


def adapter_of(env: Any) -> Any:
  """The adapter module (`gymnasium_adapter` or `dm_env_adapter`) of `env`'s API."""
  if isinstance(env, gymnasium.Env):
    return gymnasium_adapter
  if isinstance(env, dm_env.Environment):
    return dm_env_adapter
  raise ValueError(f"Expected a gymnasium.Env or a dm_env.Environment, got "
                   f"{type(env).__name__}.")


def conversion_of(env: Any) -> conversion_lib.Conversion:
  """Reads the spaces of one gymnasium or dm_env environment.

  Raises:
    ValueError: spaces this package does not handle (the message names them and what is
      accepted).
  """
  return adapter_of(env).conversion_of(env)


class Copy:
  """One environment, with its observations and actions converted to the pool's formats."""

  def __init__(self, env: Any, conversion: conversion_lib.Conversion):
    self.env = env
    self._conversion = conversion
    self._adapter = adapter_of(env)

  def observation(self, observation: Any) -> np.ndarray:
    conversion = self._conversion
    observation = np.asarray(observation)
    if observation.shape != conversion.raw_observation_shape:
      raise ValueError(f"{type(self.env).__name__} returned an observation of shape "
                       f"{observation.shape}; its space says "
                       f"{conversion.raw_observation_shape}.")
    if conversion.transpose:
      observation = np.transpose(observation, (2, 0, 1))
    return observation.astype(conversion.observation_dtype, copy=False)

  def action(self, action: np.ndarray) -> Any:
    conversion = self._conversion
    if conversion.discrete:
      return self._adapter.discrete_action(int(action) + conversion.action_offset,
                                           conversion.env_action_dtype)
    # A copy: the row is a view of the pool's action buffer, which the next send overwrites.
    return np.array(action, conversion.env_action_dtype)

  def reset(self, seed: Optional[int]) -> np.ndarray:
    return self.observation(self._adapter.reset(self.env, seed))

  def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool]:
    """(observation, reward, terminated, truncated) as the environment reports them."""
    observation, reward, terminated, truncated = self._adapter.step(self.env,
                                                                    self.action(action))
    return self.observation(observation), reward, terminated, truncated

  def render(self) -> np.ndarray:
    render = getattr(self.env, "render", None)
    frame = render() if render is not None else None
    if frame is None:
      raise ValueError(f"{type(self.env).__name__}.render() returned no RGB array: create the "
                       "environment with render_mode='rgb_array' to record videos.")
    return np.asarray(frame, np.uint8)

  def close(self) -> None:
    self.env.close()


def build(factory: Union[str, factories.Factory], env_ids: range, seed: int) -> List[Copy]:
  """Copies `env_ids` of `factory`, copy i made with `seed + i`; closed again on error."""
  factory = factories.resolve(factory)
  copies: List[Copy] = []
  try:
    conversion = None
    for env_id in env_ids:
      env = factories.make_one(factory, seed + env_id)
      try:
        conversion = conversion or conversion_of(env)
      except BaseException:
        env.close()
        raise
      copies.append(Copy(env, conversion))
  except BaseException:
    for copy in copies:
      copy.close()
    raise
  return copies
