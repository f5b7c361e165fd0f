"""`Conversion`: what the pool delivers for one environment, and how its values are converted.

Shared by the gymnasium and dm_env adapters, which read their environment's spaces into one.
"""

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

ACCEPTED_OBSERVATIONS = ("Box observations of any shape, float or uint8 (dm_env: one Array "
                         "or BoundedArray)")
ACCEPTED_ACTIONS = ("Discrete or 1-D float Box actions, for the categorical and diagonal-"
                    "Gaussian policies (dm_env: DiscreteArray, a scalar integer BoundedArray "
                    "or a 1-D float Array/BoundedArray)")


class Conversion(NamedTuple):
  """What the pool delivers for one environment, and how its values are converted.

  Attributes:
    observation_shape, observation_dtype: one observation as delivered (`[C, H, W]` for
      images).
    discrete, num_actions: a categorical action in `[0, num_actions)` ...
    action_low, action_high: ... or a float vector within these bounds (float32).
    raw_observation_shape: the environment's own observation shape.
    transpose: `[H, W, C]` → `[C, H, W]`.
    action_offset: added to discrete actions (gymnasium's `Discrete(start=...)`, a dm_env
      `BoundedArray`'s minimum).
    env_action_dtype: the dtype the environment takes actions in.
    observation_low, observation_high: the observation space's bounds, as the environment
      declares them (raw layout; None: none declared).
    reward_low, reward_high: a dm_env reward spec's bounds (gymnasium declares none).
  """

  observation_shape: Tuple[int, ...]
  observation_dtype: np.dtype
  discrete: bool
  num_actions: Optional[int]
  action_low: Optional[np.ndarray]
  action_high: Optional[np.ndarray]
  raw_observation_shape: Tuple[int, ...]
  transpose: bool
  action_offset: int
  env_action_dtype: np.dtype
  observation_low: Any = None
  observation_high: Any = None
  reward_low: float = -float("inf")
  reward_high: float = float("inf")

  @property
  def action_dim(self) -> Optional[int]:
    return None if self.discrete else int(self.action_low.shape[0])

  def layout(self) -> dict:
    """The plain fields `Buffers` needs (what a worker process is sent)."""
    return dict(observation_shape=tuple(self.observation_shape),
                observation_dtype=np.dtype(self.observation_dtype).str,
                discrete=self.discrete, action_dim=self.action_dim,
                num_actions=self.num_actions)


def _observation_dtype(dtype: Any, space: Any) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype == np.uint8 or np.issubdtype(dtype, np.floating):
    return dtype
  if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
    return np.dtype(np.float32)
  raise ValueError(f"Unsupported observation dtype {dtype} of {space}; accepted: "
                   f"{ACCEPTED_OBSERVATIONS}.")


def _channel_first(env: Any) -> bool:
  return bool(getattr(env, "channel_first", False) or
              getattr(getattr(env, "unwrapped", None), "channel_first", False))


def make_conversion(env, raw_shape, dtype, space, *, num_actions=None, low=None, high=None,
                    action_offset=0, env_action_dtype=None, declared=None) -> Conversion:
  """The `Conversion` of an environment whose observations are `raw_shape` arrays of `dtype`
  (`space`, for error messages), with `num_actions` discrete actions or float actions within
  `[low, high]`. `declared`: (observation low, observation high, reward low, reward high), or
  None."""
  raw_shape = tuple(int(s) for s in raw_shape)
  transpose = len(raw_shape) == 3 and not _channel_first(env)
  shape = (raw_shape[2], raw_shape[0], raw_shape[1]) if transpose else raw_shape
  discrete = num_actions is not None
  if not discrete:
    low, high = np.array(low, np.float32), np.array(high, np.float32)
    low.setflags(write=False)
    high.setflags(write=False)
  declared = declared or (None, None, -float("inf"), float("inf"))
  return Conversion(shape, _observation_dtype(dtype, space), discrete,
                    int(num_actions) if discrete else None, None if discrete else low,
                    None if discrete else high, raw_shape, transpose, int(action_offset),
                    np.dtype(env_action_dtype), *declared)
