"""What a run reports as it goes: metric rows, the progress bar, where the time goes.

`Telemetry.record(metrics, env_steps)` is called once per learner update. Every
`log_interval_seconds` it writes one row to `metrics.csv` and TensorBoard (`runtime.metrics`):
the means of the update metrics since the last row, the real scores of the episodes finished
since then, throughput, gauges read from the running components (inference batch size and
latency, queue size, RSS) and, from each component's `seconds` counters, the fraction of its
threads' wall time spent in each phase (`time_*` columns). Scores are kept per source
(`runtime.scores`): `stop_score` and `score_sources` in each row, the source of every game in
episodes.csv, and whether `--stop_at_score` is reached (`score_reached`).

A multi-task run (`EnvConfig.tasks`) also keeps each game's own score, the mean of its last
`RECENT_EPISODES` games: each row has `recent_episode_return/<env id>` and, for Atari-57
games, `recent_human_normalized_score/<env id>`; its `recent_human_normalized_score` is the
median of those over the games (once every game has a score), and so is its `stop_score`, over
each game's last `RECENT_EPISODES` games (once every game has that many): what
`--stop_at_score` reaches. `recent_episode_return` stays the mean of the last games of any game.
"""

import collections
import math
import queue
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import psutil
import tqdm

from impala_jax import config as config_lib
from impala_jax import queues
from impala_jax import stage_clock
from impala_jax import types
from impala_jax.envs import atari_scores
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import scores as scores_lib

# The score shown while training: the mean real score of the last games finished (the usual
# "last 100 episodes" of Atari papers would lag far behind on a short run).
RECENT_EPISODES = 20

# A phase counter: (name prefix, the component's clock, threads it sums over).
PhaseSource = Tuple[str, stage_clock.StageClock, int]


class _Window:
  """Sums of per-update metrics between two rows."""

  def __init__(self, start_steps: int):
    self.start = time.monotonic()
    self.start_steps = start_steps
    self.updates = 0
    self.sums: Dict[str, float] = collections.defaultdict(float)

  def add(self, metrics: Mapping[str, float]) -> None:
    self.updates += 1
    for k, v in metrics.items():
      self.sums[k] += v

  def means(self) -> Dict[str, float]:
    return {k: v / self.updates for k, v in self.sums.items()}


class PhaseTimer:
  """Fractions of wall time per phase since the previous call, from cumulative counters."""

  def __init__(self, sources: Sequence[PhaseSource]):
    self._sources = list(sources)
    self._last = self._totals()

  def _totals(self) -> Dict[str, Tuple[float, int]]:
    totals: Dict[str, Tuple[float, int]] = {}
    for prefix, clock, threads in self._sources:
      for k, v in clock.wall.items():
        name = f"{prefix}_{k}"
        total, _ = totals.get(name, (0.0, 0))
        totals[name] = (total + v, threads)
    return totals

  def fractions(self, elapsed: float) -> Dict[str, float]:
    now = self._totals()
    fractions = {
        f"time_{k}": (v - self._last.get(k, (0.0, 0))[0]) / (elapsed * max(threads, 1))
        for k, (v, threads) in now.items()}
    self._last = now
    return fractions


