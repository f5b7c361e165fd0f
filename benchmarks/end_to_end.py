"""e2e: the real training system (`runtime.TrainingRun`) for one network.

Env steps/s after warm-up, where the time goes (the `time_*` columns of metrics.csv), and the
process's RSS and its growth (`memory`), all read from the run's metrics.csv
(`runtime.metrics.read_csv`).
"""

import os
import threading
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from benchmarks import memory
from benchmarks import synthetic
from impala_jax import config as config_lib
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import training as runtime

Row = Mapping[str, Optional[float]]


def _first_row_at(rows: Sequence[Mapping[str, Any]], seconds: float) -> Optional[int]:
  return next((i for i, r in enumerate(rows) if r["wall_seconds"] >= seconds), None)


def _weighted_mean(span: Sequence[Row], column: str) -> Optional[float]:
  """`column` averaged over the rows after `span`'s first, weighted by interval length."""
  pairs = [(r[column], r["wall_seconds"] - previous["wall_seconds"])
           for previous, r in zip(span[:-1], span[1:]) if r.get(column) is not None]
  total_weight = sum(w for _, w in pairs)
  if not pairs or total_weight <= 0:
    return None
  return sum(v * w for v, w in pairs) / total_weight


def _span_start(rows: Sequence[Row], warmup_seconds: float) -> Tuple[int, Optional[str]]:
  """The measured span's first row: the first at or after `warmup_seconds`, or, with a
  warning, the last but one when no row but the last is that late."""
  last = len(rows) - 1
  first = _first_row_at(rows, warmup_seconds)
  if first is None or first == last:
    return last - 1, (f"fewer than two metrics rows after warm-up ({warmup_seconds:.0f} s): "
                      "measured over the last two rows, which may include compilation; "
                      "increase --window_seconds or --warmup_seconds")
  return first, None


def summarize_metrics(rows: Sequence[Row], warmup_seconds: float, memory_from_seconds: float,
                      frames_per_env_step: int = 1) -> Dict[str, Any]:
  """Throughput, where the time goes, and memory, from the rows of a run's metrics.csv.

  The measured span runs from the first row at or after `warmup_seconds` (its `wall_seconds`)
  to the last row. Throughput is Δenv_steps / Δwall_seconds over that span. Each row's
  per-interval columns (`time_*` fractions, inference batch size and latency, policy lag)
  describe the interval that ends at that row, so they are averaged over the rows after the
  span's first, weighted by interval length.

  Args:
    rows: metrics.csv rows with floats (`metrics.read_csv`); at least `env_steps`,
      `wall_seconds` and `rss_mb`.
    warmup_seconds: where the measured span starts, on the clock of the rows' `wall_seconds`.
    memory_from_seconds: RSS growth runs from the first row at or after this (same clock) to
      the last row; if no row but the last is that late, from the span's first row.
    frames_per_env_step: 4 on Atari (action repeat), 1 elsewhere.

  Returns:
    A dict; `warning` is set when the run was too short to start the span after warm-up, in
    which case the span is the last two rows.

  Raises:
    ValueError: fewer than two rows.
  """
  if len(rows) < 2:
    raise ValueError(f"metrics.csv has {len(rows)} row(s); throughput needs two. Increase "
                     "--window_seconds or lower --log_interval_seconds.")
  last = len(rows) - 1
  first, warning = _span_start(rows, warmup_seconds)
  span = rows[first:last + 1]
  seconds = span[-1]["wall_seconds"] - span[0]["wall_seconds"]
  env_steps = span[-1]["env_steps"] - span[0]["env_steps"]
  steps_per_second = env_steps / seconds
  time_fractions = {c[len("time_"):]: _weighted_mean(span, c)
                    for c in rows[0] if c.startswith("time_")}
  # Each thread's phases should add up to about 1. The runtime credits a phase when the actor's
  # loop iteration ends, so a long block (a full queue while the learner compiles) lands whole
  # in the row where it ends: a window that starts right after compilation can exceed 1.
  time_fraction_totals = {
      role: sum(v for k, v in time_fractions.items() if k.startswith(role + "_") and v)
      for role in ("actor", "learner")}
  memory_first = _first_row_at(rows, memory_from_seconds)
  if memory_first is None or memory_first == last:
    memory_first = first
  summary = dict(
      env_steps_per_second=steps_per_second,
      frames_per_second=steps_per_second * frames_per_env_step,
      measured_from_seconds=span[0]["wall_seconds"],
      measured_to_seconds=span[-1]["wall_seconds"],
      measured_env_steps=env_steps,
      measured_rows=len(span),
      # Fractions of each thread's wall time (actors averaged over actor threads).
      time_fractions=time_fractions,
      time_fraction_totals=time_fraction_totals,
      inference_batch_size=_weighted_mean(span, "inference_batch_size"),
      inference_latency_ms=_weighted_mean(span, "inference_latency_ms"),
      policy_lag=_weighted_mean(span, "policy_lag"),
      memory=memory.summarize_rss(rows, memory_first),
      # The whole run, for plots of throughput and memory over time.
      series={c: [r[c] for r in rows] for c in ("wall_seconds", "env_steps", "rss_mb")})
  if warning:
    summary["warning"] = warning
  return summary


