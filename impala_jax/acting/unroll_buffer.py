"""Per-environment columns of a `[T+1, num_envs]` buffer, cut into unrolls when full.

Every environment writes its timesteps into its own column. When a column holds T+1 timesteps
it leaves as one `Unroll` (B = 1), and its last timestep becomes the first of the next unroll
(the bootstrap overlap, see `impala_jax.types`).
"""

from typing import List

import jax
import numpy as np

from impala_jax import envs
from impala_jax import types


class UnrollBuffer:
  """`[T+1, num_envs]` storage with a write position per environment."""

  def __init__(self, unroll_length: int, num_envs: int, spec: envs.EnvSpec):
    n = unroll_length + 1
    self.unroll_length = unroll_length
    self.position = np.zeros((num_envs,), np.int64)
    # JAX computes in float32 anyway; halve the memory of float64 observations (MuJoCo).
    obs_dtype = np.float32 if spec.observation_dtype == np.float64 else spec.observation_dtype
    self.observation = np.zeros((n, num_envs) + tuple(spec.observation_shape), obs_dtype)
    self.reward = np.zeros((n, num_envs), np.float32)
    self.terminated = np.zeros((n, num_envs), bool)
    self.truncated = np.zeros((n, num_envs), bool)
    self.first = np.zeros((n, num_envs), bool)
    if spec.discrete:
      self.action = np.zeros((n, num_envs), np.int32)
    else:
      self.action = np.zeros((n, num_envs, spec.action_dim), np.float32)
    self.behaviour_log_prob = np.zeros((n, num_envs), np.float32)
    self.policy_version = np.zeros((n, num_envs), np.int32)
    # Leaves [num_envs, ...]: the core state before timestep 0 of each environment's current
    # unroll, and before its timestep T (which becomes timestep 0 of the next unroll).
    self.core_state = None
    self._next_core_state = None

  def _record_core_state(self, ids, t, core_state):
    if self.core_state is None:
      zeros = lambda x: np.zeros((len(self.position),) + x.shape[1:], x.dtype)
      self.core_state = jax.tree.map(zeros, core_state)
      self._next_core_state = jax.tree.map(zeros, core_state)
    for table, next_table, state in zip(jax.tree.leaves(self.core_state),
                                        jax.tree.leaves(self._next_core_state),
                                        jax.tree.leaves(core_state)):
      table[ids[t == 0]] = state[t == 0]
      next_table[ids[t == self.unroll_length]] = state[t == self.unroll_length]

  def write(self, ids, observation, reward, terminated, truncated, first, result):
    t = self.position[ids]
    self.observation[t, ids] = observation
    self.reward[t, ids] = reward
    self.terminated[t, ids] = terminated
    self.truncated[t, ids] = truncated
    self.first[t, ids] = first
    self.action[t, ids] = result.action
    self.behaviour_log_prob[t, ids] = result.behaviour_log_prob
    self.policy_version[t, ids] = result.policy_version
    if result.core_state != ():
      self._record_core_state(ids, t, result.core_state)
    self.position[ids] = t + 1

  def pop_complete(self, ids) -> List[types.Unroll]:
    """Unrolls of the environments whose columns are full; their last step becomes step 0."""
    full = ids[self.position[ids] == self.unroll_length + 1]
    if not len(full):
      return []
    fields = (self.observation, self.reward, self.terminated, self.truncated, self.first,
              self.action, self.behaviour_log_prob, self.policy_version)
    unrolls = []
    for env in full:
      core_state = (() if self.core_state is None else
                    jax.tree.map(lambda x, e=env: x[e:e + 1].copy(), self.core_state))
      unrolls.append(types.Unroll(*(f[:, env:env + 1].copy() for f in fields),
                                  core_state=core_state))
    for f in fields:
      f[0, full] = f[-1, full]
    if self.core_state is not None:
      for table, next_table in zip(jax.tree.leaves(self.core_state),
                                   jax.tree.leaves(self._next_core_state)):
        table[full] = next_table[full]
    self.position[full] = 1
    return unrolls
