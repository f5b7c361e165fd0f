"""The learner loop, read as the algorithm: get a batch → update → publish → record → checkpoint.

Everything around it is injected, so that each piece can be swapped (a Redis store instead of
the local actors, several publishers) or faked in a test:

  batches      `BatchSource.next_batch()`: a `types.HostBatch`, or None when the run must stop
  learner      `learning.Learner` (`transfer`, `dispatch`, `finish`, `params`, `update_step`,
               `sends_ahead`)
  publish      `publish(params, version)`: hands new parameters to whoever acts
  telemetry    `Telemetry.record(metrics, env_steps)`: rows, progress bar, phase timings
  checkpoints  `CheckpointSchedule.maybe_save(env_steps)` / `save(env_steps)`
"""

import time
from typing import Any, Callable, Iterable, NamedTuple, Optional, Protocol, Tuple

from absl import logging
import jax

from impala_jax import config as config_lib
from impala_jax import stage_clock
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import batch_assembler
from impala_jax.envs import value_checks

_POLL_SECONDS = 0.1
_WAITING_LOG_SECONDS = 30.0


class BatchSource(Protocol):

  def next_batch(self) -> Optional[types.HostBatch]:
    """A batch of `batch_size` unrolls, or None when the run is asked to stop; raises if acting
    failed."""


class LoopResult(NamedTuple):
  env_steps: int
  stop_reason: str  # "completed" | "signal" | "score_reached"


