"""Builds the components of a run, owns every thread, and runs the learner loop.

    EnvPool ─▶ Actor threads ─▶ InferenceServer (one batched, jitted policy call)
                   │                     ▲
                   ▼                     │ parameters (atomic swap, versioned)
             unroll queue ─────▶ Learner (pmapped V-trace update) ─▶ checkpoints, metrics

The learner loop runs in the calling thread. SIGINT/SIGTERM (when called from the main thread)
ask it to stop; it then writes a final checkpoint and joins every thread. A dead actor or
inference thread, or a non-finite loss, stops the run with an exception that names the cause,
after saving the last good state.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

from absl import logging
import jax
import numpy as np
import psutil
import tqdm

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.acting import actor as actor_lib
from impala_jax.acting import inference
from impala_jax.learning import learner as learner_lib
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import metrics as metrics_lib

_POLL_SECONDS = 0.1


class RunSummary(NamedTuple):
  env_steps: int
  updates: int
  wall_seconds: float
  steps_per_second: float  # agent steps consumed by the learner per second, this session
  episode_returns: List[float]  # real scores of all episodes finished this session, in order
  stop_reason: str  # "completed" | "signal" | "stop_requested"


def _close_all(workers) -> None:
  for w in workers:
    w.request_stop()
  for w in workers:
    w.close()


class _SignalStop:
  """Turns SIGINT/SIGTERM into a stop request while active (main thread only)."""

  def __init__(self, event: threading.Event):
    self._event = event
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after the current update.",
                    signal.Signals(signum).name)
    self._event.set()

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


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
    spec, network = self._spec, self._network
    learner = learner_lib.Learner(network.apply, networks.init_params(network, spec, config.seed), config)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(config.logdir, "checkpoints"))
    env_steps = self._maybe_restore(learner, checkpointer)
    with open(os.path.join(config.logdir, "config.json"), "w") as f:
      json.dump(dataclasses.asdict(config), f, indent=2)

    episodes: "queue.SimpleQueue[types.EpisodeStats]" = queue.SimpleQueue()
    unroll_queue: "queue.Queue[types.Unroll]" = queue.Queue(maxsize=config.unroll_queue_capacity)
    recv_batch = config.env.recv_batch_size
    server = inference.InferenceServer(
        network.apply, learner.params(), network.initial_state(1),
        num_envs=config.total_envs,
        batch_sizes=[recv_batch * k for k in range(1, config.num_actor_threads + 1)],
        seed=config.seed + 7919 * learner.update_step,
        batch_wait_ms=config.inference_batch_wait_ms,
        expected_requests=config.num_actor_threads)
    server.update_params(learner.params(), learner.update_step)
    actors = [
        actor_lib.Actor(
            i,
            dataclasses.replace(
                config.env,
                seed=config.env.seed + config.total_envs * learner.update_step +
                i * config.env.num_envs),
            server, unroll_queue, config.unroll_length, on_episode=episodes.put)
        for i in range(config.num_actor_threads)
    ]
    writer = metrics_lib.MetricsWriter(config.logdir)
    loop = _LearnerLoop(config, learner, server, actors, unroll_queue, episodes, writer,
                        checkpointer, env_steps, self._stop, self._show_progress, start_time)
    try:
      with _SignalStop(self._stop), contextlib.ExitStack() as threads:
        server.start()
        threads.callback(server.close)
        for actor in actors:
          actor.start()
        # Actors stop before the server: one blocked in `act` still gets its answer. All are
        # told first, so they wind down together rather than one join at a time.
        threads.callback(_close_all, actors)
        return loop.run()
    finally:
      writer.close()
      checkpointer.close()

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


class _LearnerLoop:
  """The learner's side of the run: batches, updates, parameter publishing, logs, checkpoints."""

  def __init__(self, config, learner, server, actors, unroll_queue, episodes, writer,
               checkpointer, env_steps, stop, show_progress, start_time):
    self.config = config
    self.learner = learner
    self.server = server
    self.actors = actors
    self.unroll_queue = unroll_queue
    self.episodes = episodes
    self.writer = writer
    self.checkpointer = checkpointer
    self.env_steps = env_steps
    self.stop = stop
    self.show_progress = show_progress
    self.episode_returns: List[float] = []
    self.batch_wait_seconds = 0.0
    self.start_time = start_time  # When run() began: wall_seconds includes set-up.
    self._last_seconds = self._phase_seconds()

  def run(self) -> RunSummary:
    config = self.config
    start = time.monotonic()
    start_steps = self.env_steps
    last_checkpoint = start
    window = _Window(self.env_steps)
    bar = tqdm.tqdm(total=config.total_env_steps, initial=self.env_steps, unit="step",
                    disable=not self.show_progress, dynamic_ncols=True, smoothing=0.1)
    stop_reason = "completed"
    try:
      while self.env_steps < config.total_env_steps:
        wait_start = time.perf_counter()
        unrolls = self._next_batch()
        self.batch_wait_seconds += time.perf_counter() - wait_start
        if unrolls is None:
          stop_reason = "signal"
          break
        version_before = self.learner.update_step
        metrics = self.learner.step(unrolls)
        if not metrics["finite"]:
          raise FloatingPointError(
              f"The loss or gradients became non-finite at update {version_before} "
              f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); the update was not "
              "applied and the last good state is saved. Try a lower --learning_rate.")
        metrics["policy_lag"] = version_before - metrics.pop("policy_version_mean")
        self.env_steps += config.steps_per_update
        self.server.update_params(self.learner.params(), version_before + 1)
        window.add_update(metrics)
        bar.update(config.steps_per_update)

        now = time.monotonic()
        if now - window.start >= config.log_interval_seconds:
          self._log(window, bar)
          window = _Window(self.env_steps)
        if now - last_checkpoint >= 60 * config.checkpoint_interval_minutes:
          self._save()
          last_checkpoint = now
      if window.updates:
        self._log(window, bar)
    finally:
      bar.close()
      # Save what can be saved: the learner never holds a non-finite state (see learner.py).
      self._save()
    wall = time.monotonic() - start
    return RunSummary(self.env_steps, self.learner.update_step, wall,
                      (self.env_steps - start_steps) / max(wall, 1e-9), self.episode_returns,
                      stop_reason)

  def _next_batch(self) -> Optional[List[types.Unroll]]:
    """batch_size unrolls from the queue, or None when asked to stop; raises if a thread died."""
    unrolls = []
    while len(unrolls) < self.config.batch_size:
      if self.stop.is_set():
        return None
      try:
        unrolls.append(self.unroll_queue.get(timeout=_POLL_SECONDS))
      except queue.Empty:
        self._check_threads()
    return unrolls

  def _check_threads(self) -> None:
    if self.server.error is not None:
      raise RuntimeError(f"The inference server failed: {self.server.error!r}") \
          from self.server.error
    for actor in self.actors:
      if actor.error is not None:
        raise RuntimeError(f"Actor thread {actor.name} died: {actor.error!r}") from actor.error
      if not actor.is_alive():
        raise RuntimeError(f"Actor thread {actor.name} stopped unexpectedly.")

  def _drain_episodes(self) -> List[types.EpisodeStats]:
    finished = []
    while True:
      try:
        finished.append(self.episodes.get_nowait())
      except queue.Empty:
        return finished

  def _log(self, window: "_Window", bar) -> None:
    finished = self._drain_episodes()
    self.episode_returns.extend(e.episode_return for e in finished)
    elapsed = max(time.monotonic() - window.start, 1e-9)
    inference_stats = self.server.stats()
    row: Dict[str, Any] = {k: v / window.updates for k, v in window.sums.items()}
    row.update(
        env_steps=self.env_steps,
        wall_seconds=time.monotonic() - self.start_time,
        episode_return=(float(np.mean([e.episode_return for e in finished]))
                        if finished else None),
        episode_length=(float(np.mean([e.episode_length for e in finished]))
                        if finished else None),
        episodes=len(finished),
        steps_per_second=(self.env_steps - window.start_steps) / elapsed,
        updates=self.learner.update_step,
        queue_size=self.unroll_queue.qsize(),
        inference_batch_size=inference_stats.mean_batch_size,
        inference_requests_per_batch=inference_stats.mean_requests_per_batch,
        inference_latency_ms=inference_stats.mean_latency_ms,
        rss_mb=psutil.Process().memory_info().rss / 2**20)
    row.update(self._time_fractions(elapsed))
    self.writer.write(row)
    summary = (f"steps={self.env_steps} return={row['episode_return'] or float('nan'):.2f} "
               f"sps={row['steps_per_second']:.0f} loss={row.get('loss', math.nan):.3f} "
               f"lag={row.get('policy_lag', math.nan):.2f}")
    if self.show_progress:
      bar.set_postfix_str(summary.split(" ", 1)[1])
    else:  # One line per row; with a bar, its postfix says the same without breaking it up.
      logging.info(summary)

  def _phase_seconds(self) -> Dict[str, float]:
    seconds = {f"learner_{k}": v for k, v in self.learner.seconds.items()}
    seconds["learner_batch_wait"] = self.batch_wait_seconds
    for actor in self.actors:
      for k, v in actor.seconds.items():
        seconds[f"actor_{k}"] = seconds.get(f"actor_{k}", 0.0) + v
    return seconds

  def _time_fractions(self, elapsed: float) -> Dict[str, float]:
    """Where the time went since the last row, as fractions of each thread's wall time."""
    now = self._phase_seconds()
    fractions = {}
    for k, v in now.items():
      threads = len(self.actors) if k.startswith("actor_") else 1
      fractions[f"time_{k}"] = (v - self._last_seconds.get(k, 0.0)) / (elapsed * threads)
    self._last_seconds = now
    return fractions

  def _save(self) -> None:
    step = self.learner.update_step
    if step == 0:
      return
    self.checkpointer.save(step, self.learner.state(), {
        "env_steps": self.env_steps,
        "update_step": step,
        "seed": self.config.seed,
        "config": dataclasses.asdict(self.config),
    })
    logging.info("Checkpoint at update %d (%d env steps) in %s.", step, self.env_steps,
                 self.checkpointer.directory)


class _Window:
  """Sums of per-update metrics between two log rows."""

  def __init__(self, start_steps: int):
    self.start = time.monotonic()
    self.start_steps = start_steps
    self.updates = 0
    self.sums: Dict[str, float] = collections.defaultdict(float)

  def add_update(self, metrics: Dict[str, float]) -> None:
    self.updates += 1
    for k, v in metrics.items():
      self.sums[k] += v


def train(config: config_lib.TrainConfig, show_progress: bool = True) -> RunSummary:
  """Runs training to completion (or until SIGINT/SIGTERM); see `TrainingRun`."""
  return TrainingRun(config, show_progress).run()
