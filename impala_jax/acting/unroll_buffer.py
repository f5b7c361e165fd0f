"""Each environment's unroll in progress: one column of a time-major `[T+1, num_envs, ...]` block.

Every environment writes its timesteps into its own column. When a column holds T+1 timesteps
it is complete: the caller hands it over (`hand_over`: a sink copies it into a learner batch,
see `batch_assembler`), and the column restarts with its last timestep as its first (the
bootstrap overlap, see `impala_jax.types`).

The block is time-major, as `types.Unroll` and the learner's update are, so when every
environment steps together (EnvPool returning all of them on each `recv`, the default):
  * one timestep of all of them is one contiguous slab, `block.observation[t]`: the inference
    server reads the observations there, in place, instead of from a copy (`observe`);
  * the block is a batch as it stands: when it holds exactly one batch, it goes to the learner
    whole and a free block replaces it (`UnrollSink.put_block`), with no copy at all.
The storage is allocated once, 64-byte aligned (`aligned_empty`), and reused for the whole run.
"""

from typing import Any, Callable, Optional, Protocol

import jax
import numpy as np

from impala_jax import envs
from impala_jax import types

# Buffers start on a 64-byte boundary: a cache line, and what XLA's CPU client needs to use a
# host array in place (`jax.device_put` without a copy) instead of copying it.
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised array of `shape` and `dtype` whose data starts on an `ALIGNMENT` boundary."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + ALIGNMENT, np.uint8)
  start = (-raw.ctypes.data) % ALIGNMENT
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype) -> np.ndarray:
  array = aligned_empty(shape, dtype)
  array.fill(0)
  return array


def unroll_storage(spec: envs.EnvSpec, num_unrolls: int, unroll_length: int,
                   core_state: types.CoreState = ()) -> types.Unroll:
  """Zeroed, aligned storage for `num_unrolls` unrolls: leaves `[T+1, num_unrolls, ...]`.

  `core_state` is one environment's core state (leaves `[1, ...]`) or (); the storage's core
  state has leaves `[num_unrolls, ...]`.
  """
  n, b = unroll_length + 1, num_unrolls
  # JAX computes in float32 anyway; halve the memory of float64 observations (MuJoCo).
  obs_dtype = np.float32 if spec.observation_dtype == np.float64 else spec.observation_dtype
  if spec.discrete:
    action = aligned_zeros((n, b), np.int32)
  else:
    action = aligned_zeros((n, b, spec.action_dim), np.float32)
  return types.Unroll(
      observation=aligned_zeros((n, b) + tuple(spec.observation_shape), obs_dtype),
      reward=aligned_zeros((n, b), np.float32),
      terminated=aligned_zeros((n, b), bool),
      truncated=aligned_zeros((n, b), bool),
      first=aligned_zeros((n, b), bool),
      action=action,
      behaviour_log_prob=aligned_zeros((n, b), np.float32),
      policy_version=aligned_zeros((n, b), np.int32),
      task=aligned_zeros((n, b), np.int32),
      core_state=jax.tree.map(lambda x: aligned_zeros((b,) + x.shape[1:], x.dtype),
                              core_state))


class UnrollSink(Protocol):
  """Where complete unrolls go (`batch_assembler.BatchAssembler`, an actor host's pusher)."""

  def put_unrolls(self, block: types.Unroll, columns: np.ndarray,
                  stop_requested: Callable[[], bool]) -> bool:
    """Takes the unrolls in `columns` of `block` (leaves `[T+1, num_envs, ...]`, core state
    `[num_envs, ...]`). The caller reuses those columns once this returns: copy what you keep.
    Blocks while full; returns False if `stop_requested()` became true first."""

  def accepts_block(self, block: types.Unroll) -> bool:
    """Whether `put_block` can take `block` whole."""

  def put_block(self, block: types.Unroll,
                stop_requested: Callable[[], bool]) -> Optional[types.Unroll]:
    """Takes `block` itself, every column complete (no copy: the caller must not touch it
    again), and returns a free block of the same layout for the caller to continue in; None
    if `stop_requested()` became true first (then `block` is still the caller's)."""