class AssemblerSource:
  """Batches from the actors' `BatchAssembler`, checking the actors' health while waiting.

  Args:
    assembler: where actors (and env hosts) hand over complete unrolls.
    stop_requested: returns True once the run should stop (checked every poll).
    workers: the threads that feed it; a dead one raises (`threads.raise_if_failed`).
    max_wait_seconds: raise when no unroll has arrived for this long.
    describe_sources: what feeds it, for the waiting and timeout messages.
  """

  def __init__(self, assembler: batch_assembler.BatchAssembler,
               stop_requested: Callable[[], bool], workers: Iterable[threads.Worker],
               max_wait_seconds: float = 600.0,
               describe_sources: Callable[[], str] = lambda: "no source described"):
    self._assembler = assembler
    self._stop_requested = stop_requested
    self._workers = list(workers)
    self._max_wait_seconds = max_wait_seconds
    self._describe_sources = describe_sources
    self.clock = stage_clock.StageClock(("batch_wait",))  # Waiting for unrolls.

  def next_batch(self) -> Optional[types.HostBatch]:
    self.clock.restart()
    last_progress = last_warning = time.perf_counter()
    queued = self._assembler.queued_unrolls()
    try:
      while not self._stop_requested():
        batch = self._assembler.get(timeout=_POLL_SECONDS)
        if batch is not None:
          return batch
        threads.raise_if_failed(self._workers)
        now = time.perf_counter()
        if self._assembler.queued_unrolls() != queued:  # Unrolls still arrive.
          queued, last_progress = self._assembler.queued_unrolls(), now
        if now - last_progress > self._max_wait_seconds:
          raise TimeoutError(
              f"No unroll arrived for {self._max_wait_seconds:.0f} s "
              f"({self._describe_sources()}); stopping.")
        if now - last_warning > _WAITING_LOG_SECONDS:
          last_warning = now
          logging.warning("Waiting for unrolls: %d of %d for this batch (%s).", queued,
                          self._assembler.batch_size, self._describe_sources())
      return None
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

  def __init__(self, config: config_lib.TrainConfig, *, batches: BatchSource, learner: Any,
               publish: Callable[[Any, int], None], telemetry: Any, checkpoints: Any,
               env_steps: int = 0, agree: Callable[[int], Tuple[int, int]] = _alone,
               after_update: Callable[[], None] = lambda: None,
               score_reached: Callable[[], bool] = lambda: False):
    """`config`: its `steps_per_update` and `total_env_steps`; `env_steps`: where the run starts
    (a resumed run's checkpoint)."""
    self._agree = agree
    self._score_reached = score_reached
    self._after_update = after_update
    self._batches = batches
    self._learner = learner
    self._publish = publish
    self._telemetry = telemetry
    self._checkpoints = checkpoints
    self._steps_per_update = config.steps_per_update
    self._total_env_steps = config.total_env_steps
    self.env_steps = env_steps

  def run(self) -> LoopResult:
    """The loop. Always writes a final checkpoint, also when an update fails.

    With a learner that `sends_ahead` (an accelerator's), the next batch is taken and sent to
    the devices while update k runs, so they wait neither for the host's copy nor for the queue
    when data is ready; its data is then one update older. Else the next batch is taken once
    update k's parameters are published, as fresh as the actors can make it. Parameters are
    published once their update has finished: the inference server never waits on one.
    """
    code = CONTINUE
    ahead = in_flight = None
    send_ahead = self._learner.sends_ahead
    try:
      if self.env_steps < self._total_env_steps:
        ahead, code = self._take_batch()
      while ahead is not None:
        (batch, device_batch), ahead = ahead, None
        version_before = self._learner.update_step
        in_flight = (batch, self._learner.dispatch(device_batch))
        more = self.env_steps + self._steps_per_update < self._total_env_steps
        if more and send_ahead:
          ahead, code = self._take_batch()
        metrics = self._finish(in_flight[1], version_before, batch)
        in_flight[0].release()
        in_flight = None
        self.env_steps += self._steps_per_update
        self._publish(self._learner.params(), self._learner.update_step)
        self._telemetry.record(metrics, self.env_steps)
        self._checkpoints.maybe_save(self.env_steps)
        self._after_update()
        if more and not send_ahead:
          ahead, code = self._take_batch()
    finally:
      self._release(ahead, in_flight)
      self._telemetry.flush(self.env_steps)
      # Save what can be saved: the learner never holds a non-finite state (learning.update).
      self._checkpoints.save(self.env_steps)
    return LoopResult(self.env_steps, _STOP_REASONS.get(code, "completed"))

  def _take_batch(self) -> Tuple[Optional[Tuple[types.HostBatch, Any]], int]:
    """((the next batch, its transfer to the devices) or None, the agreed code)."""
    batch, code = self._next_batch()
    if batch is None:
      return None, code
    try:
      return (batch, self._learner.transfer(batch.unroll)), code
    except BaseException:
      batch.release()
      raise

  def _release(self, ahead, in_flight) -> None:
    """Hands back the batches still held when the loop ends early (after their update)."""
    if ahead is not None:
      ahead[0].release()  # Transferred, never dispatched.
    if in_flight is not None:
      try:
        jax.block_until_ready(in_flight[1].metrics)  # Its update may still read the batch.
      except Exception:  # pylint: disable=broad-except
        pass  # The update failed; the error is already on its way up.
      in_flight[0].release()

  def _next_batch(self) -> Tuple[Optional[types.HostBatch], int]:
    """(the next batch, CONTINUE) if every process has one; (None, the agreed code) if one
    reached the target score or was asked to stop; raises if one failed (this process's own
    error, or one that names the process that failed)."""
    failure, batch = None, None
    if self._score_reached():  # Process 0's score (its telemetry) ends every process's run.
      code = SCORE_REACHED
    else:
      try:
        batch = self._batches.next_batch()
      except Exception as e:  # pylint: disable=broad-except
        failure = e
      code = FAILED if failure else (STOP if batch is None else CONTINUE)
    agreed, origin = self._agree(code)
    if agreed != CONTINUE and batch is not None:
      batch.release()
    if failure is not None:
      raise failure
    if agreed == FAILED:
      raise RuntimeError(f"Process {origin} failed (see its log); every process stops.")
    return (batch, agreed) if agreed == CONTINUE else (None, agreed)

  def _finish(self, pending, version_before: int, batch: types.HostBatch):
    metrics = self._learner.finish(pending)
    if not metrics["finite"]:
      raise FloatingPointError(
          f"The loss or gradients became non-finite at update {version_before} "
          f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); the update was not "
          f"applied and the last good state is saved. {_likely_cause(batch.unroll)}")
    # The age of the data: updates between the acting parameters and this update's.
    metrics["policy_lag"] = version_before - metrics.pop("policy_version_mean")
    return metrics


def _likely_cause(unroll: types.Unroll) -> str:
  """What most likely made an update non-finite, judged from its batch."""
  bad = value_checks.non_finite_fields(unroll)
  if bad:
    return (f"The batch itself holds NaN or infinite values (in {', '.join(bad)}): the data, "
            "not the optimizer. Data from env hosts and actor hosts is checked on arrival, so "
            "they came from this process's own environments (--env).")
  return ("The batch's values are all finite, so the update itself diverged: most likely a "
          "--learning_rate too high for this task, or rewards so large that the value loss "
          "overflows (scale them down, or lower --max_abs_reward for remote hosts).")
