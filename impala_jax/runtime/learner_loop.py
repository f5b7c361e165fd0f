"""The learner loop, read as the algorithm: get a batch → update → publish → record → checkpoint.

Everything around it is injected, so that each piece can be swapped (a Redis store instead of
the local queue, several publishers) or faked in a test:

  batches      `BatchSource.next_batch()`: a list of unrolls, or None when the run must stop
  learner      `learning.Learner` (`step`, `params`, `update_step`)
  publish      `publish(params, version)`: hands new parameters to whoever acts
  telemetry    `Telemetry.record(metrics, env_steps)`: rows, progress bar, phase timings
  checkpoints  `CheckpointSchedule.maybe_save(env_steps)` / `save(env_steps)`
"""

import queue
import time
from typing import Any, Callable, Iterable, List, NamedTuple, Optional, Protocol, Tuple

from absl import logging

from impala_jax import stage_clock
from impala_jax import types
from impala_jax.runtime import worker

_POLL_SECONDS = 0.1
_WAITING_LOG_SECONDS = 30.0


class BatchSource(Protocol):

  def next_batch(self) -> Optional[List[types.Unroll]]:
    """`batch_size` unrolls, or None when the run is asked to stop; raises if acting failed."""


class LoopResult(NamedTuple):
  env_steps: int
  stop_reason: str  # "completed" | "signal" | "score_reached"


class UnrollQueueSource:
  """Batches from the bounded actor→learner queue, checking the actors' health while waiting.

  Args:
    unroll_queue: where actors put single unrolls.
    batch_size: unrolls per batch.
    stop_requested: returns True once the run should stop (checked every poll).
    workers: the threads that feed the queue; a dead one raises (`worker.raise_if_failed`).
  """

  def __init__(self, unroll_queue: "queue.Queue[types.Unroll]", batch_size: int,
               stop_requested: Callable[[], bool], workers: Iterable[worker.Worker],
               max_wait_seconds: float = 600.0,
               describe_sources: Callable[[], str] = lambda: "no source described"):
    self._queue = unroll_queue
    self._batch_size = batch_size
    self._stop_requested = stop_requested
    self._workers = list(workers)
    self._max_wait_seconds = max_wait_seconds
    self._describe_sources = describe_sources
    self.clock = stage_clock.StageClock(("batch_wait",))  # Waiting for unrolls.

  @property
  def seconds(self):
    return self.clock.wall

  def next_batch(self) -> Optional[List[types.Unroll]]:
    self.clock.restart()
    start = time.perf_counter()
    last_unroll = last_warning = start
    try:
      unrolls = []
      while len(unrolls) < self._batch_size:
        if self._stop_requested():
          return None
        try:
          unrolls.append(self._queue.get(timeout=_POLL_SECONDS))
          last_unroll = time.perf_counter()
        except queue.Empty:
          worker.raise_if_failed(self._workers)
          now = time.perf_counter()
          if now - last_unroll > self._max_wait_seconds:
            raise TimeoutError(
                f"No unroll arrived for {self._max_wait_seconds:.0f} s "
                f"({self._describe_sources()}); stopping.")
          if now - last_warning > _WAITING_LOG_SECONDS:
            last_warning = now
            logging.warning("Waiting for unrolls: %d of %d for this batch (%s).",
                            len(unrolls), self._batch_size, self._describe_sources())
      return unrolls
    finally:
      self.clock.lap("batch_wait")


# What a process reports before each update (`agree`), in order of severity: go on, stop (the
# target score is reached), stop (asked to), or failed.
CONTINUE, SCORE_REACHED, STOP, FAILED = 0, 1, 2, 3
_STOP_REASONS = {SCORE_REACHED: "score_reached", STOP: "signal"}


def _alone(code: int) -> Tuple[int, int]:
  """The single-process agreement: this process decides alone (it is process 0)."""
  return code, 0


class LearnerLoop:
  """Runs updates until `total_env_steps` agent steps are consumed, `score_reached()` says the
  run has reached its target score, or the source says stop.

  `agree(code) -> (code, process)` makes the decision to go on collective in a multi-process
  learner (`distributed.multihost.StopAgreement`): every process reports CONTINUE,
  SCORE_REACHED, STOP or FAILED before each update and all act on the most severe, so none is
  left waiting in an update's all-reduce that the others never join. `after_update()` is
  called after each one (the multi-process watchdog's heartbeat).
  """

  def __init__(self, *, batches: BatchSource, learner: Any,
               publish: Callable[[Any, int], None], telemetry: Any, checkpoints: Any,
               steps_per_update: int, total_env_steps: int, env_steps: int = 0,
               agree: Callable[[int], Tuple[int, int]] = _alone,
               after_update: Callable[[], None] = lambda: None,
               score_reached: Callable[[], bool] = lambda: False):
    self._agree = agree
    self._score_reached = score_reached
    self._after_update = after_update
    self._batches = batches
    self._learner = learner
    self._publish = publish
    self._telemetry = telemetry
    self._checkpoints = checkpoints
    self._steps_per_update = steps_per_update
    self._total_env_steps = total_env_steps
    self.env_steps = env_steps

  def run(self) -> LoopResult:
    """The loop. Always writes a final checkpoint, also when an update fails."""
    stop_reason = "completed"
    try:
      while self.env_steps < self._total_env_steps:
        unrolls, code = self._next_batch()
        if unrolls is None:
          stop_reason = _STOP_REASONS[code]
          break
        metrics = self._update(unrolls)
        self.env_steps += self._steps_per_update
        self._publish(self._learner.params(), self._learner.update_step)
        self._telemetry.record(metrics, self.env_steps)
        self._checkpoints.maybe_save(self.env_steps)
        self._after_update()
    finally:
      self._telemetry.flush(self.env_steps)
      # Save what can be saved: the learner never holds a non-finite state (learning.update).
      self._checkpoints.save(self.env_steps)
    return LoopResult(self.env_steps, stop_reason)

  def _next_batch(self) -> Tuple[Optional[List[types.Unroll]], int]:
    """(the next batch, CONTINUE) if every process has one; (None, the agreed code) if one
    reached the target score or was asked to stop; raises if one failed (this process's own
    error, or one that names the process that failed)."""
    failure, unrolls = None, None
    if self._score_reached():  # Process 0's score (its telemetry) ends every process's run.
      code = SCORE_REACHED
    else:
      try:
        unrolls = self._batches.next_batch()
      except Exception as e:  # pylint: disable=broad-except
        failure = e
      code = FAILED if failure else (STOP if unrolls is None else CONTINUE)
    agreed, origin = self._agree(code)
    if failure is not None:
      raise failure
    if agreed == FAILED:
      raise RuntimeError(f"Process {origin} failed (see its log); every process stops.")
    return (unrolls, agreed) if agreed == CONTINUE else (None, agreed)

  def _update(self, unrolls: List[types.Unroll]):
    version_before = self._learner.update_step
    metrics = self._learner.step(unrolls)
    if not metrics["finite"]:
      raise FloatingPointError(
          f"The loss or gradients became non-finite at update {version_before} "
          f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); the update was not "
          "applied and the last good state is saved. Try a lower --learning_rate.")
    # The age of the data: updates between the acting parameters and this update's.
    metrics["policy_lag"] = version_before - metrics.pop("policy_version_mean")
    return metrics
