r"""Multi-task Atari with and without PopArt (Hessel et al. 2019, arXiv 1809.04474), small scale.

    python benchmarks/multitask.py --seeds=0,1 --output_dir=benchmarks/results/multitask
    python benchmarks/multitask.py --summarize_only --output_dir=...   # re-read finished runs

One agent plays several Atari games in one run (`--env=Pong-v5,Breakout-v5,...`), in three
variants at equal budgets, `--configs` (experiments/configs/multitask_*.flags, which differ only
in these): clipped rewards (the paper's IMPALA), the games' own rewards without PopArt, and
with PopArt. The paper's claim: unclipped without PopArt fails (the games with large rewards
dominate), and with PopArt the median human-normalised score beats clipped IMPALA's.

Each (variant, seed) is one run of `--script` with `--flagfile=<config> --seed=<seed>`, in
`<output_dir>/<config name>/seed_<seed>`, seed by seed (an interrupted sweep resumes, and leaves
whole seeds: every variant of its first seeds).

The report, per variant:
  * each game's final score, the mean real score of its last 20 games (episodes.csv's `game`
    column: what the run logs as `recent_episode_return/<game>`), and its human-normalised
    score (HNS, `envs.atari_scores`), per seed and as the mean over seeds;
  * the median and IQM of the final HNS (rliable's, `evaluation.aggregate`: the median over
    games of each game's mean over seeds, the IQM of all game × seed scores), with 95%
    stratified-bootstrap intervals; and each seed's own median over its games;
  * the mean over the run of the median HNS: the area under the run's median-HNS curve divided
    by the budget, as benchmarks/ablation.py measures scores (how soon a variant learned, less
    noisy than the final value). At each point a game's HNS is that of its latest score, 0 (a
    random policy) before its first game; the curve is the median over games, the run's logged
    `recent_human_normalized_score` once every game has a score.
A run enters the report once every one of its games has finished a game (games without human
reference scores are refused: their HNS is undefined). Also a PNG (a panel
per game: score against frames, one colour per variant, mean and min–max over seeds; and a
panel of the median-HNS curve) and the numbers as JSON (without the curves).
"""

import collections
import os
import statistics
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import learning
from benchmarks import learning_report
from benchmarks import learning_scores
from experiments import run_curves
from impala_jax import config as config_lib
from impala_jax.envs import atari_scores
from impala_jax.evaluation import aggregate
from impala_jax.runtime import metrics as metrics_lib
from impala_jax.runtime import telemetry
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("multitask_clipped", "multitask_unclipped", "multitask_popart")
GAMES = telemetry.RECENT_EPISODES  # A game's score is the mean of its last this many games.
_GRID_POINTS = 200
_METRICS = ("median", "iqm", "mean")


def define_flags() -> None:
  flags.DEFINE_list("configs", [os.path.join("experiments", "configs", f"{v}.flags")
                                for v in VARIANTS],
                    "Flagfiles of the variants, all with the same games and budget.")
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each variant runs once per seed.")
  flags.DEFINE_string("script", os.path.join(_REPO, "experiments", "atari.py"),
                      "The training script.")
  flags.DEFINE_list("run_flags", [], "Extra flags for every run, e.g. "
                    "--run_flags=--total_env_steps=3000000 (split at commas: another list of "
                    "games goes in flagfiles of its own).")
  flags.DEFINE_integer("frames_per_step", 4, "Frames per agent step (Atari: 4).")
  flags.DEFINE_integer("bootstrap_reps", 2000, "Bootstrap replicates of the 95% intervals.")
  flags.DEFINE_string("output_dir", "benchmarks/results/multitask", "Runs, report and plot.")
  flags.DEFINE_bool("summarize_only", False, "Do not run: summarise the runs in output_dir.")
  flags.DEFINE_string("title", "", "Plot title.")


