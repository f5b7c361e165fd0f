"""Actor threads: step an EnvPool through the central inference server and cut unrolls.

Each actor owns one EnvPool and one thread. It uses EnvPool's asynchronous API: `recv()` returns
whichever environments finished stepping (GIL released while EnvPool works), the actor asks the
inference server for their actions, and `send()`s them straight back, so the C++ pool keeps
stepping while the Python side does its bookkeeping.

Every environment writes its timesteps into its own column of a `[T+1, num_envs, ...]` buffer.
When a column holds T+1 timesteps it leaves as one `Unroll` (B = 1), and its last timestep
becomes the first of the next unroll (the bootstrap overlap, see `impala_jax.types`).
"""

import queue
import time
from typing import Callable, List, Optional, Protocol

import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import inference
from impala_jax import types
from impala_jax import worker

_POLL_SECONDS = 0.1


class InferenceClient(Protocol):

  def act(self, env_ids: np.ndarray, observation: np.ndarray,
          first: np.ndarray) -> inference.ActResult:
    ...


class _UnrollBuffer:
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


class Actor(worker.Worker):
  """One actor thread stepping one EnvPool; emits `Unroll`s (B = 1) into `unroll_queue`.

  `start()` launches the thread, `close()` stops and joins it (the pool closes with it). A
  failure in the thread is kept in `error` (the runtime checks it and stops the run).
  """

  def __init__(self,
               actor_id: int,
               env_config: config_lib.EnvConfig,
               client: InferenceClient,
               unroll_queue: "queue.Queue[types.Unroll]",
               unroll_length: int,
               on_episode: Optional[Callable[[types.EpisodeStats], None]] = None):
    """Args:
      actor_id: this actor's index; its environments get the global ids
        [actor_id * num_envs, (actor_id + 1) * num_envs) at the inference server.
      env_config: the pool to build (in the thread). Its seed is offset per actor.
      client: the inference server (anything with its `act`).
      unroll_queue: bounded queue to the learner.
      unroll_length: T.
      on_episode: called (from this thread) with each finished episode's real score.
    """
    self._actor_id = actor_id
    self._env_config = env_config
    self._client = client
    self._queue = unroll_queue
    self._unroll_length = unroll_length
    self._on_episode = on_episode or (lambda stats: None)
    self._env_id_offset = actor_id * env_config.num_envs
    super().__init__(name=f"actor-{actor_id}")
    self.env_steps = 0  # Read by other threads for throughput; ints are swapped atomically.
    # Seconds this thread spent in each phase (read by the runtime for "where the time goes").
    self.seconds = {"env": 0.0, "inference": 0.0, "bookkeeping": 0.0, "queue": 0.0}

  def _run(self) -> None:
    env = envs.make_env(self._env_config)
    try:
      self._loop(env)
    finally:
      env.close()

  def _loop(self, env) -> None:
    spec = envs.env_spec(env)
    num_envs = self._env_config.num_envs
    is_atari = envs.is_atari(self._env_config.env_id)
    tracker = envs.EpisodeTracker(num_envs, is_atari)
    buffer = _UnrollBuffer(self._unroll_length, num_envs, spec)
    starts_episode = np.ones((num_envs,), bool)
    env.async_reset()
    seconds = self.seconds
    clock = time.perf_counter
    while not self._stop.is_set():
      t0 = clock()
      observation, reward, terminated, truncated, info = env.recv()
      ids = np.asarray(info["env_id"])
      first = starts_episode[ids]
      t1 = clock()
      result = self._client.act(ids + self._env_id_offset, observation, first)
      t2 = clock()
      env.send(envs.to_env_action(result.action, spec), ids)

      # Bookkeeping overlaps with EnvPool stepping the environments just sent.
      starts_episode[ids] = terminated | truncated
      for episode in tracker.update(ids, reward, terminated, truncated, info):
        self._on_episode(episode)
      buffer.write(ids, observation, reward, terminated, truncated, first, result)
      self.env_steps += len(ids)
      t3 = clock()
      for unroll in buffer.pop_complete(ids):
        self._put(unroll)
      t4 = clock()
      seconds["env"] += t1 - t0
      seconds["inference"] += t2 - t1
      seconds["bookkeeping"] += t3 - t2
      seconds["queue"] += t4 - t3

  def _put(self, unroll: types.Unroll) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(unroll, timeout=_POLL_SECONDS)
        return
      except queue.Full:
        continue
