"""The learning benchmark's table and plot (score curves: mean and min–max over seeds)."""

import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

_GRID_POINTS = 200


def _fmt_steps(steps: Optional[float]) -> str:
  return "-" if steps is None else f"{steps / 1e6:.2f}M"


def _fmt_minutes(seconds: Optional[float]) -> str:
  return "-" if seconds is None else f"{seconds / 60:.1f}"


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(report: Mapping[str, Any], frames_per_step: int = 4) -> str:
  """One line per config: steps and minutes to the threshold (median; per seed), final score."""
  threshold = report["threshold"]
  lines = [f"Score = mean real score of the last 20 games; threshold {threshold:g}. "
           f"Frames = {frames_per_step} × agent steps.",
           f"{'config':<28}{'seeds':>6}{'reached':>8}{'steps to':>10}{'minutes to':>11}"
           f"{'final':>8}{'steps/s':>9}   per seed: steps / minutes to threshold, final"]
  for name, c in report["configs"].items():
    per_seed = "; ".join(
        f"{seed}: {_fmt_steps(r['steps_to_threshold'])} / "
        f"{_fmt_minutes(r['seconds_to_threshold'])}, {_fmt(r['final_score'], '.1f')} at "
        f"{_fmt_steps(r['final_env_steps'])}" for seed, r in c["runs"].items())
    lines.append(f"{name:<28}{c['seeds']:>6}{c['reached']:>8}"
                 f"{_fmt_steps(c['median_steps_to_threshold']):>10}"
                 f"{_fmt_minutes(c['median_seconds_to_threshold']):>11}"
                 f"{_fmt(c['mean_final_score'], '.1f'):>8}"
                 f"{_fmt(c['mean_steps_per_second'], '.0f'):>9}   {per_seed}")
  return "\n".join(lines)


def scores_on_grid(runs: Sequence[Mapping[str, Any]], x_key: str, grid: np.ndarray) -> np.ndarray:
  """Each run's score curve at `grid` (step-wise: the latest score so far; NaN past its end)."""
  curves = []
  for r in runs:
    x = np.asarray(r["curve"][x_key], float)
    y = np.asarray(r["curve"]["score"], float)
    index = np.searchsorted(x, grid, side="right") - 1
    values = np.where(index >= 0, y[np.clip(index, 0, None)] if len(y) else np.nan, np.nan)
    values[grid > (x[-1] if len(x) else -1)] = np.nan
    curves.append(values)
  return np.asarray(curves)


def plot(report: Mapping[str, Any], path: str, frames_per_step: int = 4,
         title: Optional[str] = None) -> None:
  """Score against frames (left) and wall minutes (right), one colour per config."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Headless: writes the file, never opens a window.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for name, c in report["configs"].items():
    runs = [r for r in c["runs"].values() if r["curve"]["score"]]
    if not runs:
      continue
    for ax, key, scale in ((axes[0], "env_steps", frames_per_step / 1e6),
                           (axes[1], "wall_seconds", 1 / 60)):
      end = max(r["curve"][key][-1] for r in runs)
      grid = np.linspace(0, end, _GRID_POINTS)
      curves = scores_on_grid(runs, key, grid)
      # The mean and band only where every seed has a score: past a seed's end (a run stopped
      # at the threshold) a mean over the others would jump. Each seed is also drawn thin.
      covered = ~np.isnan(curves).any(axis=0)
      mean = np.where(covered, curves.mean(axis=0), np.nan)
      seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
      line, = ax.plot(grid * scale, mean, lw=1.6, label=f"{name} ({seeds})")
      if len(runs) > 1:
        ax.fill_between(grid * scale, np.where(covered, curves.min(axis=0), np.nan),
                        np.where(covered, curves.max(axis=0), np.nan),
                        color=line.get_color(), alpha=0.2, lw=0)
        for curve in curves:
          ax.plot(grid * scale, curve, lw=0.6, alpha=0.6, color=line.get_color())
  for ax in axes:
    ax.axhline(report["threshold"], color="gray", ls="--", lw=0.8)
    ax.grid(alpha=0.3)
  axes[0].set_xlabel("frames (millions)")
  axes[1].set_xlabel("wall time (minutes)")
  axes[0].set_ylabel("score: mean of the last 20 games")
  axes[0].legend(loc="lower right", fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def curves_at(report: Mapping[str, Any], name: str, env_steps: List[int]) -> Dict[int, float]:
  """Mean score over seeds of config `name` at given agent steps (for docs tables)."""
  runs = list(report["configs"][name]["runs"].values())
  grid = np.asarray(env_steps, float)
  with np.errstate(all="ignore"):
    mean = np.nanmean(scores_on_grid(runs, "env_steps", grid), axis=0)
  return {s: float(v) for s, v in zip(env_steps, mean)}


def write_outputs(output_dir: str, stem: str, json_report: Any,
                  draw: Callable[[str], None]) -> None:
  """Writes `<stem>.json` and, through `draw(path)`, `<stem>_curves.png` into `output_dir`."""
  json_path = os.path.join(output_dir, f"{stem}.json")
  with open(json_path, "w") as out:
    json.dump(json_report, out, indent=2)
  png = os.path.join(output_dir, f"{stem}_curves.png")
  draw(png)
  print(f"Wrote {json_path} and {png}")