def run_sweep(configs: Sequence[str], seeds: Sequence[int], output_dir: str, script: str,
              run_flags: Sequence[str]) -> None:
  # Seed by seed: an interrupted sweep leaves every variant's first seeds, a fair comparison.
  for seed in seeds:
    for flagfile in configs:
      name = learning.config_name(flagfile)
      logdir = os.path.join(output_dir, name, f"seed_{seed}")
      print(f"{name}, seed {seed}: {logdir}", flush=True)
      code = learning.run_one(script, os.path.abspath(flagfile), seed, logdir, run_flags,
                              stop_at=None)
      if code != 0:
        print(f"  exit code {code}; see {logdir}/stdout.log", flush=True)


# -- one run ----------------------------------------------------------------------------------


def run_games(logdir: str) -> List[str]:
  """The run's games in `--env`'s order (its config.json); [] before the run wrote one.

  Raises:
    ValueError: a game without human and random reference scores (not one of the Atari-57).
  """
  config = run_curves.read_config(logdir)
  if config is None:
    return []
  games = config["env"]["env_id"].split(config_lib.TASK_SEPARATOR)
  unscored = [g for g in games if atari_scores.reference_scores(g) is None]
  if unscored:
    raise ValueError(f"{logdir} plays {', '.join(unscored)}, which has no human reference "
                     "score (envs/atari_scores.py): its human-normalised score is undefined.")
  return games


def summarize_run(logdir: str) -> Optional[Dict[str, Any]]:
  """Each game's final score and HNS, and its curve; None until every game has finished one."""
  played = collections.Counter(
      r.get("game") for r in metrics_lib.read_csv(os.path.join(logdir, "episodes.csv")))
  games, curves = {}, {}
  for env_id in run_games(logdir):
    curve = run_curves.load_curve(logdir, GAMES, game=env_id)
    if curve is None:
      return None
    steps, wall, score, _ = curve
    final = float(score[-1])
    games[env_id] = dict(final_score=final, episodes=played[env_id],
                         hns=atari_scores.human_normalized_score(env_id, final))
    curves[env_id] = dict(env_steps=steps.tolist(), wall_seconds=wall.tolist(),
                          score=score.tolist())
  if not games:
    return None
  # Where the run is: its last metrics row, usually past its last finished game.
  rows = metrics_lib.read_csv(os.path.join(logdir, "metrics.csv"))
  last_game = max(c["env_steps"][-1] for c in curves.values())
  return dict(games=games, median_hns=float(np.median([g["hns"] for g in games.values()])),
              final_env_steps=int(max(rows[-1]["env_steps"] if rows else 0, last_game)),
              final_wall_seconds=rows[-1]["wall_seconds"] if rows else None,
              steps_per_second=learning_scores.steps_per_second(logdir), curves=curves)


def hns_on_grid(env_id: str, curve: Mapping[str, Sequence[float]],
                grid: np.ndarray) -> np.ndarray:
  """A game's HNS at `grid` agent steps: that of its latest score (step-wise, held after its
  last game), 0 (a random policy) before its first."""
  x = np.asarray(curve["env_steps"], np.float64)
  hns = np.array([atari_scores.human_normalized_score(env_id, s) for s in curve["score"]],
                 np.float64)
  index = np.searchsorted(x, grid, side="right") - 1
  return np.where(index >= 0, hns[np.clip(index, 0, None)], 0.0)


def median_hns_curve(run: Mapping[str, Any], grid: np.ndarray) -> np.ndarray:
  """The run's median over its games of each game's HNS at `grid` agent steps."""
  return np.median([hns_on_grid(env_id, curve, grid)
                    for env_id, curve in run["curves"].items()], axis=0)


def mean_median_hns(run: Mapping[str, Any], budget: float) -> float:
  """The median-HNS curve's mean over [0, budget] agent steps (the area under it / budget)."""
  return float(np.mean(median_hns_curve(run, np.linspace(0, budget, _GRID_POINTS))))


# -- variants ---------------------------------------------------------------------------------


