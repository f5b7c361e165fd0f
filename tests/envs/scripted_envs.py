"""Scripted environments for tests/envs/test_custom.py, in a module of their own.

It imports nothing from impala_jax (so no JAX): the worker processes of a pool import it to
build their copies, and start in a fraction of a second.

Episode k lasts SCRIPT[k][0] steps and ends as SCRIPT[k][1]. Observation
[copy seed, episode, t, last action applied]; reward t + 0.5 at step t.
"""

import dm_env
from dm_env import specs as dm_specs
import gymnasium
from gymnasium import spaces
import numpy as np

SCRIPT = [(3, "terminated"), (2, "truncated"), (1, "both"), (4, "terminated")]


def _expected_end(episode):
  return SCRIPT[episode % len(SCRIPT)]


class ScriptedGym(gymnasium.Env):
  observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
  action_space = spaces.Discrete(5)

  def __init__(self):
    self.seed_seen = -1.0
    self.episode = -1
    self.t = 0
    self.closed = False

  def _obs(self, action):
    return np.array([self.seed_seen, self.episode, self.t, action], np.float32)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    if seed is not None:
      self.seed_seen = float(seed)
    self.episode += 1
    self.t = 0
    return self._obs(-1), {}

  def step(self, action):
    assert isinstance(action, int) and 0 <= action < 5, action
    self.t += 1
    length, end = _expected_end(self.episode)
    done = self.t == length
    terminated = done and end in ("terminated", "both")
    truncated = done and end in ("truncated", "both")
    return self._obs(action), self.t + 0.5, terminated, truncated, {}

  def close(self):
    self.closed = True


class ScriptedDm(dm_env.Environment):
  """The same script as a dm_env environment ("both" is a LAST step with discount 0)."""

  def __init__(self, seed):
    self.gym = ScriptedGym()
    self.seed = seed
    self._started = False

  def reset(self):
    seed = None if self._started else self.seed
    self._started = True
    return dm_env.restart(self.gym.reset(seed=seed)[0])

  def step(self, action):
    observation, reward, terminated, truncated, _ = self.gym.step(int(action))
    if terminated:
      return dm_env.termination(reward, observation)
    if truncated:
      return dm_env.truncation(reward, observation)
    return dm_env.transition(reward, observation)

  def observation_spec(self):
    return dm_specs.Array((4,), np.float32)

  def action_spec(self):
    return dm_specs.DiscreteArray(5)


def make_scripted():
  return ScriptedGym()


def make_scripted_dm(seed):
  return ScriptedDm(seed)


class FailingStep(ScriptedGym):

  def step(self, action):
    if self.t == 2:
      raise RuntimeError("the simulator exploded")
    return super().step(action)


def make_failing():
  return FailingStep()
