"""Scores of a training run from its episodes.csv: the curve, the first crossing, the summary.

A run's score after its k-th finished game is the mean real score of games k−19..k (the last
20; fewer at the very start), the number the progress bar shows. Games are recorded at metrics
rows, several to a row; a run's score at a row is the mean after the row's last game, so the
curve, the logged score and the threshold agree. A threshold counts as reached at the first row
whose score is ≥ the threshold, once 20 games have finished.
"""

import csv
import os
import statistics
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

GAMES = 20


class Episode(NamedTuple):
  env_steps: int
  wall_seconds: float
  episode_return: float


def read_episodes(logdir: str) -> List[Episode]:
  path = os.path.join(logdir, "episodes.csv")
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [Episode(int(r["env_steps"]), float(r["wall_seconds"]), float(r["episode_return"]))
            for r in csv.DictReader(f)]


def rolling_scores(episodes: List[Episode], games: int = GAMES) -> List[float]:
  """The mean score of the last `games` games after each game."""
  scores, total = [], 0.0
  for i, e in enumerate(episodes):
    total += e.episode_return
    if i >= games:
      total -= episodes[i - games].episode_return
    scores.append(total / min(i + 1, games))
  return scores


def row_ends(episodes: List[Episode]) -> List[int]:
  """Indices of the last game recorded at each metrics row (each distinct `env_steps`)."""
  return [i for i in range(len(episodes))
          if i + 1 == len(episodes) or episodes[i + 1].env_steps != episodes[i].env_steps]


def first_crossing(episodes: List[Episode], threshold: float,
                   games: int = GAMES) -> Optional[Episode]:
  """The last game of the first row whose last-`games` mean reaches `threshold` (or None)."""
  scores = rolling_scores(episodes, games)
  for i in row_ends(episodes):
    if i + 1 >= games and scores[i] >= threshold:
      return episodes[i]
  return None


def _steps_per_second(logdir: str) -> Optional[float]:
  """Agent steps per second over the run, from metrics.csv's first and last rows."""
  path = os.path.join(logdir, "metrics.csv")
  if not os.path.exists(path):
    return None
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if len(rows) < 2:
    return None
  first, last = rows[0], rows[-1]
  seconds = float(last["wall_seconds"]) - float(first["wall_seconds"])
  return (int(last["env_steps"]) - int(first["env_steps"])) / seconds if seconds > 0 else None


def summarize_run(logdir: str, threshold: float) -> Dict[str, Any]:
  """Steps and seconds to `threshold`, the final score and throughput, and the curve."""
  episodes = read_episodes(logdir)
  scores = rolling_scores(episodes)
  crossing = first_crossing(episodes, threshold)
  return dict(
      games=len(episodes),
      steps_to_threshold=crossing.env_steps if crossing else None,
      seconds_to_threshold=crossing.wall_seconds if crossing else None,
      final_score=scores[-1] if scores else None,
      best_score=max((scores[i] for i in row_ends(episodes) if i + 1 >= GAMES), default=None),
      final_env_steps=episodes[-1].env_steps if episodes else 0,
      final_wall_seconds=episodes[-1].wall_seconds if episodes else 0.0,
      steps_per_second=_steps_per_second(logdir),
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
