"""Runs' score curves from their logs, and curves over runs: what plots and benchmarks read.

A run's score at a point is the mean real score of its last `window` games, as the run logs it
(`runtime.scores`, from `episodes.csv`; runs without one fall back to `metrics.csv`'s
`episode_return`); a multi-task run is one `Run` per game (episodes.csv's `game` column).
`group_curve` takes the mean and a band over a group of runs, and `final_hns` and
`hns_iqm_curve` the human-normalised scores over Atari games (`experiments/plot_metrics.py`
draws them; `benchmarks/multitask.py` reports them).
"""

import glob
import json
import os
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from impala_jax import config as config_lib
from impala_jax.envs import atari_scores
from impala_jax.evaluation import aggregate
from impala_jax.runtime import metrics
from impala_jax.runtime import scores

_GRID_POINTS = 200
_SEED_DIR = re.compile(r"seed[_-]?\d+", re.IGNORECASE)


class Run(NamedTuple):
  logdir: str
  label: str
  env_id: str
  frames: np.ndarray  # [P] frames at each point of the curve
  wall: np.ndarray  # [P] wall seconds (sessions of a resumed run laid end to end)
  score: np.ndarray  # [P] mean of the last `window` games
  source: str  # "episodes.csv" | "metrics.csv"


class Curve(NamedTuple):
  x: np.ndarray
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  runs: int


# -- reading runs -----------------------------------------------------------------------------


def expand_logdirs(patterns: Sequence[str]) -> List[Tuple[int, str]]:
  """(index of the pattern, run directory) for every directory the patterns match, in order."""
  found, seen = [], set()
  for index, pattern in enumerate(patterns):
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    matches = [m for m in matches if os.path.isdir(m)]
    if not matches:
      raise ValueError(f"No run directory matches {pattern!r}.")
    for match in matches:
      key = os.path.abspath(match)
      if key not in seen:
        seen.add(key)
        found.append((index, match))
  return found


def _is_game_name(name: str) -> bool:
  lowered = name.lower().replace("_", "").replace("-", "")
  for game in atari_scores.ATARI_57:
    if lowered in (game.lower(), f"{game.lower()}v5"):
      return True
  return False


def default_label(logdir: str) -> str:
  """The run's directory name, skipping `seed_N` and game-named directories upwards."""
  parts = [p for p in os.path.abspath(logdir).split(os.sep) if p]
  for part in reversed(parts):
    if not _SEED_DIR.fullmatch(part) and not _is_game_name(part):
      return part
  return parts[-1] if parts else logdir


