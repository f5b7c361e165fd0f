"""Where a run's unrolls come from and where its parameters go: the acting side, assembled.

  local   actor threads (and remote env hosts over gRPC, with --listen) → the central
          inference server → batches of unrolls (`BatchAssembler`); parameters go to the
          inference server
  store   a Redis trajectory store fed by actor hosts (experiments/actor_host.py); parameters
          go to the store

Either is an `Acting`: a batch source for the learner loop, a publisher, the gauges and phase
counters for telemetry, `start(stack)`, which starts its threads and registers their `close`
on the run's ExitStack (so they are joined when the run ends, however it ends), and
`end_run()`, which tells remote hosts that the run is over (only when it ended normally: a
stopped run may be resumed, and its hosts wait for it).
"""

import contextlib
import functools
import queue
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from absl import logging
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import actor as actor_lib
from impala_jax.acting import batch_assembler
from impala_jax.acting import inference
from impala_jax.distributed import env_server
from impala_jax.distributed import learner_settings
from impala_jax.distributed import store_learner
from impala_jax.distributed import trajectory_store
from impala_jax.runtime import learner_loop
from impala_jax.runtime import telemetry


class Acting(NamedTuple):
  batches: learner_loop.BatchSource
  publish: Callable[[Any, int], None]
  gauges: Callable[[], Dict[str, Any]]
  phases: List[telemetry.PhaseSource]
  start: Callable[[contextlib.ExitStack], None]
  end_run: Callable[[], None] = lambda: None


def session_seed(seed: int, update_step: int, process_index: int = 0) -> int:
  """The action-sampling seed of a session that starts at `update_step` on a process.

  A resumed run must not replay the first session's action noise, nor process 1 process 0's:
  (seed, update_step, process) seeds an independent stream (numpy's SeedSequence), equal to
  `seed` itself for a fresh single-process run.
  """
  if update_step == 0 and process_index == 0:
    return seed
  return int(np.random.SeedSequence([seed, update_step, process_index]).generate_state(1)[0])


def inference_batch_sizes(config: config_lib.TrainConfig) -> List[int]:
  """The padded sizes a policy call may have: each compiles once.

  Local actors ask for one recv batch at a time, so a call serves 1..num_actors of them: k ×
  the recv batch. Remote hosts bring other sizes: powers of two up to all environments.
  """
  recv_batch = config.env.recv_batch_size
  sizes = {recv_batch * k for k in range(1, config.num_actor_threads + 1)}
  if config.remote_envs is not None:
    size = 8
    while size < config.inference_envs:
      sizes.add(size)
      size *= 2
    sizes.add(config.inference_envs)
  return sorted(sizes)


def _local_gauges(server: inference.InferenceServer, assembler: batch_assembler.BatchAssembler,
                  remote: Optional[Any]) -> Dict[str, Any]:
  """The metrics row's gauges of local acting: queue, inference batching, remote hosts."""
  stats = server.stats()
  values = dict(queue_size=assembler.queued_unrolls(),
                inference_batch_size=stats.mean_batch_size,
                inference_requests_per_batch=stats.mean_requests_per_batch,
                inference_latency_ms=stats.mean_latency_ms)
  if remote is not None:
    hosts = remote.stats()
    values.update(remote_hosts=hosts.hosts, remote_envs=hosts.remote_envs,
                  remote_env_steps=hosts.remote_env_steps,
                  rejected_messages=hosts.rejected, value_violations=hosts.value_violations,
                  evicted_hosts=hosts.evicted)
  return values


