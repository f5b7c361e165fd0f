r"""Learning curves of one or several runs, grouped by label, and an aggregate over Atari games.

    python experiments/plot_metrics.py --logdir=runs/pong_2m --output=docs/results/pong.png
    python experiments/plot_metrics.py --logdirs='sweep_runs/*/seed_*' --output=/tmp/sweep.png
    python experiments/plot_metrics.py --logdirs=runs/a,runs/b --labels=baseline,lr1e-3

The score of a run at a point is the mean real score of its last --window games, as the run
logs it (`runtime.scores`, from `episodes.csv`; runs without one fall back to `metrics.csv`'s
`episode_return`). Runs are grouped by game (the run's `config.json`) and by label: `--labels`
(one per `--logdirs` entry, shared by all runs a pattern matches), else the run directory's
name, skipping `seed_N` and game-named directories (`sweep/lr1e-3/seed_0` → `lr1e-3`,
`runs/impala/Pong-v5/seed_1` → `impala`). Each group draws the mean over its runs and a band
(--band: min–max, or ± standard error), against frames and against wall time, over the range
all its runs cover.

A multi-task run (`--env=Pong-v5,Breakout-v5`) counts as one run per game: each game's curve
is the score over its own games (episodes.csv's `game` column), under the run's label, so its
games are plotted and aggregated as runs of single games are.

With runs on two or more Atari-57 games, a second figure (`<output>_aggregate.png`) shows, per
label, the IQM of human-normalised scores against frames, and the median, IQM and mean of the
runs' final human-normalised scores, each with a 95% stratified-bootstrap interval
(`impala_jax.evaluation.aggregate`, rliable's estimators).
"""

import glob
import json
import os
import re
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import app
from absl import flags
import matplotlib
import numpy as np

matplotlib.use("Agg")  # Headless: writes files, never opens a window.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from impala_jax import config as config_lib
from impala_jax.envs import atari_scores
from impala_jax.evaluation import aggregate
from impala_jax.runtime import metrics
from impala_jax.runtime import scores
from impala_jax.runtime import telemetry


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


def define_flags() -> None:
  """The script's flags; defined when it runs, so that benchmarks can import its functions
  (benchmarks/multitask.py) without taking its flag names."""
  flags.DEFINE_string("logdir", None, "One run directory (the single-run usage).")
  flags.DEFINE_list("logdirs", [], "Run directories or glob patterns, comma-separated.")
  flags.DEFINE_list("labels", [], "One label per --logdirs entry; default from the directories.")
  flags.DEFINE_string("output", None, "PNG to write; default <logdir>/learning_curve.png for "
                      "one run, else learning_curves.png in the runs' common directory.")
  flags.DEFINE_string("aggregate_output", None, "PNG of the aggregate over Atari games; "
                      "default <output>_aggregate.png.")
  flags.DEFINE_string("title", None, "Figure title; default the run's name or the run count.")
  flags.DEFINE_integer("frames_per_step", 0, "Frames per agent step; 0: from each run's "
                       "config.json (Atari: frame_skip, else 1; 4 without a config).")
  flags.DEFINE_integer("window", telemetry.RECENT_EPISODES,
                       "The score is the mean of the last this many games.")
  flags.DEFINE_enum("band", "minmax", ["minmax", "stderr"], "Spread over a group's runs.")
  flags.DEFINE_integer("bootstrap_reps", 2000, "Bootstrap replicates of the aggregate intervals.")
  flags.DEFINE_integer("seed", 0, "Seeds the bootstrap.")


# -- reading runs -----------------------------------------------------------------------------


def expand_logdirs(patterns: Sequence[str]) -> List[Tuple[int, str]]:
  """(index of the pattern, run directory) for every directory the patterns match, in order."""
  found, seen = [], set()
  for index, pattern in enumerate(patterns):
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    matches = [m for m in matches if os.path.isdir(m)]
    if not matches:
      raise app.UsageError(f"No run directory matches {pattern!r}.")
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
  if game is not None:
    if columns is None:
      return None
    steps, wall, returns = columns
    last = scores.row_ends(steps)
    return (steps[last], _continuous_wall(wall)[last],
            scores.rolling_means(returns, window)[last], "episodes.csv")
  if columns is not None:
    steps, wall, returns = columns
    # The score at each metrics row: after the last of the games written at it.
    last = scores.row_ends(steps)
    return (steps[last], _continuous_wall(wall)[last],
            scores.rolling_means(returns, window)[last], "episodes.csv")
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


def _groups(runs: Sequence[Run]) -> Dict[str, Dict[str, List[Run]]]:
  """env_id → label → runs, in the order first seen."""
  groups: Dict[str, Dict[str, List[Run]]] = {}
  for run in runs:
    groups.setdefault(run.env_id, {}).setdefault(run.label, []).append(run)
  return groups


def _colors(labels: Sequence[str]) -> Dict[str, str]:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _hours_or_minutes(seconds: float) -> Tuple[float, str]:
  return (3600.0, "hours") if seconds > 3 * 3600 else (60.0, "minutes")