def read_config(logdir: str) -> Optional[dict]:
  path = os.path.join(logdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _continuous_wall(wall: np.ndarray) -> np.ndarray:
  """A resumed run restarts its clock: lay each session after the previous one."""
  out = wall.astype(np.float64).copy()
  offset = 0.0
  for i in range(1, len(out)):
    if wall[i] + offset < out[i - 1] - 1e-9:
      offset = out[i - 1] - wall[i]
    out[i] = wall[i] + offset
  return out


def _columns(logdir: str, name: str, game: Optional[str] = None
             ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(env_steps, wall_seconds, episode_return) of the rows of `name` that have a return (and
  were played in `game`, unless None)."""
  rows = [r for r in metrics.read_csv(os.path.join(logdir, name))
          if r.get("episode_return") is not None and (game is None or r.get("game") == game)]
  if not rows:
    return None
  return tuple(np.array([r[c] for r in rows])
               for c in ("env_steps", "wall_seconds", "episode_return"))


def load_curve(logdir: str, window: int, game: Optional[str] = None
               ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
  """(env_steps, wall_seconds, score, source) of a run, one point per distinct env_steps.

  `game`: only the games of that env id (one game of a multi-task run), from episodes.csv.
  """
  columns = _columns(logdir, "episodes.csv", game)
  if columns is not None:
    steps, wall, returns = columns
    # The score at each metrics row: after the last of the games written at it.
    last = scores.row_ends(steps)
    return (steps[last], _continuous_wall(wall)[last],
            scores.rolling_means(returns, window)[last], "episodes.csv")
  if game is not None:
    return None  # Only episodes.csv tells a multi-task run's games apart.
  columns = _columns(logdir, "metrics.csv")
  if columns is not None:
    steps, wall, returns = columns  # One mean per row already.
    return steps, _continuous_wall(wall), returns, "metrics.csv"
  return None


def load_runs(entries: Sequence[Tuple[int, str]], labels: Sequence[str], window: int,
              frames_per_step: int) -> List[Run]:
  """One `Run` per run directory, or per game of a multi-task run (module doc)."""
  runs = []
  for index, logdir in entries:
    config = read_config(logdir) or {}
    env = config.get("env", {})
    games = env.get("env_id", "unknown task").split(config_lib.TASK_SEPARATOR)
    label = labels[index] if labels else default_label(logdir)
    for env_id in games:
      curve = load_curve(logdir, window, game=env_id if len(games) > 1 else None)
      if curve is None:
        print(f"skipping {logdir}" + (f" ({env_id})" if len(games) > 1 else "") +
              ": no finished episodes in episodes.csv or metrics.csv", file=sys.stderr)
        continue
      if frames_per_step:
        per_step = frames_per_step
      elif env:
        per_step = env.get("frame_skip", 4) if atari_scores.game_name(env_id) else 1
      else:
        per_step = 4  # The old script's assumption for runs without a config.json (Atari).
      steps, wall, score, source = curve
      runs.append(Run(logdir, label, env_id, steps * per_step, wall, score, source))
  return runs


# -- curves over runs -------------------------------------------------------------------------


def _grid(xs: Sequence[np.ndarray]) -> np.ndarray:
  start, end = max(x[0] for x in xs), min(x[-1] for x in xs)
  if end <= start:  # The runs share no range (or a run has one point): use their union.
    start, end = min(x[0] for x in xs), max(x[-1] for x in xs)
  return np.linspace(start, end, _GRID_POINTS) if end > start else np.array([start])


def _on_grid(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  values = np.interp(grid, x, y)
  values[(grid < x[0]) | (grid > x[-1])] = np.nan
  return values


def group_curve(runs: Sequence[Run], axis: str, band: str) -> Curve:
  """Mean and band over `runs` of one group, against "frames" or "wall" (seconds)."""
  xs = [getattr(r, axis) for r in runs]
  if len(runs) == 1:  # Its own points: no resampling.
    return Curve(xs[0], runs[0].score, runs[0].score, runs[0].score, 1)
  grid = _grid(xs)
  values = np.stack([_on_grid(grid, x, r.score) for x, r in zip(xs, runs)])
  counts = np.sum(np.isfinite(values), axis=0)
  keep = counts > 0
  grid, values, counts = grid[keep], values[:, keep], counts[keep]
  mean = np.nanmean(values, axis=0)
  if band == "minmax":
    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
  else:
    std = np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    stderr = np.nan_to_num(std) / np.sqrt(counts)
    low, high = mean - stderr, mean + stderr
  return Curve(grid, mean, low, high, len(runs))


# -- the aggregate over Atari games -----------------------------------------------------------


def final_hns(runs: Sequence[Run]) -> Dict[str, Dict[str, List[float]]]:
  """label → game → the human-normalised final score of each run (Atari-57 runs only)."""
  table: Dict[str, Dict[str, List[float]]] = {}
  for run in runs:
    hns = atari_scores.human_normalized_score(run.env_id, float(run.score[-1]))
    if hns is not None:
      table.setdefault(run.label, {}).setdefault(run.env_id, []).append(hns)
  return table


def hns_iqm_curve(runs: Sequence[Run], reps: int, seed: int
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(frames, IQM, low, high) of the human-normalised scores of `runs` (one label) over the
  frames that every run covers."""
  grid = _grid([r.frames for r in runs])
  by_game: Dict[str, List[np.ndarray]] = {}
  for run in runs:
    hns = np.array([atari_scores.human_normalized_score(run.env_id, s) for s in run.score])
    by_game.setdefault(run.env_id, []).append(_on_grid(grid, run.frames, hns))
  points, iqms, lows, highs = [], [], [], []
  for i, x in enumerate(grid):
    scores = {game: [v[i] for v in values if np.isfinite(v[i])]
              for game, values in by_game.items()}
    if not all(scores.values()):
      continue  # Some game has no run here.
    interval = aggregate.stratified_bootstrap(scores, "iqm", reps=reps, seed=seed)
    points.append(x)
    iqms.append(interval.point)
    lows.append(interval.low)
    highs.append(interval.high)
  return np.array(points), np.array(iqms), np.array(lows), np.array(highs)
