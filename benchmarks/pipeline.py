"""pipeline: the host's own cost per agent step, with environments and a network that cost nothing.

The real data path (`runtime.sources.local_acting`: actor threads → the central inference
server → the unroll queue → `runtime.learner_loop` → `learning.Learner` → parameters back to
inference) runs as in training, but every actor steps a `SyntheticPool` (EnvPool's asynchronous
interface over Atari-shaped frames that are only copied, never rendered) and the network is
`NearlyFreeNetwork` (eight pixels → the heads). What is left is what the host spends per agent
step: Python, numpy copies, locks, thread hand-offs, dispatching jitted calls. On an accelerator
that is the ceiling of the whole system: with a GIL, the sum over threads of CPU per agent step
caps the agent steps per second no matter how many cores EnvPool has.

Reported per stage, from each thread's `StageClock`, in CPU microseconds per agent step
(summed over the threads of a role) and as fractions of the threads' wall time:

  actor      env (recv + send of the pool), inference (the request's round trip, client side),
             bookkeeping (episode scores, unroll writes), queue (handing unrolls on)
  inference  wait (for requests), assemble (the batch), policy (the jitted call and its
             results' copy to the host), reply (to every actor of the batch)
  learner    batch_wait (taking unrolls from the queue), stack, transfer (host → device),
             update (dispatch, the nearly free compute, the metrics' copy back)

and `other`: the process's CPU not inside those stages (XLA's threads, the garbage collector).
"""

import contextlib
import dataclasses
import os
import queue
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from flax import linen as nn
import jax.numpy as jnp
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import stage_clock
from impala_jax.networks import agent
from impala_jax.networks import heads
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import learner_loop
from impala_jax.runtime import sources
from impala_jax.runtime import training

# Pixels the nearly free network reads of each observation.
_PIXELS = 8
# Synthetic episodes last between these many agent steps (a Pong life is ~800-4,000 frames).
_EPISODE_STEPS = (200, 1000)
_POLL_SECONDS = 0.1


class SyntheticPool:
  """EnvPool's asynchronous interface over `num_envs` environments that cost nothing.

  `recv()` returns the next `recv_batch_size` environments that were sent actions (all of
  them after `async_reset()`), in the order they were sent, as EnvPool does when every
  environment steps equally fast. Observations are copies of fixed random frames of the
  task's shape and dtype (EnvPool also hands out fresh arrays); episodes end after a fixed,
  per-environment number of steps, followed by EnvPool's reset step, with the info fields the
  actors read on Atari (unclipped `reward`, the real game over `terminated`, `elapsed_step`).
  """

  def __init__(self, env_config: config_lib.EnvConfig, spec: envs.EnvSpec):
    self.spec = spec
    self._num_envs = env_config.num_envs
    self._batch_size = env_config.recv_batch_size
    rng = np.random.default_rng(env_config.seed)
    shape = (self._num_envs,) + tuple(spec.observation_shape)
    self._frames = rng.integers(0, 256, size=shape, dtype=np.uint8).astype(
        spec.observation_dtype)
    self._episode_steps = rng.integers(*_EPISODE_STEPS, size=self._num_envs)
    self._elapsed = np.zeros((self._num_envs,), np.int32)
    self._ready: List[int] = []

  def async_reset(self) -> None:
    self._elapsed[:] = -1  # The first recv is each environment's reset step (elapsed 0).
    self._ready = list(range(self._num_envs))

  def send(self, action: np.ndarray, env_id: np.ndarray) -> None:
    if len(action) != len(env_id):
      raise ValueError(f"{len(action)} actions for {len(env_id)} environments.")
    self._ready.extend(env_id.tolist())

  def recv(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Dict[str, Any]]:
    if len(self._ready) < self._batch_size:
      raise RuntimeError("recv() without enough environments sent actions: the caller must "
                         "send() every environment it received.")
    ids = np.asarray(self._ready[:self._batch_size], np.int32)
    del self._ready[:self._batch_size]
    # An ended episode's next step is its reset step (elapsed 0), as EnvPool's autoreset.
    ended_before = self._elapsed[ids] >= self._episode_steps[ids]
    self._elapsed[ids] = np.where(ended_before, 0, self._elapsed[ids] + 1)
    elapsed = self._elapsed[ids]
    terminated = elapsed >= self._episode_steps[ids]
    reward = ((elapsed % 97) == 96).astype(np.float32)
    info = dict(env_id=ids, elapsed_step=elapsed, reward=reward, terminated=terminated,
                lives=np.where(terminated, 0, 1).astype(np.int32))
    return (self._frames[ids], reward, terminated, np.zeros_like(terminated), info)

  def close(self) -> None:
    self._ready = []


class NearlyFreeNetwork(nn.Module):
  """The agent network's interface (`networks.agent.ImpalaNetwork`) at almost no cost: the
  heads read `_PIXELS` pixels of each observation. No core: `initial_state` is ()."""

  num_actions: int
  # No convolutions; the learner scans its optimizer steps (`learning.update`).
  convolutional = False

  @nn.nowrap
  def initial_state(self, batch_size: int):
    del batch_size
    return ()

  @nn.compact
  def __call__(self, observation, first, core_state):
    time_steps, batch_size = first.shape
    pixels = observation.reshape((time_steps, batch_size, -1))[..., :_PIXELS]
    features = pixels.astype(jnp.float32) / 255.0
    policy = heads.CategoricalHead(self.num_actions, name="policy")(features)
    value = heads.ValueHead(name="value")(features)
    return agent.AgentOutput(policy=policy, value=value), core_state


