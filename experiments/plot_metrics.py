r"""Learning curves of one or several runs, grouped by label, and an aggregate over Atari games.

    python experiments/plot_metrics.py --logdir=runs/pong_2m --output=docs/results/pong.png
    python experiments/plot_metrics.py --logdirs='sweep_runs/*/seed_*' --output=/tmp/sweep.png
    python experiments/plot_metrics.py --logdirs=runs/a,runs/b --labels=baseline,lr1e-3

The score of a run at a point (`experiments/run_curves.py`, which reads the runs and
groups them) is the mean real score of its last --window games, as the run logs it (`runtime.scores`, from `episodes.csv`; runs without one fall back to `metrics.csv`'s
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

import os
import sys
from typing import Dict, List, Sequence, Tuple

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")  # Headless: writes files, never opens a window.
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt

from impala_jax.envs import atari_scores
from impala_jax.evaluation import aggregate
from impala_jax.runtime import telemetry

# Run as a script, the repository root is not on the path: add it for `experiments.run_curves`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.run_curves import expand_logdirs
from experiments.run_curves import final_hns
from experiments.run_curves import group_curve
from experiments.run_curves import hns_iqm_curve
from experiments.run_curves import load_runs
from experiments.run_curves import Run
# pylint: enable=g-import-not-at-top,wrong-import-position


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
  try:
    entries = expand_logdirs(patterns)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
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
