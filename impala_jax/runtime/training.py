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
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from absl import logging
import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.distributed import env_server
from impala_jax.distributed import multihost
from impala_jax.distributed import peer_loss
from impala_jax.distributed import trajectory_store
from impala_jax.learning import learner as learner_lib
from impala_jax.learning import optimizers
from impala_jax.rl import corrections
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import learner_loop
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import publishing
from impala_jax.runtime import score_check
from impala_jax.runtime import signals
from impala_jax.runtime import sources
from impala_jax.runtime import telemetry as telemetry_lib


class RunSummary(NamedTuple):
  env_steps: int
  updates: int
  wall_seconds: float
  steps_per_second: float  # agent steps consumed by the learner per second, this session
  episode_returns: List[float]  # real scores of all episodes finished this session, in order
  stop_reason: str  # "completed" | "signal" | "score_reached"


def make_learner(network: Any, params: Any,
                 config: config_lib.TrainConfig) -> learner_lib.Learner:
  """A run's learner: `config`'s objective, optimizer and minibatches, for `network` (an
  `ImpalaNetwork`, or anything with its `apply` and `convolutional`) from `params`."""
  return learner_lib.Learner(
      network.apply, params,
      optimizers.make_optimizer(config.optimizer, config.anneal_optimizer_steps), config.loss,
      num_epochs=config.num_epochs, num_minibatches=config.num_minibatches, seed=config.seed,
      unroll_steps=network.convolutional, popart=config.popart)


class TrainingRun:
  """One training run from a `TrainConfig`: `run()` trains until done, stopped or failed."""

  def __init__(self, config: config_lib.TrainConfig, show_progress: bool = True):
    """Checks everything that can be checked before training starts.

    Raises:
      ValueError: an unknown environment id, a network that doesn't fit the task, a
        correction that doesn't fit its actions ("epsilon" for continuous ones), a batch that
        doesn't split over the local devices, or a logdir holding another run's checkpoints
        without `resume`.
    """
    self.config = config
    self._show_progress = show_progress
    self._stop = threading.Event()
    config.check_devices(jax.local_device_count())
    if config.num_processes > 1:  # Before any training collective: mismatches would hang one.
      multihost.check_same_config(config)
    if config.remote_envs is not None:  # Fail now, not when the first host connects.
      env_server.read_token(config.remote_envs)
      env_server.check_tls_files(config.remote_envs)
    self._store = None
    if config.trajectory_store is not None:  # A wrong password or URL fails here.
      self._store = trajectory_store.RedisStore(config.trajectory_store)
      self._store.check()
    self._spec = envs.env_spec(config.env)  # A multi-task run's: every game checked.
    _check_stop_score(config)
    self._network = networks.network_for_spec(config.network, self._spec,
                                              num_tasks=config.popart.network_tasks)
    # Only the environment knows its actions; the loss would refuse once traced, mid-run.
    corrections.check_action_space(config.loss.correction, self._spec.discrete)
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
    learner = make_learner(
        self._network, networks.init_params(self._network, self._spec, config.seed), config)
    outputs = _Outputs(config, primary=config.process_index == 0)
    start_steps, trained_seconds = self._restore(learner, outputs.checkpointer)
    env_steps = start_steps
    # A resumed run's clock continues from its checkpoint, so curves against wall time join up.
    start_time -= trained_seconds
    outputs.open_writers(start_steps)

    episodes: "queue.SimpleQueue[types.EpisodeStats]" = queue.SimpleQueue()
    if config.trajectory_store is not None:
      acting = sources.store_acting(config, self._spec, self._network, learner, self._store,
                                    episodes, self._stop)
    else:
      acting = sources.local_acting(config, self._spec, self._network, learner, episodes,
                                    self._stop)
    telemetry = telemetry_lib.Telemetry(
        config, writer=outputs.writer, episode_writer=outputs.episode_writer,
        episodes=episodes,
        phases=telemetry_lib.PhaseTimer([("learner", learner.clock, 1)] + acting.phases),
        gauges=lambda: dict(updates=learner.update_step, **acting.gauges()),
        env_steps=env_steps, start_time=start_time,
        show_progress=self._show_progress and outputs.primary)
    # Remote hosts' scores end the run only if the learner's own games confirm them.
    own_games = score_check.OwnGames(self._network, learner.params, config.env,
                                     num_games=telemetry_lib.RECENT_EPISODES)
    watchdog = (multihost.Watchdog(config.multihost.stall_timeout_seconds)
                if config.num_processes > 1 else None)
    loop = learner_loop.LearnerLoop(
        config, batches=acting.batches, learner=learner,
        publish=publishing.delayed(acting.publish, config.publish_delay_updates),
        telemetry=telemetry,
        checkpoints=outputs.schedule(learner, lambda: time.monotonic() - start_time),
        env_steps=env_steps,
        # Judged on the score process 0 logs; the loop's agreement stops the other processes.
        score_reached=lambda: outputs.primary and telemetry.score_reached(
            config.stop_at_score, confirm=own_games),
        **(dict(agree=multihost.StopAgreement(), after_update=watchdog.beat) if watchdog
           else {}))
    try:
      with signals.SignalStop(self._stop), contextlib.ExitStack() as threads:
        acting.start(threads)
        if watchdog is not None:
          threads.enter_context(watchdog)
        loop_start = time.monotonic()
        result = self._run_loop(loop)
        if result.stop_reason in _RUN_OVER:  # Not on a signal: a stopped run may resume.
          acting.end_run()
    finally:
      outputs.close()
    wall = time.monotonic() - loop_start
    return RunSummary(result.env_steps, learner.update_step, wall,
                      (result.env_steps - start_steps) / max(wall, 1e-9),
                      telemetry.episode_returns, result.stop_reason)

  def _run_loop(self, loop: learner_loop.LearnerLoop) -> learner_loop.LoopResult:
    """`loop.run()`; in a multi-process run, a collective whose peer is gone raises
    `peer_loss.PeerLostError`."""
    try:
      return loop.run()
    except Exception as e:  # pylint: disable=broad-except
      lost = peer_loss.as_peer_lost(e) if self.config.num_processes > 1 else None
      if lost is not None:
        raise lost from e
      raise

  def _restore(self, learner: learner_lib.Learner,
               checkpointer: Optional[checkpoint_lib.Checkpointer]) -> Tuple[int, float]:
    """The latest checkpoint on `--resume` (process 0 reads it), shared with every process.

    Returns the env steps and the training seconds (process 0's) the run starts from.
    """
    env_steps, trained_seconds = 0, 0.0
    if self.config.resume and checkpointer is not None:
      latest = checkpointer.latest_step()
      if latest is None:
        logging.warning("--resume: no checkpoint in %s, starting from scratch.",
                        checkpointer.directory)
      else:
        state, metadata = checkpointer.restore(learner.state())
        learner.restore(state)
        env_steps = int(metadata["env_steps"])
        trained_seconds = float(metadata.get("wall_seconds", 0.0))  # Older checkpoints: none.
        logging.info("Resumed from update %d (%d env steps).", latest, env_steps)
    if self.config.num_processes > 1:
      # Every process starts from process 0's state (restored, or its initialisation).
      state, steps = multihost.broadcast_from_primary((learner.state(), np.int64(env_steps)))
      learner.restore(state)
      env_steps = int(steps)
    return env_steps, trained_seconds


