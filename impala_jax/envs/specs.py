"""What the network and the actor need to know of an environment, and its action format."""

import dataclasses
import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from impala_jax.envs import family as family_lib


@dataclasses.dataclass(frozen=True, eq=False)
class DeclaredRanges:
  """What an environment declares about its values (`envs.value_checks` holds data to it).

  Attributes:
    observation_low, observation_high: float32 bounds that broadcast to one observation, from
      its observation space (None: unbounded, or an integer dtype whose range is its bound).
    reward_low, reward_high: the training reward's range: [-1, 1] for clipped Atari rewards,
      a dm_env reward spec's bounds; else unbounded.
    max_episode_steps: the time limit in agent steps (None: none known).
  """

  observation_low: Optional[np.ndarray] = None
  observation_high: Optional[np.ndarray] = None
  reward_low: float = -math.inf
  reward_high: float = math.inf
  max_episode_steps: Optional[int] = None

  def __eq__(self, other: Any) -> bool:
    if not isinstance(other, DeclaredRanges):
      return NotImplemented
    same = lambda a, b: (a is None and b is None) or (
        a is not None and b is not None and np.array_equal(a, b))
    return (same(self.observation_low, other.observation_low) and
            same(self.observation_high, other.observation_high) and
            (self.reward_low, self.reward_high, self.max_episode_steps) ==
            (other.reward_low, other.reward_high, other.max_episode_steps))

  def __hash__(self) -> int:
    return hash((self.reward_low, self.reward_high, self.max_episode_steps))


def observation_bounds(low: Any, high: Any, dtype: Any,
                       transpose: bool = False) -> Tuple[Optional[np.ndarray],
                                                         Optional[np.ndarray]]:
  """An observation space's bounds as `DeclaredRanges` keeps them: float32, read-only, None
  when unbounded or when the observations are integers (their dtype bounds them)."""
  if low is None or high is None or not np.issubdtype(np.dtype(dtype), np.floating):
    return None, None
  low, high = np.array(low, np.float32), np.array(high, np.float32)
  if transpose and low.ndim == 3:  # [H, W, C] → [C, H, W], as the observations are.
    low, high = np.transpose(low, (2, 0, 1)), np.transpose(high, (2, 0, 1))
  if np.all(np.isneginf(low)) and np.all(np.isposinf(high)):
    return None, None
  low.setflags(write=False)
  high.setflags(write=False)
  return low, high


class EnvSpec(NamedTuple):
  """What the network builder and the actor need to know about an environment.

  Attributes:
    observation_shape: one environment's observation, e.g. `(4, 84, 84)` (stack, H, W) for
      Atari, `(4,)` for CartPole.
    observation_dtype: numpy dtype of observations (uint8 for Atari, float32/float64 else).
    discrete: whether actions are integers in `[0, num_actions)`.
    num_actions: number of discrete actions; None for continuous actions.
    action_dim: size of a continuous action vector; None for discrete actions.
    action_low: `[action_dim]` lower bounds (float32, read-only); None when discrete.
    action_high: `[action_dim]` upper bounds (float32, read-only); None when discrete.
    action_dtype: numpy dtype EnvPool expects for actions (int32, float32 or float64).
    family: Atari, another EnvPool task, or your own environment (`envs.family`).
    ranges: what the environment declares about its values (`DeclaredRanges`).
    num_tasks: the games of a multi-task run (task ids `[0, num_tasks)`, `Unroll.task`),
      which share this spec (Atari's full action space); 1 otherwise.
  """

  observation_shape: Tuple[int, ...]
  observation_dtype: np.dtype
  discrete: bool
  num_actions: Optional[int]
  action_dim: Optional[int]
  action_low: Optional[np.ndarray]
  action_high: Optional[np.ndarray]
  action_dtype: np.dtype
  family: family_lib.EnvFamily
  ranges: DeclaredRanges = DeclaredRanges()
  num_tasks: int = 1


def _read_only(array: Any) -> np.ndarray:
  array = np.array(array, dtype=np.float32)
  array.setflags(write=False)
  return array