def summarize_variant(runs: Mapping[str, Dict[str, Any]], reps: int) -> Dict[str, Any]:
  """Per game the means over seeds; the aggregates over games (module doc)."""
  budget = min(r["final_env_steps"] for r in runs.values())
  for r in runs.values():
    r["mean_median_hns"] = mean_median_hns(r, budget)
  games = list(next(iter(runs.values()))["games"])
  per_game = {env_id: dict(
      final_score=statistics.fmean(r["games"][env_id]["final_score"] for r in runs.values()),
      hns=statistics.fmean(r["games"][env_id]["hns"] for r in runs.values()))
              for env_id in games}
  table = {env_id: [r["games"][env_id]["hns"] for r in runs.values()] for env_id in games}
  intervals = aggregate.interval_estimates(table, _METRICS, reps=reps, seed=0)
  speeds = [r["steps_per_second"] for r in runs.values() if r["steps_per_second"]]
  return dict(runs=runs, budget=budget, seeds=len(runs), games=per_game,
              **{f"{name}_hns": i._asdict() for name, i in intervals.items()},
              mean_median_hns=statistics.fmean(r["mean_median_hns"] for r in runs.values()),
              steps_per_second=statistics.fmean(speeds) if speeds else None)


def summarize(output_dir: str, order: Sequence[str], reps: int) -> Dict[str, Any]:
  """Every `<variant>/seed_<s>` run under `output_dir`; variants in `order` first."""
  names = [n for n in sorted(os.listdir(output_dir))
           if os.path.isdir(os.path.join(output_dir, n))]
  names.sort(key=lambda n: order.index(n) if n in order else len(order))
  variants, waiting = {}, []
  for name in names:
    runs = {}
    for seed_dir in sorted(os.listdir(os.path.join(output_dir, name))):
      logdir = os.path.join(output_dir, name, seed_dir)
      if not os.path.isdir(logdir):
        continue
      run = summarize_run(logdir)
      if run is None:
        waiting.append(logdir)
      else:
        runs[seed_dir] = run
    if runs:
      variants[name] = summarize_variant(runs, reps)
  return dict(variants=variants, waiting=waiting)


def without_curves(report: Mapping[str, Any]) -> Dict[str, Any]:
  """The report without each run's per-game curves (the PNG draws them; `--summarize_only`
  recomputes them from the runs)."""
  variants = {name: {**v, "runs": {seed: {k: x for k, x in r.items() if k != "curves"}
                                   for seed, r in v["runs"].items()}}
              for name, v in report["variants"].items()}
  return {**report, "variants": variants}


# -- table and plot ---------------------------------------------------------------------------


def _games(report: Mapping[str, Any]) -> List[str]:
  """Every variant's games, in the order first seen."""
  return list(dict.fromkeys(g for v in report["variants"].values() for g in v["games"]))


def _steps(steps: int) -> str:
  return f"{steps / 1e6:.2f}M" if steps >= 100_000 else f"{steps / 1e3:.1f}k"


def _interval(variant: Mapping[str, Any], name: str) -> str:
  interval = variant[f"{name}_hns"]
  return f"{interval['point']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def format_table(report: Mapping[str, Any]) -> str:
  """A markdown table: one row per variant; per game the final score (each seed) and HNS; the
  median (each seed's own) and IQM of the final HNS; the mean over the run of the median HNS."""
  games = _games(report)
  header = ("| variant | agent steps | " +
            " | ".join(f"{g} final (per seed); HNS" for g in games) +
            " | median HNS [95% CI]; per seed | IQM HNS [95% CI] |"
            " median HNS, mean over run (per seed) |")
  lines = [header, "|---" * (5 + len(games)) + "|"]
  for name, v in report["variants"].items():
    runs = list(v["runs"].values())
    row = [name, _steps(v["budget"])]
    for game in games:
      g = v["games"].get(game)
      if g is None:
        row.append("–")
        continue
      seeds = ", ".join(f"{r['games'][game]['final_score']:.1f}" for r in runs)
      row.append(f"{g['final_score']:.1f} ({seeds}); {g['hns']:.3f}")
    seeds = ", ".join(f"{r['median_hns']:.3f}" for r in runs)
    row += [f"{_interval(v, 'median')}; {seeds}", _interval(v, "iqm"),
            f"{v['mean_median_hns']:.3f} (" +
            ", ".join(f"{r['mean_median_hns']:.3f}" for r in runs) + ")"]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _runs_of_game(variant: Mapping[str, Any], name: str, env_id: str,
                  frames_per_step: int) -> List[run_curves.Run]:
  runs = []
  for seed, r in variant["runs"].items():
    c = r["curves"][env_id]
    runs.append(run_curves.Run(
        seed, name, env_id, np.asarray(c["env_steps"], np.float64) * frames_per_step,
        np.asarray(c["wall_seconds"]), np.asarray(c["score"]), "episodes.csv"))
  return runs