def plot_curves(runs: Sequence[Run], output: str, title: str, band: str, window: int) -> None:
  groups = _groups(runs)
  labels = list(dict.fromkeys(r.label for r in runs))
  colors = _colors(labels)
  fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.8 * len(groups)), squeeze=False)
  unit, unit_name = _hours_or_minutes(max(r.wall[-1] for r in runs))
  band_name = "min–max" if band == "minmax" else "± s.e."
  for row, (env_id, by_label) in enumerate(groups.items()):
    for col, axis in enumerate(("frames", "wall")):
      ax = axes[row, col]
      for label, group in by_label.items():
        curve = group_curve(group, axis, band)
        x = curve.x / unit if axis == "wall" else curve.x
        name = label if curve.runs == 1 else f"{label} ({curve.runs} runs, {band_name})"
        ax.plot(x, curve.mean, color=colors[label], lw=1.4, label=name)
        if curve.runs > 1:
          ax.fill_between(x, curve.low, curve.high, color=colors[label], alpha=0.2, lw=0)
      ax.set_xlabel("frames" if axis == "frames" else f"wall time ({unit_name})")
      ax.set_ylabel(f"score (mean of last {window} games)")
      ax.set_title(env_id)
      ax.grid(alpha=0.3)
      if axis == "frames":
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    axes[row, 0].legend(fontsize=8, loc="best")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, output)


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


def plot_aggregate(runs: Sequence[Run], output: str, title: str, reps: int, seed: int) -> None:
  atari_runs = [r for r in runs if atari_scores.game_name(r.env_id)]
  table = final_hns(atari_runs)
  labels = list(table)
  colors = _colors(list(dict.fromkeys(r.label for r in runs)))
  fig, (curve_ax, bar_ax) = plt.subplots(1, 2, figsize=(12, 4.2),
                                         gridspec_kw=dict(width_ratios=[1.3, 1]))
  for label in labels:
    label_runs = [r for r in atari_runs if r.label == label]
    x, iqm, low, high = hns_iqm_curve(label_runs, reps, seed)
    games = len(table[label])
    curve_ax.plot(x, iqm, color=colors[label], lw=1.4, label=f"{label} ({games} games)")
    curve_ax.fill_between(x, low, high, color=colors[label], alpha=0.2, lw=0)
  curve_ax.set_xlabel("frames")
  curve_ax.set_ylabel("IQM human-normalised score")
  curve_ax.set_title("IQM over runs × games (95% stratified-bootstrap CI)")
  curve_ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
  curve_ax.grid(alpha=0.3)
  curve_ax.legend(fontsize=8)

  metrics = ("median", "iqm", "mean")
  height = 0.8 / max(len(labels), 1)
  lines = []
  for j, label in enumerate(labels):
    intervals = aggregate.interval_estimates(table[label], metrics, reps=reps, seed=seed)
    for i, name in enumerate(metrics):
      interval = intervals[name]
      y = i + (j - (len(labels) - 1) / 2) * height
      bar_ax.barh(y, interval.high - interval.low, left=interval.low, height=height * 0.8,
                  color=colors[label], alpha=0.6, label=label if i == 0 else None)
      bar_ax.plot([interval.point] * 2, [y - height * 0.4, y + height * 0.4], color="black",
                  lw=1.5)
      lines.append(f"{label:>20s} {name:>6s} {interval.point:8.3f} "
                   f"[{interval.low:.3f}, {interval.high:.3f}]")
  bar_ax.set_yticks(range(len(metrics)), ["Median", "IQM", "Mean"])
  bar_ax.invert_yaxis()
  bar_ax.set_xlabel("final human-normalised score")
  bar_ax.set_title("Final scores (95% CI)")
  bar_ax.grid(alpha=0.3, axis="x")
  bar_ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, output)
  print("\n".join(lines))


def _save(fig, output: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  fig.savefig(output, dpi=120)
  plt.close(fig)
  print(f"wrote {output}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  patterns = ([f.logdir] if f.logdir else []) + list(f.logdirs)
  if not patterns:
    raise app.UsageError("Give --logdir=RUN or --logdirs=RUN,RUN,... (glob patterns allowed).")
  if f.labels and (f.logdir or len(f.labels) != len(f.logdirs)):
    raise app.UsageError(f"--labels needs one label per --logdirs entry: {len(f.labels)} "
                         f"labels for {len(f.logdirs)} entries.")
  if f.window < 1:
    raise app.UsageError(f"--window must be >= 1, got {f.window}.")
  entries = expand_logdirs(patterns)
  runs = load_runs(entries, f.labels, f.window, f.frames_per_step)
  if not runs:
    raise app.UsageError(f"No finished episodes yet in {', '.join(d for _, d in entries)}.")
  single = len(entries) == 1
  if f.output:
    output = f.output
  elif single:
    output = os.path.join(entries[0][1], "learning_curve.png")
  else:
    common = os.path.commonpath([os.path.abspath(d) for _, d in entries])
    output = os.path.join(common, "learning_curves.png")
  title = f.title or (os.path.basename(os.path.normpath(entries[0][1])) if single
                      else f"{len(runs)} runs")
  plot_curves(runs, output, title, f.band, f.window)
  for run in runs:
    print(f"  {run.env_id} {run.label}: {run.logdir}: {len(run.score)} points "
          f"({run.source}), last score {run.score[-1]:.2f}, best {run.score.max():.2f}")
  games = {r.env_id for r in runs if atari_scores.game_name(r.env_id)}
  if len(games) >= 2:
    stem, _ = os.path.splitext(output)
    plot_aggregate(runs, f.aggregate_output or f"{stem}_aggregate.png",
                   f"{title}: {len(games)} Atari games", f.bootstrap_reps, f.seed)


if __name__ == "__main__":
  define_flags()
  app.run(main)
