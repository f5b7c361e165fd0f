"""Scores of a training run from its episodes.csv: the curve, the first crossing, the summary.

A run's score after its k-th finished game is the mean real score of its last 20 games (fewer at
the very start): `runtime.scores.rolling_means`, the number the run itself logs. Games are
recorded at metrics rows, several to a row; a run's score at a row is the score after the row's
last game (`runtime.scores.row_ends`), so the curve, the logged score and the threshold agree. A
threshold counts as reached at the first row whose score is ≥ the threshold, once 20 games have
finished.
"""

import os
import statistics
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import scores as scores_lib
from impala_jax.runtime import telemetry

GAMES = telemetry.RECENT_EPISODES


class Episode(NamedTuple):
  env_steps: int
  wall_seconds: float
  episode_return: float


def read_episodes(logdir: str) -> List[Episode]:
  rows = metrics_lib.read_csv(os.path.join(logdir, "episodes.csv"))
  return [Episode(int(r["env_steps"]), r["wall_seconds"], r["episode_return"]) for r in rows]


def _scores_and_row_ends(episodes: List[Episode], games: int):
  """The score after each game, and the index of each metrics row's last game."""
  return (scores_lib.rolling_means([e.episode_return for e in episodes], games),
          scores_lib.row_ends([e.env_steps for e in episodes]))


def first_crossing(episodes: List[Episode], threshold: float,
                   games: int = GAMES) -> Optional[Episode]:
  """The last game of the first row whose last-`games` mean reaches `threshold` (or None)."""
  scores, row_ends = _scores_and_row_ends(episodes, games)
  for i in row_ends:
    if i + 1 >= games and scores[i] >= threshold:
      return episodes[i]
  return None


def steps_per_second(logdir: str) -> Optional[float]:
  """Agent steps per second over the run, from metrics.csv's first and last rows."""
  rows = metrics_lib.read_csv(os.path.join(logdir, "metrics.csv"))
  if len(rows) < 2:
    return None
  first, last = rows[0], rows[-1]
  seconds = last["wall_seconds"] - first["wall_seconds"]
  return (last["env_steps"] - first["env_steps"]) / seconds if seconds > 0 else None


def summarize_run(logdir: str, threshold: float) -> Dict[str, Any]:
  """Steps and seconds to `threshold`, the final score and throughput, and the curve."""
  episodes = read_episodes(logdir)
  scores, row_ends = _scores_and_row_ends(episodes, GAMES)
  scores = scores.tolist()
  crossing = first_crossing(episodes, threshold)
  return dict(
      games=len(episodes),
      steps_to_threshold=crossing.env_steps if crossing else None,
      seconds_to_threshold=crossing.wall_seconds if crossing else None,
      final_score=scores[-1] if scores else None,
      best_score=max((scores[i] for i in row_ends if i + 1 >= GAMES), default=None),
      final_env_steps=episodes[-1].env_steps if episodes else 0,
      final_wall_seconds=episodes[-1].wall_seconds if episodes else 0.0,
      steps_per_second=steps_per_second(logdir),
      curve=dict(env_steps=[e.env_steps for e in episodes],
                 wall_seconds=[e.wall_seconds for e in episodes], score=scores))


def _median(values: List[Optional[float]]) -> Optional[float]:
  """Median over seeds; None when fewer than half the seeds have a value."""
  known = [v for v in values if v is not None]
  if len(known) * 2 < len(values) or not known:
    return None
  # A seed that never reached the threshold counts as +inf for the median.
  padded = sorted(known) + [float("inf")] * (len(values) - len(known))
  median = statistics.median(padded)
  return None if median == float("inf") else median


def aggregate(runs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
  values = list(runs.values())
  return dict(
      seeds=len(values),
      reached=sum(r["steps_to_threshold"] is not None for r in values),
      median_steps_to_threshold=_median([r["steps_to_threshold"] for r in values]),
      median_seconds_to_threshold=_median([r["seconds_to_threshold"] for r in values]),
      mean_final_score=statistics.fmean([r["final_score"] for r in values
                                         if r["final_score"] is not None] or [float("nan")]),
      mean_steps_per_second=statistics.fmean([r["steps_per_second"] for r in values
                                              if r["steps_per_second"]] or [float("nan")]))
