"""One training run: builds the components from a `TrainConfig`, owns every thread, runs the loop.

    EnvPool ─▶ Actor threads ─▶ InferenceServer (one batched, jitted policy call)
                   │                     ▲
                   ▼                     │ parameters (atomic swap, versioned)
             unroll queue ─────▶ LearnerLoop ─▶ Learner (pmapped update) ─▶ checkpoints, metrics

The learner loop runs in the calling thread. SIGINT/SIGTERM (when called from the main thread)
ask it to stop; it then writes a final checkpoint and joins every thread. A dead actor or
inference thread, or a non-finite loss, stops the run with an exception that names the cause,
after saving the last good state.
"""

import contextlib
import dataclasses
import json
import os
import queue
import threading
import time
from typing import Any, Dict, List, NamedTuple

from absl import logging
import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.acting import actor as actor_lib
from impala_jax.acting import inference
from impala_jax.distributed import env_server
from impala_jax.learning import learner as learner_lib
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import learner_loop
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import signals
from impala_jax.runtime import telemetry as telemetry_lib
from impala_jax.runtime import worker


class RunSummary(NamedTuple):
  env_steps: int
  updates: int
  wall_seconds: float
  steps_per_second: float  # agent steps consumed by the learner per second, this session
  episode_returns: List[float]  # real scores of all episodes finished this session, in order
  stop_reason: str  # "completed" | "signal"


def session_seed(seed: int, update_step: int) -> int:
  """The action-sampling seed of a session that starts at `update_step`.

  A resumed run must not replay the first session's action noise: (seed, update_step) seeds
  an independent stream (numpy's SeedSequence), equal to `seed`'s own for a fresh run.
  """
  if update_step == 0:
    return seed
  return int(np.random.SeedSequence([seed, update_step]).generate_state(1)[0])


def actor_env_configs(config: config_lib.TrainConfig,
                      update_step: int) -> List[config_lib.EnvConfig]:
  """One EnvConfig per actor thread, with seeds that never overlap.

  EnvPool seeds environment i of a pool with `seed + i`: thread k starts at
  `k · num_envs`, and a session resumed at update u starts at `u · total_envs`, so no two
  environments of any session of the run share a seed.
  """
  base = config.env.seed + config.total_envs * update_step
  return [dataclasses.replace(config.env, seed=base + k * config.env.num_envs)
          for k in range(config.num_actor_threads)]


