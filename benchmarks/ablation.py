r"""The off-policy correction ablation (IMPALA paper §5.3, Table 2): corrections × policy lags.

    python benchmarks/ablation.py --config=experiments/configs/cartpole_ablation.flags \
        --script=experiments/control.py --frames_per_step=1 --seeds=0,1 \
        --output_dir=benchmarks/results/ablation_cartpole
    python benchmarks/ablation.py --config=experiments/configs/breakout_ablation.flags \
        --seeds=0,1 --output_dir=benchmarks/results/ablation_breakout
    python benchmarks/ablation.py --summarize_only --output_dir=...   # re-read finished runs

Each (correction, delay, seed) is one run of `--script` with `--flagfile=<config>`,
`--correction=<c>` and `--publish_delay_updates=<delay>` (the actors act with parameters
`delay` updates old, on top of the lag the layout has by itself), one after another, in
`<output_dir>/<correction>_delay<delay>/seed_<seed>` (an interrupted sweep resumes). As in the
paper, every run has the same budget and the comparison is of scores, not of time.

The report, per cell: the final score (the mean real score of the last 20 games, mean over
seeds, and each seed), the mean score over the run (the area under the score curve divided by
the budget: it counts how soon a run learned, and is less noisy than the final score), and the
measured policy lag (metrics.csv `policy_lag`, mean over the rows of the run's second half);
a PNG with one panel per delay, score against frames, one colour per correction (mean and
min–max over seeds); and the numbers as JSON (without the curves).
"""

import os
import statistics
import sys
from typing import Any, Dict, List, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import learning
from benchmarks import learning_report
from benchmarks import learning_scores
from impala_jax.runtime import metrics as metrics_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRECTIONS = ("vtrace", "is_1step", "epsilon", "none")
_GRID_POINTS = 200


def define_flags() -> None:
  flags.DEFINE_string("config", None, "The flagfile every run starts from.")
  flags.DEFINE_string("script", os.path.join(_REPO, "experiments", "atari.py"),
                      "The training script.")
  flags.DEFINE_list("corrections", list(CORRECTIONS), "The corrections (--correction) to run.")
  flags.DEFINE_list("delays", ["0", "16"], "The --publish_delay_updates values to run.")
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each cell runs once per seed.")
  flags.DEFINE_list("run_flags", [], "Extra flags for every run.")
  flags.DEFINE_integer("frames_per_step", 4, "Frames per agent step (Atari: 4).")
  flags.DEFINE_string("output_dir", "benchmarks/results/ablation", "Runs, report and plot.")
  flags.DEFINE_bool("summarize_only", False, "Do not run: summarise the runs in output_dir.")
  flags.DEFINE_string("title", "", "Plot title.")


def cell_name(correction: str, delay: int) -> str:
  return f"{correction}_delay{delay}"


def run_grid(config: str, script: str, corrections: Sequence[str], delays: Sequence[int],
             seeds: Sequence[int], output_dir: str, run_flags: Sequence[str]) -> None:
  # Seed by seed: an interrupted sweep leaves whole grids of the first seeds.
  for seed in seeds:
    for delay in delays:
      for correction in corrections:
        logdir = os.path.join(output_dir, cell_name(correction, delay), f"seed_{seed}")
        print(f"{cell_name(correction, delay)}, seed {seed}: {logdir}", flush=True)
        code = learning.run_one(
            script, os.path.abspath(config), seed, logdir,
            [*run_flags, f"--correction={correction}", f"--publish_delay_updates={delay}"],
            stop_at=None)
        if code != 0:
          print(f"  exit code {code}; see {logdir}/stdout.log", flush=True)


def mean_score(run: Mapping[str, Any], budget: float) -> float:
  """The score curve's mean over [0, budget] agent steps (0 before the first game's score)."""
  grid = np.linspace(0, budget, _GRID_POINTS)
  curve = learning_report.scores_on_grid([run], "env_steps", grid)[0]
  return float(np.mean(np.nan_to_num(curve[grid <= run["final_env_steps"]], nan=0.0)))