def _check_stop_score(config: config_lib.TrainConfig) -> None:
  """A multi-task run's `--stop_at_score` is a median human-normalised score
  (`runtime.telemetry`): every game needs reference scores."""
  if config.stop_at_score is None or not config.env.multi_task:
    return
  unscored = [task for task in config.env.tasks
              if envs.atari_scores.reference_scores(task) is None]
  if unscored:
    raise ValueError(
        f"--stop_at_score with several games is their median human-normalised score, and "
        f"{', '.join(unscored)} has no reference scores (not one of the Atari-57 games: "
        "envs/atari_scores.py); leave --stop_at_score unset for this run.")


# The stop reasons that end a run for good: its hosts are told (`sources.Acting.end_run`).
_RUN_OVER = ("completed", "score_reached")


class _Outputs:
  """What a run writes: metrics, episodes, checkpoints, config.json (process 0 only)."""

  def __init__(self, config: config_lib.TrainConfig, primary: bool):
    self._config = config
    self.primary = primary
    if primary:
      os.makedirs(config.logdir, exist_ok=True)
      with open(os.path.join(config.logdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
      self.checkpointer = checkpoint_lib.Checkpointer(os.path.join(config.logdir,
                                                                   "checkpoints"))
    else:
      self.checkpointer = None
    self.writer = metrics_lib.NullWriter()
    self.episode_writer = metrics_lib.NullWriter()

  def open_writers(self, start_steps: int) -> None:
    """Opens metrics.csv, episodes.csv and TensorBoard once the starting step is known."""
    if self.primary:
      self.writer = metrics_lib.MetricsWriter(self._config.logdir, start_steps)
      self.episode_writer = metrics_lib.EpisodeWriter(self._config.logdir, start_steps,
                                                      games=self._config.env.tasks)

  def schedule(self, learner, elapsed_seconds: Callable[[], float]) -> Any:
    if self.checkpointer is None:
      return checkpoint_lib.NoCheckpoints()
    return checkpoint_lib.CheckpointSchedule(
        self.checkpointer, learner, self._config.checkpoint_interval_minutes,
        {"seed": self._config.seed, "config": dataclasses.asdict(self._config)},
        elapsed_seconds)

  def close(self) -> None:
    self.writer.close()
    self.episode_writer.close()
    if self.checkpointer is not None:
      self.checkpointer.close()


def train(config: config_lib.TrainConfig, show_progress: bool = True) -> RunSummary:
  """Runs training to completion (or until SIGINT/SIGTERM); see `TrainingRun`."""
  return TrainingRun(config, show_progress).run()