class TrainingRun:
  """One training run from a `TrainConfig`: `run()` trains until done, stopped or failed."""

  def __init__(self, config: config_lib.TrainConfig, show_progress: bool = True):
    """Checks everything that can be checked before training starts.

    Raises:
      ValueError: an unknown environment id, a network that doesn't fit the task, a batch
        that doesn't split over the local devices, or a logdir holding another run's
        checkpoints without `resume`.
    """
    self.config = config
    self._show_progress = show_progress
    self._stop = threading.Event()
    config.check_devices(jax.local_device_count())
    if config.remote_envs is not None:  # Fail now, not when the first host connects.
      env_server.read_token(config.remote_envs)
      env_server.check_tls_files(config.remote_envs)
    self._spec = envs.env_spec(config.env)
    self._network = networks.network_for_spec(config.network, self._spec)
    checkpoint_dir = os.path.join(config.logdir, "checkpoints")
    if not config.resume and os.path.isdir(checkpoint_dir) and any(
        name.isdigit() for name in os.listdir(checkpoint_dir)):
      raise ValueError(
          f"{checkpoint_dir} already holds checkpoints; pass --resume to continue that run, "
          "or choose another --logdir.")

  def request_stop(self) -> None:
    """Asks the run to stop after the current update (thread-safe)."""
    self._stop.set()

  def run(self) -> RunSummary:
    config = self.config
    start_time = time.monotonic()
    os.makedirs(config.logdir, exist_ok=True)
    learner = learner_lib.Learner(
        self._network.apply, networks.init_params(self._network, self._spec, config.seed),
        config)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(config.logdir, "checkpoints"))
    start_steps = env_steps = self._maybe_restore(learner, checkpointer)
    with open(os.path.join(config.logdir, "config.json"), "w") as f:
      json.dump(dataclasses.asdict(config), f, indent=2)

    episodes: "queue.SimpleQueue[types.EpisodeStats]" = queue.SimpleQueue()
    unroll_queue: "queue.Queue[types.Unroll]" = queue.Queue(maxsize=config.unroll_queue_capacity)
    server = self._inference_server(learner)
    actors = [
        actor_lib.Actor(i, env_config, server, unroll_queue, config.unroll_length,
                        on_episode=episodes.put)
        for i, env_config in enumerate(actor_env_configs(config, learner.update_step))]
    remote = None
    if config.remote_envs is not None:
      remote = env_server.make_env_server(config, self._spec, server, unroll_queue,
                                          episodes.put, self._stop.is_set)
    batches = learner_loop.UnrollQueueSource(
        unroll_queue, config.batch_size, self._stop.is_set, [server, *actors],
        max_wait_seconds=60 * config.max_batch_wait_minutes,
        describe_sources=lambda: _describe_sources(actors, remote))
    writer = metrics_lib.MetricsWriter(config.logdir)
    episode_writer = metrics_lib.EpisodeWriter(config.logdir)
    telemetry = telemetry_lib.Telemetry(
        writer, episode_writer=episode_writer, episodes=episodes,
        phases=telemetry_lib.PhaseTimer(
            [("learner", lambda: learner.seconds, 1), ("learner", lambda: batches.seconds, 1)] +
            [("actor", lambda a=a: a.seconds, len(actors)) for a in actors]),
        gauges=lambda: _gauges(learner, server, unroll_queue, remote),
        log_interval_seconds=config.log_interval_seconds,
        total_env_steps=config.total_env_steps, env_steps=env_steps, start_time=start_time,
        show_progress=self._show_progress)
    loop = learner_loop.LearnerLoop(
        batches=batches, learner=learner, publish=server.update_params, telemetry=telemetry,
        checkpoints=checkpoint_lib.CheckpointSchedule(
            checkpointer, learner, config.checkpoint_interval_minutes,
            {"seed": config.seed, "config": dataclasses.asdict(config)}),
        steps_per_update=config.steps_per_update, total_env_steps=config.total_env_steps,
        env_steps=env_steps)
    try:
      with signals.SignalStop(self._stop), contextlib.ExitStack() as threads:
        server.start()
        threads.callback(server.close)
        if remote is not None:  # Closed before the inference server: streams end first.
          remote.start()
          threads.callback(remote.close)
        for actor in actors:
          actor.start()
        # Actors stop before the server: one blocked in `act` still gets its answer.
        threads.callback(worker.close_all, actors)
        loop_start = time.monotonic()
        result = loop.run()
    finally:
      writer.close()
      episode_writer.close()
      checkpointer.close()
    wall = time.monotonic() - loop_start
    return RunSummary(result.env_steps, learner.update_step, wall,
                      (result.env_steps - start_steps) / max(wall, 1e-9),
                      telemetry.episode_returns, result.stop_reason)

  def _inference_server(self, learner: learner_lib.Learner) -> inference.InferenceServer:
    config = self.config
    return inference.InferenceServer(
        self._network.apply, learner.params(), self._network.initial_state(1),
        num_envs=config.inference_envs, batch_sizes=inference_batch_sizes(config),
        seed=session_seed(config.seed, learner.update_step),
        batch_wait_ms=config.inference_batch_wait_ms,
        expected_requests=config.num_actor_threads,
        initial_version=learner.update_step)

  def _maybe_restore(self, learner: learner_lib.Learner,
                     checkpointer: checkpoint_lib.Checkpointer) -> int:
    latest = checkpointer.latest_step()
    if not self.config.resume:
      return 0
    if latest is None:
      logging.warning("--resume: no checkpoint in %s, starting from scratch.",
                      checkpointer.directory)
      return 0
    state, metadata = checkpointer.restore(learner.state())
    learner.restore(state)
    logging.info("Resumed from update %d (%d env steps).", latest, metadata["env_steps"])
    return int(metadata["env_steps"])


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


def _describe_sources(actors, remote) -> str:
  alive = sum(a.is_alive() for a in actors)
  text = f"{alive} of {len(actors)} actor threads alive"
  if remote is not None:
    text += f", {remote.stats().hosts} env hosts connected"
  return text


def _gauges(learner: learner_lib.Learner, server: inference.InferenceServer,
            unroll_queue: "queue.Queue", remote) -> Dict[str, Any]:
  stats = server.stats()
  gauges = dict(updates=learner.update_step, queue_size=unroll_queue.qsize(),
                inference_batch_size=stats.mean_batch_size,
                inference_requests_per_batch=stats.mean_requests_per_batch,
                inference_latency_ms=stats.mean_latency_ms)
  if remote is not None:
    hosts = remote.stats()
    gauges.update(remote_hosts=hosts.hosts, remote_envs=hosts.remote_envs,
                  remote_env_steps=hosts.remote_env_steps,
                  rejected_messages=hosts.rejected, evicted_hosts=hosts.evicted)
  return gauges


def train(config: config_lib.TrainConfig, show_progress: bool = True) -> RunSummary:
  """Runs training to completion (or until SIGINT/SIGTERM); see `TrainingRun`."""
  return TrainingRun(config, show_progress).run()
