"""Actor threads: step an EnvPool through the central inference server and cut unrolls.

Each actor owns one EnvPool and one thread. It uses EnvPool's asynchronous API: `recv()` returns
whichever environments finished stepping (GIL released while EnvPool works), the actor asks the
inference server for their actions, and `send()`s them straight back, so the C++ pool keeps
stepping while the Python side does its bookkeeping.

A `recorder.StepRecorder` keeps the bookkeeping: episode starts, real scores, and T+1-step
unrolls with the bootstrap overlap (see `impala_jax.types`), handed to a sink as they complete
(the learner's `batch_assembler.BatchAssembler`, or an actor host's pusher).
"""

import dataclasses
from typing import Any, Callable, List, Optional, Protocol

import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import stage_clock
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import inference
from impala_jax.acting import recorder as recorder_lib
from impala_jax.acting import unroll_buffer


class InferenceClient(Protocol):

  def act(self, env_ids: np.ndarray, observation: np.ndarray,
          first: np.ndarray) -> inference.ActResult:
    ...


def actor_task(config: config_lib.TrainConfig, actor_id: int) -> int:
  """The task (game) actor thread `actor_id` plays: `actor_id mod` the number of tasks, so the
  games take turns and each has `num_actor_threads / num_tasks` threads."""
  return actor_id % config.env.num_tasks


def env_configs(config: config_lib.TrainConfig,
                update_step: int) -> List[config_lib.EnvConfig]:
  """One EnvConfig per actor thread, its task's (`actor_task`), with seeds that never overlap.

  EnvPool seeds environment i of a pool with `seed + i`: thread k starts at `k · num_envs`,
  process p of a multi-process run at `p · total_envs`, and a session resumed at update u at
  `u · num_processes · total_envs`, so no two environments of the run share a seed, whichever
  game they play.
  """
  base = config.env.seed + config.total_envs * (update_step * config.num_processes +
                                                config.process_index)
  return [dataclasses.replace(config.env.task_config(actor_task(config, k)),
                              seed=base + k * config.env.num_envs)
          for k in range(config.num_actor_threads)]


class Actor(threads.Worker):
  """One actor thread stepping one EnvPool; hands complete unrolls to `sink`.

  `start()` launches the thread, `close()` stops and joins it (the pool closes with it). A
  failure in the thread is kept in `error` (the runtime checks it and stops the run).
  """

  def __init__(self,
               actor_id: int,
               env_config: config_lib.EnvConfig,
               client: InferenceClient,
               sink: unroll_buffer.UnrollSink,
               unroll_length: int,
               on_episode: Optional[Callable[[types.EpisodeStats], None]] = None,
               make_env: Callable[[config_lib.EnvConfig], Any] = envs.make_env,
               task: int = 0):
    """Args:
      actor_id: this actor's index; its environments get the global ids
        [actor_id * num_envs, (actor_id + 1) * num_envs) at the inference server.
      env_config: the pool to build (in the thread). Its seed is offset per actor.
      client: the inference server (anything with its `act`).
      sink: takes complete unrolls, blocking while full (the learner is behind).
      unroll_length: T.
      on_episode: called (from this thread) with each finished episode's real score.
      make_env: builds the pool from `env_config` (a benchmark passes a synthetic one).
      task: the task id of `env_config`'s game (`actor_task`), carried by its unrolls and
        episodes.
    """
    self._actor_id = actor_id
    self._env_config = env_config
    self._client = client
    self._sink = sink
    self._unroll_length = unroll_length
    self._on_episode = on_episode or (lambda stats: None)
    self._env_id_offset = actor_id * env_config.num_envs
    self._make_env = make_env
    self._task = task
    super().__init__(name=f"actor-{actor_id}", description=f"Actor thread actor-{actor_id}")
    self.env_steps = 0  # Read by other threads for throughput; ints are swapped atomically.
    # Where this thread's time goes (read by the runtime for the `time_*` columns).
    self.clock = stage_clock.StageClock(("env", "inference", "bookkeeping", "queue"))

  @property
  def seconds(self):
    return self.clock.wall

  def _run(self) -> None:
    env = self._make_env(self._env_config)
    try:
      self._loop(env)
    finally:
      env.close()

  def _loop(self, env) -> None:
    spec = envs.env_spec(env)
    recorder = recorder_lib.StepRecorder(self._env_config.num_envs, spec, self._unroll_length,
                                         task=self._task)
    env.async_reset()
    clock = self.clock
    clock.restart()
    while not self._stop.is_set():
      observation, reward, terminated, truncated, info = env.recv()
      ids = np.asarray(info["env_id"])
      clock.lap("env")
      first, observation = recorder.observe(ids, observation)
      clock.lap("bookkeeping")
      result = self._client.act(ids + self._env_id_offset, observation, first)
      clock.lap("inference")
      env.send(envs.to_env_action(result.action, spec), ids)
      clock.lap("env")

      # The rest of the bookkeeping overlaps with EnvPool stepping the environments just sent.
      episodes, complete = recorder.record(ids, reward, terminated, truncated, info, first,
                                           result)
      for episode in episodes:
        self._on_episode(episode)
      self.env_steps += len(ids)
      clock.lap("bookkeeping")
      recorder.hand_over(complete, self._sink, self._stop.is_set)
      clock.lap("queue")