def local_acting(config: config_lib.TrainConfig, spec: envs.EnvSpec, network: Any,
                 learner: Any, episodes: "queue.SimpleQueue[types.EpisodeStats]",
                 stop: threading.Event,
                 make_env: Callable[[config_lib.EnvConfig], Any] = envs.make_env) -> Acting:
  """Actor threads and remote env hosts through the central inference server.

  `make_env` builds each actor's pool (`benchmarks/pipeline.py` passes synthetic ones).
  """
  # The queue to the learner, in batches of reused buffers. The learner holds one batch, or
  # two when it sends the next one to its devices ahead (`Learner.sends_ahead`).
  assembler = batch_assembler.BatchAssembler(
      config.batch_size, capacity=max(1, config.unroll_queue_capacity // config.batch_size),
      reader_buffers=2 if learner.sends_ahead else 1)
  server = inference.InferenceServer(
      network.apply, learner.params(), network.initial_state(1),
      num_envs=config.inference_envs, batch_sizes=inference_batch_sizes(config),
      seed=session_seed(config.seed, learner.update_step, config.process_index),
      batch_wait_ms=config.inference_batch_wait_ms,
      expected_requests=config.num_actor_threads, initial_version=learner.update_step)
  actors = [actor_lib.Actor(i, env_config, server, assembler, config.unroll_length,
                            on_episode=episodes.put, make_env=make_env,
                            task=actor_lib.actor_task(config, i))
            for i, env_config in enumerate(actor_lib.env_configs(config, learner.update_step))]
  remote = None
  if config.remote_envs is not None:
    remote = env_server.make_env_server(config, spec, server, assembler, episodes.put,
                                        stop.is_set)

  def describe() -> str:
    text = f"{sum(a.is_alive() for a in actors)} of {len(actors)} actor threads alive"
    return text + (f", {remote.stats().hosts} env hosts connected" if remote else "")

  def start(stack: contextlib.ExitStack) -> None:
    server.start()
    stack.callback(server.close)
    if remote is not None:  # Closed before the inference server: streams end first.
      remote.start()
      stack.callback(remote.close)
    for actor in actors:
      actor.start()
    # Actors stop before the server: one blocked in `act` still gets its answer.
    stack.callback(threads.close_all, actors)

  batches = learner_loop.AssemblerSource(
      assembler, stop.is_set, [server, *actors],
      max_wait_seconds=60 * config.max_batch_wait_minutes, describe_sources=describe)
  phases = [("learner", batches.clock, 1), ("inference", server.clock, 1)]
  phases += [("actor", a.clock, len(actors)) for a in actors]
  return Acting(batches, server.update_params,
                functools.partial(_local_gauges, server, assembler, remote), phases, start,
                end_run=remote.say_goodbye if remote is not None else lambda: None)


def store_acting(config: config_lib.TrainConfig, spec: envs.EnvSpec, network: Any,
                 learner: Any, store: trajectory_store.RedisStore,
                 episodes: "queue.SimpleQueue[types.EpisodeStats]",
                 stop: threading.Event) -> Acting:
  """Batches popped from a Redis store; parameters published to it."""
  lease = store_learner.LearnerLease(store)
  publisher = store_learner.StorePublisher(
      store, config.trajectory_store.publish_interval_seconds, stop.is_set,
      settings=learner_settings.encode(learner_settings.of_config(config)))
  batches = store_learner.StoreBatchSource(
      config, store, spec, network.initial_state(1),
      current_version=lambda: learner.update_step, stop_requested=stop.is_set,
      workers=[lease], on_episode=episodes.put, on_wait=publisher.flush)

  def gauges() -> Dict[str, Any]:
    values = dict(stale_unrolls=batches.stale, rejected_blobs=batches.rejected,
                  value_violations=batches.violations.total,
                  evicted_hosts=batches.violations.evicted,
                  evicted_blobs=batches.evicted_blobs,
                  bytes_per_unroll=batches.bytes_received / max(batches.unrolls_received, 1))
    try:
      stats = store.stats()
      values.update(store_length=stats.length, store_dropped=stats.dropped,
                    store_memory_mb=stats.used_memory_mb)
    except trajectory_store.StoreUnavailable:
      pass  # Redis restarting: the next row has them again.
    return values

  def start(stack: contextlib.ExitStack) -> None:
    stack.callback(store.close)
    if not lease.acquire(stop.is_set, wait_seconds=store_learner.LEASE_SECONDS + 5):
      return  # Stopped while waiting; the loop's first batch request sees the stop.
    lease.start()
    stack.callback(lease.close)
    trajectory_store.retrying(store.begin_run, stop.is_set, "starting the run")
    # Actor hosts wait for the settings and parameters: the learner's current ones.
    publisher.publish(learner.params(), learner.update_step, force=True)

  def end_run() -> None:
    try:
      store.mark_run_ended()
    except trajectory_store.StoreUnavailable as e:  # The hosts find the learner gone instead.
      logging.warning("Could not tell the actor hosts that the run has ended: %s", e)

  return Acting(batches, publisher.publish, gauges, [("learner", batches.clock, 1)],
                start, end_run=end_run)
