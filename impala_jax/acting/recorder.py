"""The acting side's bookkeeping for one set of environments: episode starts, scores, unrolls.

Shared by the local actor threads and the server-side sessions of remote environment hosts
(`distributed.env_server`): both receive EnvPool-style step results for some environments,
get actions from the inference server, and must turn the results into unrolls and real
episode scores the same way.
"""

from typing import Any, Callable, List, Mapping, Tuple

import numpy as np

from impala_jax import envs
from impala_jax import types
from impala_jax.acting import unroll_buffer


class StepRecorder:
  """Tracks `num_envs` environments: which observations start episodes, scores, unrolls.

  Per step of some environments `ids`, in this order:
    `observe(ids, observation)`  stores the observations; returns which start an episode
                                 (the inference server resets the core state there) and the
                                 observations to act on (read in place, see `unroll_buffer`);
    `record(ids, ...)`           stores the rest of the step (after acting); returns the
                                 episodes that ended and the environments whose unrolls
                                 (T+1 timesteps) are complete;
    `hand_over(complete, sink)`  gives those unrolls to a sink.
  """

  def __init__(self, num_envs: int, spec: envs.EnvSpec, unroll_length: int, task: int = 0):
    """`task`: the task id of every environment here (`types.Unroll.task`), stamped on their
    unrolls and episodes."""
    self._tracker = envs.EpisodeTracker(num_envs, spec.family, task=task)
    self._buffer = unroll_buffer.UnrollBuffer(unroll_length, num_envs, spec, task=task)
    # Every environment's first observation starts an episode (after a reset).
    self._starts_episode = np.ones((num_envs,), bool)

  def observe(self, ids: np.ndarray, observation: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Stores `[n, ...]` observations of `ids`; returns `(first [n] bool, observation)`.

    The returned observations may be a view of the storage: read them before the next call.
    """
    return self._starts_episode[ids], self._buffer.write_observation(ids, observation)

  def record(self, ids: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
             truncated: np.ndarray, info: Mapping[str, Any], first: np.ndarray,
             result: Any) -> Tuple[List[types.EpisodeStats], np.ndarray]:
    """Stores the rest of the step `observe` began; returns (finished episodes, environments
    with complete unrolls).

    Args:
      ids: `[n]` the environments (local indices) of this step.
      reward, terminated, truncated: `[n]` EnvPool's results for them.
      info: EnvPool's info (`elapsed_step`, and on Atari `reward` and `terminated`).
      first: what `observe` returned.
      result: the inference server's `ActResult` for this step.
    """
    # After an episode end, EnvPool's next step is the reset step: a new episode starts.
    self._starts_episode[ids] = terminated | truncated
    episodes = self._tracker.update(ids, reward, terminated, truncated, info)
    complete = self._buffer.write(ids, reward, terminated, truncated, first, result)
    return episodes, complete

  def hand_over(self, complete: np.ndarray, sink: unroll_buffer.UnrollSink,
                stop_requested: Callable[[], bool]) -> bool:
    """Gives the complete unrolls `record` returned to `sink` (blocking while it is full);
    False if stopped first."""
    return self._buffer.hand_over(complete, sink, stop_requested)