def measure_end_to_end(config: config_lib.TrainConfig, warmup_seconds: float,
                       window_seconds: float, memory_from_seconds: Optional[float] = None,
                       first_row_deadline_seconds: float = 600.0) -> Dict[str, Any]:
  """Trains with the real system and summarises metrics.csv.

  The clock of the measurement starts at the run's first metrics row, whenever set-up and
  compilation let it come (a minute and more with XLA autotuning on an accelerator): from
  there, `warmup_seconds` are left out and `window_seconds` measured, then the run is asked to
  stop. `runtime.TrainingRun.run` runs in this (the main) thread, so Ctrl-C stops it cleanly.
  `config.logdir` must not hold a previous run's checkpoints.

  Args:
    memory_from_seconds: where RSS growth is measured from, on the rows' clock (seconds since
      `run()` started); None: where the measured span starts.
    first_row_deadline_seconds: give up (stop the run, raise) when no row has come by then.

  Returns:
    `summarize_metrics`'s dict (metrics.csv's `wall_seconds` count from `run()`), plus the
    run's update count, stop reason and the second its first row came.

  Raises:
    TimeoutError: no metrics row within `first_row_deadline_seconds`.
  """
  run = runtime.TrainingRun(config, show_progress=False)
  csv_path = os.path.join(config.logdir, "metrics.csv")
  watch = _FirstRowWatch(run, csv_path, warmup_seconds + window_seconds,
                         first_row_deadline_seconds)
  watch.start()
  try:
    summary = run.run()
  finally:
    watch.close()
  if watch.timed_out:
    raise TimeoutError(
        f"No metrics row within {first_row_deadline_seconds:.0f} s of the run's start (set-up, "
        "compilation and the first batch took longer); raise --first_row_deadline_seconds.")
  rows = metrics_lib.read_csv(csv_path)
  first_row_seconds = rows[0]["wall_seconds"] if rows else 0.0
  span_start = first_row_seconds + warmup_seconds
  result = summarize_metrics(
      rows, span_start, span_start if memory_from_seconds is None else memory_from_seconds,
      synthetic.frames_per_step(config.env))
  result.update(updates=summary.updates, stop_reason=summary.stop_reason,
                first_row_seconds=first_row_seconds)
  return result


class _FirstRowWatch:
  """Asks a run to stop `seconds` after its first metrics row, or at a deadline without one."""

  _POLL_SECONDS = 0.5

  def __init__(self, run: runtime.TrainingRun, csv_path: str, seconds: float,
               deadline_seconds: float):
    self._run = run
    self._csv_path = csv_path
    self._seconds = seconds
    self._deadline_seconds = deadline_seconds
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="e2e-watch", daemon=True)
    self.timed_out = False

  def start(self) -> None:
    self._thread.start()

  def close(self) -> None:
    self._done.set()
    self._thread.join()

  def _has_a_row(self) -> bool:
    try:
      with open(self._csv_path) as f:
        return sum(1 for _ in f) >= 2  # The header, then a row.
    except FileNotFoundError:
      return False

  def _watch(self) -> None:
    start = time.monotonic()
    while not self._done.wait(self._POLL_SECONDS):
      if self._has_a_row():
        if not self._done.wait(self._seconds):
          self._run.request_stop()
        return
      if time.monotonic() - start > self._deadline_seconds:
        self.timed_out = True
        self._run.request_stop()
        return