class Telemetry:
  """Rows every `log_interval_seconds`, a tqdm bar (or one log line per row), episode scores."""

  def __init__(self, config: config_lib.TrainConfig, *, writer: metrics_lib.MetricsWriter,
               episode_writer: metrics_lib.EpisodeWriter,
               episodes: "queue.SimpleQueue[types.EpisodeStats]", phases: PhaseTimer,
               gauges: Callable[[], Dict[str, float]], env_steps: int, start_time: float,
               show_progress: bool):
    """Args:
      config: the run's; its `log_interval_seconds` (seconds between rows), `total_env_steps`
        (the bar's end) and tasks: on Atari, rows get a `recent_human_normalized_score` column
        (`envs.atari_scores.normalizer`) and the summary shows it; a multi-task run's rows get
        each game's columns too (module doc).
      writer: where rows go.
      episode_writer: where each finished episode goes.
      episodes: finished episodes, put there by the actors.
      phases: the components' phase counters.
      gauges: current readings of the components (called once per row).
      env_steps: where the bar starts (a resumed run's checkpoint).
      start_time: `time.monotonic()` when the run began (`wall_seconds` counts from it).
      show_progress: a tqdm bar on the terminal; False logs one line per row instead.
    """
    self._writer = writer
    self._episode_writer = episode_writer
    self._episodes = episodes
    # A resumed run's score window starts with the games before its checkpoint.
    self._scores = scores_lib.Scores(RECENT_EPISODES, previous=[
        types.EpisodeStats(r, 0, s, t) for r, s, t in zip(episode_writer.previous_returns,
                                                          episode_writer.previous_sources,
                                                          episode_writer.previous_tasks)])
    self._phases = phases
    self._gauges = gauges
    self._interval = config.log_interval_seconds
    self._start_time = start_time
    self._show_progress = show_progress
    self._tasks = config.env.tasks
    self._multi_task = config.env.multi_task
    # Each task's score ↦ its human-normalised score; None for a game without reference scores.
    self._task_hns = [atari_scores.normalizer(task) for task in self._tasks]
    self._score_to_hns = self._task_hns[0]
    self._window = _Window(env_steps)
    self._bar = tqdm.tqdm(total=config.total_env_steps, initial=env_steps, unit="step",
                          disable=not show_progress, dynamic_ncols=True, smoothing=0.1)
    self._last_env_steps = env_steps
    self.episode_returns: List[float] = []  # Real scores of this session's episodes, in order.
    self._read_scores()
    self._warned_one_source = False

  def _read_scores(self) -> None:
    """The scores as of the last row: `score_reached` runs before every update, so it reads
    these instead of averaging every source's games each time."""
    self._score = self._scores.recent()
    if self._multi_task:  # Every game is the local actors' (remote ones are refused).
      self._local_score = self._median_hns(self._scores.by_task(full=True))
      self._remote_score = None
    else:
      self._local_score = self._scores.local_score()
      self._remote_score = self._scores.remote_score()
    self._stop_score = max((s for s in (self._local_score, self._remote_score) if s is not None),
                           default=None)

  def _median_hns(self, task_scores: Mapping[int, float]) -> Optional[float]:
    """The median over the games of each one's human-normalised score in `task_scores`; None
    unless every game has a score there and reference scores."""
    if len(task_scores) < len(self._tasks) or None in self._task_hns:
      return None
    return float(np.median([to_hns(task_scores[task])
                            for task, to_hns in enumerate(self._task_hns)]))

  def _task_columns(self) -> Dict[str, Optional[float]]:
    """A multi-task row's columns per game and their median HNS (module doc): always set (None
    until a game has a score), so that they are in the CSV header from row one."""
    task_scores = self._scores.by_task()
    columns: Dict[str, Optional[float]] = {}
    for task, (env_id, to_hns) in enumerate(zip(self._tasks, self._task_hns)):
      score = task_scores.get(task)
      columns[f"recent_episode_return/{env_id}"] = score
      if to_hns is not None:
        columns[f"recent_human_normalized_score/{env_id}"] = (
            None if score is None else to_hns(score))
    if None not in self._task_hns:
      columns["recent_human_normalized_score"] = self._median_hns(task_scores)
    return columns

  def recent_score(self) -> Optional[float]:
    """The score as of the last row: the mean real return of the last `RECENT_EPISODES` games,
    or None until that many have finished (one lucky game is not a score). A resumed run
    counts the games its checkpoint covers (from `episodes.csv`), as if it had not stopped."""
    return self._score

  def score_reached(self, target: Optional[float],
                    confirm: Optional[Callable[[float], bool]] = None) -> bool:
    """Whether `--stop_at_score=target` is reached as of the last row (`runtime.scores`): by
    the local actors' own score; or proposed by two remote hosts' each and confirmed by
    `confirm(target)` (the learner's own games, `runtime.score_check`; None: never confirmed).
    One host's report never ends a run, nor do any number of hosts' without the learner's games.
    """
    if target is None:
      return False
    local, remote = self._local_score, self._remote_score
    if local is not None and local >= target:
      return True
    if remote is not None and remote >= target:
      return confirm is not None and confirm(target)
    if (not self._multi_task and self._score is not None and self._score >= target and
        not self._warned_one_source):
      self._warned_one_source = True
      logging.warning("The last %d games score %.2f >= --stop_at_score=%g, but neither the "
                      "local actors nor two remote hosts each reach it (%s): one host's report "
                      "does not end a run.", RECENT_EPISODES, self._score, target,
                      self._scores.summary())
    return False

  def record(self, metrics: Mapping[str, float], env_steps: int) -> None:
    self._window.add(metrics)
    self._bar.update(env_steps - self._last_env_steps)
    self._last_env_steps = env_steps
    if time.monotonic() - self._window.start >= self._interval:
      self._write_row(env_steps)

  def flush(self, env_steps: int) -> None:
    """The last row (if any update since the previous one), then closes the bar."""
    if self._window.updates:
      self._write_row(env_steps)
    self._bar.close()

  def _write_row(self, env_steps: int) -> None:
    window = self._window
    self._window = _Window(env_steps)
    finished = queues.drain(self._episodes)
    self.episode_returns.extend(e.episode_return for e in finished)
    self._scores.add(finished)
    self._read_scores()
    if any(e.source != types.LOCAL_SOURCE for e in finished):
      logging.info("Games and scores by source: %s", self._scores.summary())
    now = time.monotonic()
    self._episode_writer.write(env_steps, now - self._start_time, finished)
    elapsed = max(now - window.start, 1e-9)
    row: Dict[str, Optional[float]] = window.means()
    row.update(
        env_steps=env_steps,
        wall_seconds=now - self._start_time,
        episode_return=(float(np.mean([e.episode_return for e in finished]))
                        if finished else None),
        recent_episode_return=self._scores.mean(),
        episode_length=(float(np.mean([e.episode_length for e in finished]))
                        if finished else None),
        episodes=len(finished),
        stop_score=self._stop_score,
        score_sources=len(self._scores.by_source()),
        steps_per_second=(env_steps - window.start_steps) / elapsed,
        rss_mb=psutil.Process().memory_info().rss / 2**20)
    if self._multi_task:
      row.update(self._task_columns())
    elif self._score_to_hns is not None:
      # Always set (None until a game ends), so the column is in the CSV header from row one.
      row["recent_human_normalized_score"] = (
          None if row["recent_episode_return"] is None else self._score_to_hns(
              row["recent_episode_return"]))
    row.update(self._gauges())
    row.update(self._phases.fractions(elapsed))
    self._writer.write(row)
    summary = (self._score_summary(row) +
               f"sps={row['steps_per_second']:.0f} loss={row.get('loss', math.nan):.3f} "
               f"lag={row.get('policy_lag', math.nan):.2f}")
    if self._show_progress:
      self._bar.set_postfix_str(summary)
    else:  # One line per row; with a bar, its postfix says the same without breaking it up.
      logging.info("steps=%d %s%s", env_steps, summary, self._games_summary(row))

  def _score_summary(self, row: Mapping[str, Optional[float]]) -> str:
    """The bar's score: the recent score (and its HNS); a multi-task run's median HNS."""
    hns = row.get("recent_human_normalized_score")
    if self._multi_task:
      return (f"median_hns={math.nan if hns is None else hns:.3f} over "
              f"{len(self._tasks)} games ")
    recent = row["recent_episode_return"]
    return (f"score={math.nan if recent is None else recent:.2f} "
            + ("" if hns is None else f"hns={hns:.3f} ")
            + f"(last {self._scores.games()} games) ")

  def _games_summary(self, row: Mapping[str, Optional[float]]) -> str:
    """A multi-task run's scores per game, for the log line (too long for the bar)."""
    if not self._multi_task:
      return ""
    scores = (row[f"recent_episode_return/{env_id}"] for env_id in self._tasks)
    return " games: " + ", ".join(
        f"{env_id} {math.nan if score is None else score:.2f}"
        for env_id, score in zip(self._tasks, scores))