def measured_lag(logdir: str) -> float:
  """The mean policy lag (in updates) over the second half of the run's metrics rows."""
  rows = metrics_lib.read_csv(os.path.join(logdir, "metrics.csv"))
  lags = [r["policy_lag"] for r in rows[len(rows) // 2:] if r.get("policy_lag") is not None]
  return statistics.fmean(lags) if lags else float("nan")


def summarize(output_dir: str) -> Dict[str, Any]:
  """Every `<correction>_delay<d>/seed_<s>` run under `output_dir`, summarised per cell."""
  cells: Dict[str, Any] = {}
  for name in sorted(os.listdir(output_dir)):
    config_dir = os.path.join(output_dir, name)
    if not os.path.isdir(config_dir) or "_delay" not in name:
      continue
    logdirs = {s: os.path.join(config_dir, s) for s in sorted(os.listdir(config_dir))
               if os.path.exists(os.path.join(config_dir, s, "episodes.csv"))}
    runs = {s: learning_scores.summarize_run(d, threshold=float("inf"))
            for s, d in logdirs.items()}
    if not runs:
      continue
    budget = min(r["final_env_steps"] for r in runs.values())
    for seed, r in runs.items():
      r.update(mean_score=mean_score(r, budget), policy_lag=measured_lag(logdirs[seed]))
    correction, delay = name.rsplit("_delay", 1)
    cells[name] = dict(correction=correction, delay=int(delay), runs=runs, budget=budget,
                       **{k: statistics.fmean(r[k] for r in runs.values())
                          for k in ("final_score", "mean_score", "policy_lag")})
  return {"threshold": float("inf"), "configs": cells}


def without_curves(report: Mapping[str, Any]) -> Dict[str, Any]:
  """The report without each run's score curve (thousands of games; the PNG draws them, and
  `--summarize_only` recomputes them from the runs)."""
  cells = {name: {**c, "runs": {seed: {k: v for k, v in r.items() if k != "curve"}
                                for seed, r in c["runs"].items()}}
           for name, c in report["configs"].items()}
  return {**report, "configs": cells}


def format_table(report: Mapping[str, Any]) -> str:
  """A markdown table: one row per correction, per delay the final and mean scores and lag."""
  cells = report["configs"]
  delays = sorted({c["delay"] for c in cells.values()})
  corrections = [c for c in CORRECTIONS if any(v["correction"] == c for v in cells.values())]
  header = "| correction | " + " | ".join(
      f"final, delay {d} (per seed) | mean over run, delay {d} | lag, delay {d}"
      for d in delays) + " |"
  lines = [header, "|---" * (1 + 3 * len(delays)) + "|"]
  for correction in corrections:
    row = [correction]
    for delay in delays:
      c = cells.get(cell_name(correction, delay))
      if c is None:
        row += ["–"] * 3
        continue
      seeds = ", ".join(f"{r['final_score']:.1f}" for r in c["runs"].values())
      row += [f"{c['final_score']:.2f} ({seeds})", f"{c['mean_score']:.2f}",
              f"{c['policy_lag']:.1f}"]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def plot(report: Mapping[str, Any], path: str, frames_per_step: int, title: str) -> None:
  """One panel per delay: score against frames, one colour per correction."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Headless.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cells = report["configs"]
  delays = sorted({c["delay"] for c in cells.values()})
  fig, axes = plt.subplots(1, len(delays), figsize=(6 * len(delays), 4.5), sharey=True,
                           squeeze=False)
  for ax, delay in zip(axes[0], delays):
    for correction in CORRECTIONS:
      c = cells.get(cell_name(correction, delay))
      if c is None:
        continue
      runs: List[Mapping[str, Any]] = list(c["runs"].values())
      grid = np.linspace(0, c["budget"], _GRID_POINTS)
      curves = learning_report.scores_on_grid(runs, "env_steps", grid)
      x = grid * frames_per_step / 1e6
      line, = ax.plot(x, curves.mean(axis=0), lw=1.6,
                      label=f"{correction} (lag {c['policy_lag']:.1f}, {len(runs)} "
                      f"seed{'s' if len(runs) > 1 else ''})")
      ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=line.get_color(),
                      alpha=0.15, lw=0)
    ax.set_title(f"--publish_delay_updates={delay}")
    ax.set_xlabel("frames (millions)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
  axes[0][0].set_ylabel("score: mean of the last 20 games")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  unknown = [c for c in f.corrections if c not in CORRECTIONS]
  if unknown:
    raise app.UsageError(f"Unknown --corrections {unknown}; accepted: {', '.join(CORRECTIONS)}.")
  if not f.summarize_only:
    if not f.config or not os.path.exists(f.config):
      raise app.UsageError(f"--config={f.config}: no such flagfile.")
    run_grid(f.config, f.script, f.corrections, [int(d) for d in f.delays],
             [int(s) for s in f.seeds], f.output_dir, f.run_flags)
  report = summarize(f.output_dir)
  if not report["configs"]:
    raise app.UsageError(f"No runs with an episodes.csv under {f.output_dir}.")
  print(format_table(report))
  learning_report.write_outputs(f.output_dir, "ablation", without_curves(report),
                                lambda png: plot(report, png, f.frames_per_step, f.title))


if __name__ == "__main__":
  define_flags()
  app.run(main)