def _seeds(count: int) -> str:
  return f"{count} seed" + ("s" if count > 1 else "")


def plot(report: Mapping[str, Any], path: str, frames_per_step: int, title: str) -> None:
  """A panel per game (score against frames, one colour per variant, mean and min–max over
  seeds), and one of the median-HNS curve."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Headless: writes the file, never opens a window.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  games = _games(report)
  rows = (len(games) + 2) // 2
  fig, axes = plt.subplots(rows, 2, figsize=(12, 4 * rows), squeeze=False)
  panels = list(axes.flat)
  for i, (name, v) in enumerate(report["variants"].items()):
    color = f"C{i}"
    for ax, env_id in zip(panels, games):
      if env_id not in v["games"]:
        continue
      curve = run_curves.group_curve(_runs_of_game(v, name, env_id, frames_per_step),
                                       "frames", "minmax")
      ax.plot(curve.x / 1e6, curve.mean, color=color, lw=1.4,
              label=f"{name} ({_seeds(curve.runs)})")
      ax.fill_between(curve.x / 1e6, curve.low, curve.high, color=color, alpha=0.15, lw=0)
    grid = np.linspace(0, v["budget"], _GRID_POINTS)
    curves = np.stack([median_hns_curve(r, grid) for r in v["runs"].values()])
    x = grid * frames_per_step / 1e6
    hns_ax = panels[len(games)]
    hns_ax.plot(x, curves.mean(axis=0), color=color, lw=1.6,
                label=f"{name} ({_seeds(len(curves))})")
    hns_ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.15,
                        lw=0)
  for ax, env_id in zip(panels, games):
    ax.set_title(env_id)
    ax.set_ylabel(f"score: mean of its last {GAMES} games")
  hns_ax = panels[len(games)]
  hns_ax.set_title(f"median over the {len(games)} games of the human-normalised score")
  hns_ax.set_ylabel("median HNS")
  for ax in panels[:len(games) + 1]:
    ax.set_xlabel("frames (millions)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
  for ax in panels[len(games) + 1:]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  bad = [s for s in f.seeds if not s.lstrip("-").isdigit()]
  if bad or not f.seeds:
    raise app.UsageError(f"--seeds must list integers, got {','.join(f.seeds) or 'none'}.")
  if f.bootstrap_reps < 1:
    raise app.UsageError(f"--bootstrap_reps must be >= 1, got {f.bootstrap_reps}.")
  if f.frames_per_step < 1:
    raise app.UsageError(f"--frames_per_step must be >= 1, got {f.frames_per_step}.")
  if not f.summarize_only:
    missing = [c for c in f.configs if not os.path.exists(c)]
    if missing or not f.configs:
      raise app.UsageError(f"--configs: no such flagfile: {', '.join(missing) or 'none given'}.")
    run_sweep(f.configs, [int(s) for s in f.seeds], f.output_dir, f.script, f.run_flags)
  if not os.path.isdir(f.output_dir):
    raise app.UsageError(f"--output_dir={f.output_dir}: no such directory.")
  try:
    report = summarize(f.output_dir, [learning.config_name(c) for c in f.configs],
                       f.bootstrap_reps)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  for logdir in report["waiting"]:
    print(f"not yet in the report (a game without a finished game): {logdir}")
  if not report["variants"]:
    raise app.UsageError(f"No runs under {f.output_dir} where every game has finished a game.")
  print(format_table(report))
  learning_report.write_outputs(f.output_dir, "multitask", without_curves(report),
                                lambda png: plot(report, png, f.frames_per_step, f.title))


if __name__ == "__main__":
  define_flags()
  app.run(main)
