"""A small example environment, written twice: as a `gymnasium.Env` and as a `dm_env.Environment`.

The corridor (docs/custom_envs.md walks through it): `LENGTH` cells in a row, the agent starts
in one of the left `LENGTH // 2` cells (uniformly at random) and the goal is the rightmost
cell. Actions: 0 steps left (a wall at cell 0), 1 steps right. Reaching the goal ends the
episode (*terminated*) with reward +1; every other step costs `STEP_COST`. After
`TIME_LIMIT` steps without reaching it the episode is cut off (*truncated*). The observation
is the one-hot position, float32 `[LENGTH]`.

The reward is delayed to the end of a path of 4 to 7 steps, and a random policy rarely
reaches the goal in time, so early training sees both kinds of episode end. Walking straight
right returns `1 - STEP_COST * (distance - 1)`: between 0.94 and 0.97, 0.955 on average over
the start cells; a cut-off episode returns `-STEP_COST * TIME_LIMIT = -0.24`.

    python experiments/control.py --env=impala_jax.envs.examples:make_corridor
    python experiments/control.py --env=impala_jax.envs.examples:make_corridor_dm_env

`make_corridor` takes no argument (the pool seeds it through gymnasium's `reset(seed=...)`);
`make_corridor_dm_env` takes the seed (dm_env has no seeding API). With the same seed both
play the same episodes.
"""

from typing import Optional, Tuple

import dm_env
from dm_env import specs
import gymnasium
import numpy as np

LENGTH = 8
TIME_LIMIT = 24
STEP_COST = 0.01
GOAL_REWARD = 1.0

_LEFT, _RIGHT = 0, 1
_CELL_PIXELS = 16


class _Corridor:
  """The dynamics, shared by both interfaces."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.position = 0
    self.steps = 0

  def reset(self) -> np.ndarray:
    self.position = int(self.rng.integers(0, LENGTH // 2))
    self.steps = 0
    return self.observation()

  def step(self, action: int) -> Tuple[np.ndarray, float, bool, bool]:
    """(observation, reward, terminated, truncated)."""
    if action not in (_LEFT, _RIGHT):
      raise ValueError(f"Corridor actions are 0 (left) or 1 (right), got {action!r}.")
    self.position = max(0, self.position + (1 if action == _RIGHT else -1))
    self.steps += 1
    if self.position == LENGTH - 1:
      return self.observation(), GOAL_REWARD, True, False
    return self.observation(), -STEP_COST, False, self.steps >= TIME_LIMIT

  def observation(self) -> np.ndarray:
    observation = np.zeros(LENGTH, np.float32)
    observation[self.position] = 1.0
    return observation

  def frame(self) -> np.ndarray:
    """`[16, 16 · LENGTH, 3]` uint8: grey cells, the goal green, the agent red."""
    cells = np.full((LENGTH, 3), 200, np.uint8)
    cells[LENGTH - 1] = (60, 180, 75)
    cells[self.position] = (230, 25, 75)
    row = np.repeat(cells[None], _CELL_PIXELS, axis=0)
    return np.repeat(row, _CELL_PIXELS, axis=1)


class CorridorEnv(gymnasium.Env):
  """The corridor as a gymnasium environment (module docstring)."""

  metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

  def __init__(self, render_mode: Optional[str] = "rgb_array"):
    self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (LENGTH,), np.float32)
    self.action_space = gymnasium.spaces.Discrete(2)
    self.render_mode = render_mode
    self._corridor: Optional[_Corridor] = None

  def reset(self, *, seed: Optional[int] = None, options=None):
    super().reset(seed=seed)  # Seeds self.np_random when a seed is given.
    if self._corridor is None:
      self._corridor = _Corridor(self.np_random)
    self._corridor.rng = self.np_random
    return self._corridor.reset(), {}

  def step(self, action):
    observation, reward, terminated, truncated = self._corridor.step(int(action))
    return observation, reward, terminated, truncated, {}

  def render(self):
    return self._corridor.frame() if self.render_mode == "rgb_array" else None


class CorridorDmEnv(dm_env.Environment):
  """The same corridor as a dm_env environment: the time limit is a `LAST` step with
  discount 1 (truncation), reaching the goal one with discount 0 (termination)."""

  def __init__(self, seed: Optional[int] = None):
    self._corridor = _Corridor(np.random.default_rng(seed))

  def reset(self) -> dm_env.TimeStep:
    return dm_env.restart(self._corridor.reset())

  def step(self, action) -> dm_env.TimeStep:
    observation, reward, terminated, truncated = self._corridor.step(int(action))
    if terminated:
      return dm_env.termination(reward, observation)
    if truncated:
      return dm_env.truncation(reward, observation)
    return dm_env.transition(reward, observation)

  def observation_spec(self) -> specs.BoundedArray:
    return specs.BoundedArray((LENGTH,), np.float32, 0.0, 1.0, name="position")

  def action_spec(self) -> specs.DiscreteArray:
    return specs.DiscreteArray(2, name="move")

  def render(self) -> np.ndarray:
    return self._corridor.frame()


def make_corridor() -> CorridorEnv:
  """The gymnasium corridor (no argument: the pool seeds its first `reset`)."""
  return CorridorEnv()


def make_corridor_dm_env(seed: int) -> CorridorDmEnv:
  """The dm_env corridor, seeded at construction."""
  return CorridorDmEnv(seed)