def spec_from_envpool(pool_spec: Any) -> EnvSpec:
  """Reads an `EnvSpec` from an EnvPool spec (gymnasium spaces plus array specs).

  Raises:
    ValueError: observation/action spaces this package does not handle.
  """
  observation_space = pool_spec.observation_space
  action_space = pool_spec.action_space
  if not (hasattr(observation_space, "shape") and observation_space.shape is not None and
          hasattr(observation_space, "dtype") and observation_space.dtype is not None):
    raise ValueError("Only array observations are supported; this task observes "
                     f"{observation_space}.")
  # EnvPool's own record of the action array is the authority on its dtype (gymnasium's
  # Discrete says int64, EnvPool stores int32).
  action_array_spec = getattr(pool_spec, "action_array_spec", {}).get("action")
  space_name = type(action_space).__name__
  family = family_lib.env_family(pool_spec)
  ranges = _envpool_ranges(pool_spec, observation_space, family)
  if space_name == "Discrete":
    return EnvSpec(
        observation_shape=tuple(observation_space.shape),
        observation_dtype=np.dtype(observation_space.dtype),
        discrete=True,
        num_actions=int(action_space.n),
        action_dim=None,
        action_low=None,
        action_high=None,
        action_dtype=np.dtype(action_array_spec.dtype if action_array_spec else np.int32),
        family=family,
        ranges=ranges,
    )
  if space_name == "Box" and len(action_space.shape) == 1:
    return EnvSpec(
        observation_shape=tuple(observation_space.shape),
        observation_dtype=np.dtype(observation_space.dtype),
        discrete=False,
        num_actions=None,
        action_dim=int(action_space.shape[0]),
        action_low=_read_only(action_space.low),
        action_high=_read_only(action_space.high),
        action_dtype=np.dtype(action_array_spec.dtype if action_array_spec
                              else action_space.dtype),
        family=family,
        ranges=ranges,
    )
  raise ValueError(f"Only Discrete and 1-D Box action spaces are supported, got {action_space}.")


def _envpool_ranges(pool_spec: Any, observation_space: Any,
                    family: family_lib.EnvFamily) -> DeclaredRanges:
  config = getattr(pool_spec, "config", None)
  low, high = observation_bounds(getattr(observation_space, "low", None),
                                 getattr(observation_space, "high", None),
                                 observation_space.dtype)
  clipped = family is family_lib.EnvFamily.ATARI and bool(getattr(config, "reward_clip", False))
  max_steps = getattr(config, "max_episode_steps", None)
  return DeclaredRanges(observation_low=low, observation_high=high,
                        reward_low=-1.0 if clipped else -math.inf,
                        reward_high=1.0 if clipped else math.inf,
                        max_episode_steps=int(max_steps) if max_steps else None)


def to_env_action(actions: Any, spec: EnvSpec) -> np.ndarray:
  """Turns a batch of policy actions into the array EnvPool accepts.

  Discrete actions are checked to lie in `[0, num_actions)`: EnvPool does not check, and an
  out-of-range index would pick an arbitrary ALE action. Continuous actions are clipped to
  `[action_low, action_high]` (the Gaussian policy is unbounded) and cast to `action_dtype`.

  Args:
    actions: `[B]` integers (discrete) or `[B, action_dim]` floats (continuous); numpy or JAX.
    spec: the environment's spec.

  Returns:
    `[B]` int32 or `[B, action_dim]` `spec.action_dtype`, a new numpy array.

  Raises:
    ValueError: wrong shape, out-of-range discrete or non-finite continuous actions.
    TypeError: non-integer discrete actions.
  """
  actions = np.asarray(actions)
  if spec.discrete:
    if actions.ndim != 1:
      raise ValueError(f"Discrete actions must be [batch], got shape {actions.shape}.")
    if actions.dtype.kind not in "iu":
      raise TypeError(f"Discrete actions must be integers, got dtype {actions.dtype}.")
    if actions.size and (actions.min() < 0 or actions.max() >= spec.num_actions):
      raise ValueError(f"Discrete actions must be in [0, {spec.num_actions}), got "
                       f"min {actions.min()} and max {actions.max()}.")
    return actions.astype(spec.action_dtype)
  if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
    raise ValueError(f"Continuous actions must be [batch, {spec.action_dim}], got shape "
                     f"{actions.shape}.")
  if not np.all(np.isfinite(actions)):
    raise ValueError("Continuous actions contain NaN or infinity; the policy has diverged.")
  return np.clip(actions, spec.action_low, spec.action_high).astype(spec.action_dtype)
