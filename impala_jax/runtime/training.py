"""One training run: builds the components from a `TrainConfig`, owns every thread, runs the loop.

    EnvPool ─▶ Actor threads ─▶ InferenceServer (one batched, jitted policy call)
                   │                     ▲
                   ▼                     │ parameters (atomic swap, versioned)
             unroll queue ─────▶ LearnerLoop ─▶ Learner (pmapped update) ─▶ checkpoints, metrics

(or, with a trajectory store, Redis in place of the actors and the queue: `runtime.sources`).

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
from typing import List, NamedTuple

from absl import logging
import jax

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.distributed import env_server
from impala_jax.distributed import trajectory_store
from impala_jax.learning import learner as learner_lib
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import learner_loop
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import signals
from impala_jax.runtime import sources
from impala_jax.runtime import telemetry as telemetry_lib


class RunSummary(NamedTuple):
  env_steps: int
  updates: int
  wall_seconds: float
  steps_per_second: float  # agent steps consumed by the learner per second, this session
  episode_returns: List[float]  # real scores of all episodes finished this session, in order
  stop_reason: str  # "completed" | "signal"


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
    self._store = None
    if config.trajectory_store is not None:  # A wrong password or URL fails here.
      self._store = trajectory_store.RedisStore(config.trajectory_store)
      self._store.check()
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
    if config.trajectory_store is not None:
      acting = sources.store_acting(config, self._spec, self._network, learner, self._store,
                                    episodes, self._stop)
    else:
      acting = sources.local_acting(config, self._spec, self._network, learner, episodes,
                                    self._stop)
    writer = metrics_lib.MetricsWriter(config.logdir)
    episode_writer = metrics_lib.EpisodeWriter(config.logdir)
    telemetry = telemetry_lib.Telemetry(
        writer, episode_writer=episode_writer, episodes=episodes,
        phases=telemetry_lib.PhaseTimer([("learner", lambda: learner.seconds, 1)] +
                                        acting.phases),
        gauges=lambda: dict(updates=learner.update_step, **acting.gauges()),
        log_interval_seconds=config.log_interval_seconds,
        total_env_steps=config.total_env_steps, env_steps=env_steps, start_time=start_time,
        show_progress=self._show_progress,
        score_to_hns=envs.atari_scores.normalizer(config.env.env_id))
    loop = learner_loop.LearnerLoop(
        batches=acting.batches, learner=learner, publish=acting.publish, telemetry=telemetry,
        checkpoints=checkpoint_lib.CheckpointSchedule(
            checkpointer, learner, config.checkpoint_interval_minutes,
            {"seed": config.seed, "config": dataclasses.asdict(config)}),
        steps_per_update=config.steps_per_update, total_env_steps=config.total_env_steps,
        env_steps=env_steps)
    try:
      with signals.SignalStop(self._stop), contextlib.ExitStack() as threads:
        acting.start(threads)
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


def train(config: config_lib.TrainConfig, show_progress: bool = True) -> RunSummary:
  """Runs training to completion (or until SIGINT/SIGTERM); see `TrainingRun`."""
  return TrainingRun(config, show_progress).run()
