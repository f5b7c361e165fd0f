"""The acting side's bookkeeping for one set of environments: episode starts, scores, unrolls.

Shared by the local actor threads and the server-side sessions of remote environment hosts
(`distributed.env_server`): both receive EnvPool-style step results for some environments,
get actions from the inference server, and must turn the results into `Unroll`s and real
episode scores the same way.
"""

from typing import Any, List, Mapping, Tuple

import numpy as np

from impala_jax import envs
from impala_jax import types
from impala_jax.acting import unroll_buffer


class StepRecorder:
  """Tracks `num_envs` environments: which observations start episodes, scores, unrolls.

  Per step of some environments `ids`: `first(ids)` says which of their observations start
  an episode (ask before acting: the inference server resets the core state there), then
  `record(...)` stores the step and returns the episodes that ended and the unrolls that are
  complete (T+1 timesteps, see `unroll_buffer`).
  """

  def __init__(self, num_envs: int, spec: envs.EnvSpec, unroll_length: int, is_atari: bool):
    self._tracker = envs.EpisodeTracker(num_envs, is_atari)
    self._buffer = unroll_buffer.UnrollBuffer(unroll_length, num_envs, spec)
    # Every environment's first observation starts an episode (after a reset).
    self._starts_episode = np.ones((num_envs,), bool)

  def first(self, ids: np.ndarray) -> np.ndarray:
    return self._starts_episode[ids]

  def record(self, ids: np.ndarray, observation: np.ndarray, reward: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray, info: Mapping[str, Any],
             first: np.ndarray, result: Any
             ) -> Tuple[List[types.EpisodeStats], List[types.Unroll]]:
    """Stores one step; returns (finished episodes, complete unrolls).

    Args:
      ids: `[n]` the environments (local indices) of this step.
      observation, reward, terminated, truncated: `[n, ...]` EnvPool's results for them.
      info: EnvPool's info (`elapsed_step`, and on Atari `reward` and `terminated`).
      first: `first(ids)` as asked before acting.
      result: the inference server's `ActResult` for this step.
    """
    # After an episode end, EnvPool's next step is the reset step: a new episode starts.
    self._starts_episode[ids] = terminated | truncated
    episodes = self._tracker.update(ids, reward, terminated, truncated, info)
    self._buffer.write(ids, observation, reward, terminated, truncated, first, result)
    return episodes, self._buffer.pop_complete(ids)
