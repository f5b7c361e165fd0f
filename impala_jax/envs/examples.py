"""Small example environments: the corridor, written twice (as a `gymnasium.Env` and as a
`dm_env.Environment`), and the cue-recall memory task (gymnasium).

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

The cue-recall task (`CueRecallEnv`, `make_cue_recall`) needs memory: what to do at the end is
shown only at the start. It is the T-maze idea (Bakker 2001, "Reinforcement Learning with Long
Short-Term Memory", NIPS; the "memory length" tasks of bsuite, Osband et al. 2020, are the
same) cut down to its core, and what experiments/configs/memory_lstm.flags and
memory_ff.flags compare.
"""

import operator
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


# ------------------------------------------------------------------------------------------
# Cue recall: a memory task.

NUM_CUES = 2
DELAY = 10
CORRECT_REWARD = 1.0
WRONG_REWARD = -1.0
# Actions per episode: the cue step, the delay, the choice.
RECALL_EPISODE_LENGTH = DELAY + 2

_DIM, _SHOWN, _CHOOSE = (120, 120, 120), (66, 99, 216), (245, 200, 40)
_RIGHT_COLOUR, _WRONG_COLOUR = (60, 180, 75), (230, 25, 75)


class CueRecallEnv(gymnasium.Env):
  """Remember a cue across a delay, then name it.

  Each episode draws a cue c uniformly from `num_cues` (`NUM_CUES` = 2 by default; from the
  environment's `np_random`). The observation, float32 `[num_cues + 1]`, is

    * at the first step (t = 0): the one-hot cue in the first `num_cues` entries;
    * for the next `delay` steps (t = 1 ... delay; `DELAY` = 10): all zeros, whatever the cue;
    * at the last step (t = delay + 1): the last entry 1 ("choose now"), the rest 0.

  Actions are `Discrete(num_cues)` throughout. Those taken before the last step do nothing and
  earn 0; the one taken at the last step ends the episode (*terminated*, never truncated) with
  `CORRECT_REWARD` (+1) if it equals c and `WRONG_REWARD` (−1) otherwise. Every episode is
  `delay + 2` actions long (`RECALL_EPISODE_LENGTH` = 12) and returns +1 or −1.

  **Chance.** An agent without memory acts at the last step on an observation that is the same
  for every cue, so its action is independent of c, whatever it learned; c is uniform, so it is
  right with probability exactly 1 / `num_cues`, and its expected return is
  `CORRECT_REWARD / num_cues + WRONG_REWARD · (1 − 1 / num_cues) = 2 / num_cues − 1`: **0**
  for two cues. (The mean return of n of its episodes has standard deviation 1 / √n for two
  cues: ±0.22 over 20 episodes, ±0.03 over 1,000.) **The optimum**, +1 every episode, needs
  the cue carried through the `delay` blank steps, e.g. in an LSTM's state.

  It is bsuite's memory-length task (Osband et al. 2020, "Behaviour Suite for Reinforcement
  Learning", ICLR) without the time-remaining entry in the observation, or Bakker's T-maze
  (2001, "Reinforcement Learning with Long Short-Term Memory", NeurIPS) without the corridor.
  A step takes about 0.6 µs of Python here, so training, not the environment, sets the pace.

  `render()` draws one 16-pixel cell per cue and one for "choose now": the cue's cell bright
  while it is shown and dim after (for a viewer; the agent does not see it), the last cell
  yellow at the choice, then the chosen cell green if right, red if wrong.
  """

  metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

  def __init__(self, render_mode: Optional[str] = "rgb_array", num_cues: int = NUM_CUES,
               delay: int = DELAY):
    if isinstance(num_cues, bool) or not isinstance(num_cues, int) or num_cues < 2:
      raise ValueError(f"num_cues must be an integer >= 2 (one cue leaves nothing to "
                       f"remember), got {num_cues!r}.")
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
      raise ValueError(f"delay must be an integer >= 0, got {delay!r}.")
    self.num_cues = num_cues
    self.delay = delay
    self.episode_length = delay + 2
    self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (num_cues + 1,), np.float32)
    self.action_space = gymnasium.spaces.Discrete(num_cues)
    self.render_mode = render_mode
    self.cue = 0
    self.steps = 0
    self._choice: Optional[int] = None

  def reset(self, *, seed: Optional[int] = None, options=None):
    super().reset(seed=seed)  # Seeds self.np_random when a seed is given.
    self.cue = int(self.np_random.integers(self.num_cues))
    self.steps = 0
    self._choice = None
    return self._observation(), {}

  def step(self, action):
    # Integers of any kind (numpy's, 0-d arrays) name an action; a float or an out-of-range
    # value is a caller's bug, which would otherwise pass silently as a wrong choice.
    try:
      choice = operator.index(action)
    except TypeError:
      choice = None
    if choice is None or not 0 <= choice < self.num_cues:
      raise ValueError(f"Cue-recall actions are the integers 0 to {self.num_cues - 1} (the cue "
                       f"to name), got {action!r}.")
    if self._choice is not None:
      raise RuntimeError("step() after the episode ended; call reset() first.")
    self.steps += 1
    if self.steps < self.episode_length:
      return self._observation(), 0.0, False, False, {}
    self._choice = choice
    reward = CORRECT_REWARD if choice == self.cue else WRONG_REWARD
    return self._observation(), reward, True, False, {}

  def _observation(self) -> np.ndarray:
    observation = np.zeros(self.num_cues + 1, np.float32)
    if self.steps == 0:
      observation[self.cue] = 1.0
    elif self.steps == self.episode_length - 1:
      observation[self.num_cues] = 1.0
    return observation  # Zeros during the delay, and after the choice.

  def render(self):
    if self.render_mode != "rgb_array":
      return None
    cells = np.full((self.num_cues + 1, 3), 200, np.uint8)
    cells[self.cue] = _SHOWN if self.steps == 0 else _DIM
    if self.steps == self.episode_length - 1:
      cells[self.num_cues] = _CHOOSE
    if self._choice is not None:
      cells[self._choice] = _RIGHT_COLOUR if self._choice == self.cue else _WRONG_COLOUR
    row = np.repeat(cells[None], _CELL_PIXELS, axis=0)
    return np.repeat(row, _CELL_PIXELS, axis=1)


def make_cue_recall() -> CueRecallEnv:
  """The cue-recall memory task with `NUM_CUES` cues and a delay of `DELAY` steps (no
  argument: the pool seeds its first `reset`)."""
  return CueRecallEnv()
