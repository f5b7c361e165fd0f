r"""How fast impala_jax learns: agent steps and wall time to a score, over configs and seeds.

    python benchmarks/learning.py --configs=experiments/configs/pong_impala.flags --seeds=0,1
    python benchmarks/learning.py --configs=a.flags,b.flags --seeds=0 --threshold=18 \
        --stop_at_threshold --output_dir=benchmarks/results/learning_pong
    python benchmarks/learning.py --summarize_only --output_dir=...   # re-read finished runs

Each (config, seed) is one training run of `--script` (experiments/atari.py) with
`--flagfile=<config> --seed=<seed>`, run one after another (they would share the CPUs), in
`<output_dir>/<config name>/seed_<seed>`. A run's score at any point is the mean real game
score (whole games, unclipped) of the last 20 games finished, read from its `episodes.csv`.
The report gives per config: agent steps and wall minutes until the score first reaches
`--threshold` (median over seeds, and each seed), the final score, and agent steps/s; a PNG
of the score curves (mean and min–max over seeds) against frames and against wall time; and
everything as JSON.

`--stop_at_threshold` ends a run (SIGTERM: a clean stop with a checkpoint) once its score
reaches the threshold, for sweeps where only the time to the threshold matters.
"""

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import learning_report
from benchmarks import learning_scores
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_POLL_SECONDS = 5.0
# A run that ends on SIGTERM checkpoints and joins its threads in seconds; past this, kill it.
_STOP_GRACE_SECONDS = 120.0


def define_flags() -> None:
  flags.DEFINE_list("configs", [], "Flagfiles of the configurations to compare.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; each config runs once per seed.")
  flags.DEFINE_string("script", os.path.join(_REPO, "experiments", "atari.py"),
                      "The training script.")
  flags.DEFINE_list("run_flags", [], "Extra flags for every run, e.g. "
                    "--run_flags=--total_env_steps=4000000.")
  flags.DEFINE_float("threshold", 18.0, "The score to reach (Pong: 18).")
  flags.DEFINE_bool("stop_at_threshold", False, "End each run once it reaches the threshold.")
  flags.DEFINE_integer("frames_per_step", 4, "Frames per agent step (Atari: 4).")
  flags.DEFINE_string("output_dir", "benchmarks/results/learning", "Runs, report and plot.")
  flags.DEFINE_bool("summarize_only", False, "Do not run: summarise the runs in output_dir.")
  flags.DEFINE_string("title", "", "Plot title.")


def config_name(flagfile: str) -> str:
  return os.path.splitext(os.path.basename(flagfile))[0]


def run_one(script: str, flagfile: str, seed: int, logdir: str, run_flags: Sequence[str],
            stop_at: Optional[float]) -> int:
  """Trains one run to its end (or to `stop_at`); returns the script's exit code."""
  cmd = [sys.executable, script, f"--flagfile={flagfile}", f"--seed={seed}",
         f"--logdir={logdir}", "--progress=false", *run_flags]
  if os.path.isdir(os.path.join(logdir, "checkpoints")):
    cmd.append("--resume")  # Continue an interrupted benchmark rather than refuse.
  os.makedirs(logdir, exist_ok=True)
  with open(os.path.join(logdir, "stdout.log"), "a") as log:
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=_REPO)
    try:
      while process.poll() is None:
        time.sleep(_POLL_SECONDS)
        if stop_at is not None and _reached(logdir, stop_at):
          process.send_signal(signal.SIGTERM)
          process.wait(timeout=_STOP_GRACE_SECONDS)
    finally:
      if process.poll() is None:  # Interrupted (Ctrl-C) or past the grace period.
        process.kill()
        process.wait()
  return process.returncode


def _reached(logdir: str, threshold: float) -> bool:
  episodes = learning_scores.read_episodes(logdir)
  return learning_scores.first_crossing(episodes, threshold) is not None


def run_all(configs: Sequence[str], seeds: Sequence[int], output_dir: str, script: str,
            run_flags: Sequence[str], stop_at: Optional[float]) -> None:
  for flagfile in configs:
    for seed in seeds:
      logdir = os.path.join(output_dir, config_name(flagfile), f"seed_{seed}")
      print(f"{config_name(flagfile)}, seed {seed}: {logdir}", flush=True)
      code = run_one(script, os.path.abspath(flagfile), seed, logdir, run_flags, stop_at)
      if code not in (0, -signal.SIGTERM):
        print(f"  exit code {code}; see {logdir}/stdout.log", flush=True)


def summarize(output_dir: str, threshold: float) -> Dict[str, Any]:
  """Every `<config>/seed_<s>` run under `output_dir`, summarised per config."""
  report: Dict[str, Any] = {"threshold": threshold, "configs": {}}
  for name in sorted(os.listdir(output_dir)):
    config_dir = os.path.join(output_dir, name)
    runs = {}
    for seed_dir in sorted(os.listdir(config_dir)) if os.path.isdir(config_dir) else []:
      logdir = os.path.join(config_dir, seed_dir)
      if os.path.exists(os.path.join(logdir, "episodes.csv")):
        runs[seed_dir] = learning_scores.summarize_run(logdir, threshold)
    if runs:
      report["configs"][name] = {"runs": runs, **learning_scores.aggregate(runs)}
  return report


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f.summarize_only:
    if not f.configs:
      raise app.UsageError("--configs lists no flagfile.")
    missing = [c for c in f.configs if not os.path.exists(c)]
    if missing:
      raise app.UsageError(f"No such flagfile: {', '.join(missing)}.")
    run_all(f.configs, [int(s) for s in f.seeds], f.output_dir, f.script, f.run_flags,
            f.threshold if f.stop_at_threshold else None)
  report = summarize(f.output_dir, f.threshold)
  if not report["configs"]:
    raise app.UsageError(f"No runs with an episodes.csv under {f.output_dir}.")
  print(learning_report.format_table(report, f.frames_per_step))
  with open(os.path.join(f.output_dir, "learning.json"), "w") as out:
    json.dump(report, out, indent=2)
  png = os.path.join(f.output_dir, "learning_curves.png")
  learning_report.plot(report, png, f.frames_per_step, f.title or None)
  print(f"Wrote {f.output_dir}/learning.json and {png}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