class _StepCounter:
  """The learner loop's telemetry, reduced to what this measurement needs: nothing."""

  def record(self, metrics: Mapping[str, float], env_steps: int) -> None:
    del metrics, env_steps

  def flush(self, env_steps: int) -> None:
    del env_steps


def _process_cpu_seconds() -> float:
  times = os.times()
  return times.user + times.system


class _Snapshot:
  """Every counter the measurement reads, at one moment."""

  def __init__(self, loop: learner_loop.LearnerLoop,
               clocks: Iterable[Tuple[str, stage_clock.StageClock, int]]):
    self.time = time.perf_counter()
    self.process_cpu = _process_cpu_seconds()
    self.env_steps = loop.env_steps
    self.cpu: Dict[str, float] = {}
    self.wall: Dict[str, float] = {}
    for role, clock, _ in clocks:
      for stage in clock.cpu:
        key = f"{role}_{stage}"
        self.cpu[key] = self.cpu.get(key, 0.0) + clock.cpu[stage]
        self.wall[key] = self.wall.get(key, 0.0) + clock.wall[stage]


def _summarize(start: _Snapshot, end: _Snapshot,
               threads: Mapping[str, int]) -> Dict[str, Any]:
  steps = end.env_steps - start.env_steps
  seconds = end.time - start.time
  if steps <= 0:
    raise RuntimeError(f"The learner consumed no agent steps in {seconds:.1f} s; lengthen "
                       "the warm-up or the window.")
  per_step = 1e6 / steps
  stage_cpu = {k: (end.cpu[k] - start.cpu[k]) * per_step for k in end.cpu}
  process_us = (end.process_cpu - start.process_cpu) * per_step
  stage_cpu["other"] = process_us - sum(stage_cpu.values())
  wall_fractions = {k: (end.wall[k] - start.wall[k]) / (seconds * threads[k.split("_")[0]])
                    for k in end.wall}
  return dict(env_steps_per_second=steps / seconds,
              host_us_per_step=process_us,
              stage_us_per_step=stage_cpu,
              wall_fractions=wall_fractions,
              measured_env_steps=steps,
              measured_seconds=seconds)


def measure_pipeline(config: config_lib.TrainConfig, warmup_seconds: float,
                     window_seconds: float) -> Dict[str, Any]:
  """Runs the real acting and learning path on synthetic pools and the nearly free network.

  Args:
    config: the layout (actor threads × envs, recv batch), unroll length, batch size,
      queue and optimizer settings; its task gives the observation shape (Atari: uint8
      frames) and the action count. Its network is not used.
    warmup_seconds: left out (compilation, the queue filling up).
    window_seconds: measured.

  Returns:
    `env_steps_per_second`, `host_us_per_step` (the process's CPU per agent step),
    `stage_us_per_step` (CPU per agent step by `role_stage`, plus `other`), `wall_fractions`
    (of each role's thread time), and the layout.
  """
  spec = envs.env_spec(config.env)
  if not spec.discrete:
    raise ValueError(f"The pipeline measurement needs a task with discrete actions; "
                     f"{config.env.env_id} has continuous ones.")
  network = NearlyFreeNetwork(spec.num_actions)
  learner = training.make_learner(network, networks.init_params(network, spec, config.seed),
                                  config)
  stop = threading.Event()
  acting = sources.local_acting(config, spec, network, learner, queue.SimpleQueue(), stop,
                                make_env=lambda env_config: SyntheticPool(env_config, spec))
  clocks = [("learner", learner.clock, 1)] + acting.phases
  threads = {role: count for role, _, count in clocks}
  loop = learner_loop.LearnerLoop(
      dataclasses.replace(config, total_env_steps=2**62),  # Stopped by the timer, not a budget.
      batches=acting.batches, learner=learner, publish=acting.publish,
      telemetry=_StepCounter(), checkpoints=checkpoint_lib.NoCheckpoints())
  snapshots: List[_Snapshot] = []

  gauges: Dict[str, Any] = {}

  def measure() -> None:
    for seconds in (warmup_seconds, window_seconds):
      if stop.wait(seconds):
        return
      snapshots.append(_Snapshot(loop, clocks))
      gauges.update(acting.gauges())  # Inference statistics since the previous call.
    stop.set()

  timer = threading.Thread(target=measure, name="pipeline-timer", daemon=True)
  with contextlib.ExitStack() as stack:
    acting.start(stack)
    timer.start()
    try:
      loop.run()
    finally:
      stop.set()
      timer.join()
  if len(snapshots) < 2:
    raise RuntimeError("The pipeline run ended before its window did.")
  result = _summarize(snapshots[0], snapshots[1], threads)
  result.update(inference_batch_size=gauges["inference_batch_size"],
                inference_requests_per_batch=gauges["inference_requests_per_batch"],
                inference_latency_ms=gauges["inference_latency_ms"])
  result.update(num_actor_threads=config.num_actor_threads, envs_per_thread=config.env.num_envs,
                recv_batch_size=config.env.recv_batch_size, batch_size=config.batch_size,
                unroll_length=config.unroll_length, updates=learner.update_step)
  return result