class UnrollBuffer:
  """`[T+1, num_envs, ...]` storage with a write position per environment.

  Every environment plays task `task` (`types.Unroll.task`): the block's task field is filled
  once, when the block becomes this buffer's, never per step.
  """

  def __init__(self, unroll_length: int, num_envs: int, spec: envs.EnvSpec, task: int = 0):
    self.unroll_length = unroll_length
    self._num_envs = num_envs
    self._all_envs = np.arange(num_envs)
    self._task = task
    self.position = np.zeros((num_envs,), np.int64)
    self.block = unroll_storage(spec, num_envs, unroll_length)
    self.block.task.fill(task)
    # The core state before timestep T of each column: timestep 0's when the column restarts.
    self._next_core_state: types.CoreState = ()
    # Each column's last timestep, kept while its block is handed over whole.
    self._carry = tuple(aligned_empty(x.shape[1:], x.dtype) for x in self.block[:-1])
    self._lockstep = False  # Whether the timestep being written is in lockstep.

  def _in_lockstep(self, ids: np.ndarray) -> bool:
    """Whether `ids` is every environment, in order, all at the same timestep."""
    return (len(ids) == self._num_envs and bool((ids == self._all_envs).all()) and
            bool((self.position == self.position[0]).all()))

  def write_observation(self, ids: np.ndarray, observation: np.ndarray) -> np.ndarray:
    """Stores the observations of `ids` at their current timestep; returns them as stored.

    In lockstep that is the contiguous slab `block.observation[t]`, which callers may read in
    place until their next write (the inference server does); else `observation` itself, in
    the storage's dtype (float32 for float64 observations), so every caller acts on one dtype.
    """
    self._lockstep = self._in_lockstep(ids)
    if self._lockstep:
      slab = self.block.observation[int(self.position[0])]
      slab[...] = observation
      return slab
    self.block.observation[self.position[ids], ids] = observation
    return np.asarray(observation, self.block.observation.dtype)

  def write(self, ids: np.ndarray, reward, terminated, truncated, first,
            result) -> np.ndarray:
    """Completes the timestep of `ids` begun by `write_observation`; returns the environments
    whose columns are now complete."""
    t = self.position[ids]
    where = int(t[0]) if self._lockstep else (t, ids)  # Plain slices when in lockstep.
    block = self.block
    block.reward[where] = reward
    block.terminated[where] = terminated
    block.truncated[where] = truncated
    block.first[where] = first
    block.action[where] = result.action
    block.behaviour_log_prob[where] = result.behaviour_log_prob
    block.policy_version[where] = result.policy_version
    if jax.tree.leaves(result.core_state):
      self._record_core_state(ids, t, result.core_state)
    self.position[ids] = t + 1
    return ids[t == self.unroll_length]

  def _record_core_state(self, ids: np.ndarray, t: np.ndarray, core_state: Any) -> None:
    if not jax.tree.leaves(self.block.core_state):  # The first step with a core: make room.
      zeros = lambda x: aligned_zeros((self._num_envs,) + x.shape[1:], x.dtype)
      self.block = self.block._replace(core_state=jax.tree.map(zeros, core_state))
      self._next_core_state = jax.tree.map(zeros, core_state)
    starts, ends = t == 0, t == self.unroll_length
    for table, next_table, state in zip(jax.tree.leaves(self.block.core_state),
                                        jax.tree.leaves(self._next_core_state),
                                        jax.tree.leaves(core_state)):
      table[ids[starts]] = state[starts]
      next_table[ids[ends]] = state[ends]

  def hand_over(self, columns: np.ndarray, sink: UnrollSink,
                stop_requested: Callable[[], bool]) -> bool:
    """Gives the complete `columns` to `sink`, then restarts them from their last timestep.

    Returns False (columns left as they are) if the sink was stopped first.
    """
    if not len(columns):
      return True
    last = self.unroll_length
    if len(columns) == self._num_envs and sink.accepts_block(self.block):
      for carry, field in zip(self._carry, self.block[:-1]):
        np.copyto(carry, field[last])
      fresh = sink.put_block(self.block, stop_requested)
      if fresh is None:
        return False
      for field, carry in zip(fresh[:-1], self._carry):
        field[0] = carry
      # A free block may have been another task's batch: its columns become this task's.
      fresh.task.fill(self._task)
      self.block = fresh
    else:
      if not sink.put_unrolls(self.block, columns, stop_requested):
        return False
      for field in self.block[:-1]:
        field[0, columns] = field[last, columns]
    for table, next_table in zip(jax.tree.leaves(self.block.core_state),
                                 jax.tree.leaves(self._next_core_state)):
      table[columns] = next_table[columns]
    self.position[columns] = 1
    return True
