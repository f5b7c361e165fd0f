"""Tests for experiments/plot_metrics.py on synthetic runs (episodes.csv / metrics.csv files)."""

import json
import os
import subprocess
import sys

import imageio
import numpy as np

from impala_jax.envs import atari_scores

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "plot_metrics.py")
PNG = b"\x89PNG\r\n\x1a\n"


def _fake_run(logdir, env_id, slope, seed, games=120):
  """A run whose human-normalised score climbs by `slope` per 100k agent steps."""
  os.makedirs(logdir)
  with open(os.path.join(logdir, "config.json"), "w") as f:
    json.dump({"env": {"env_id": env_id, "frame_skip": 4}}, f)
  ref = atari_scores.reference_scores(env_id)
  rng = np.random.default_rng(seed)
  with open(os.path.join(logdir, "episodes.csv"), "w") as f:
    f.write("env_steps,wall_seconds,episode_return,episode_length\n")
    for i in range(games):
      steps = 2_000 * (1 + i // 2)  # Two games per metrics row share its env_steps.
      hns = slope * steps / 100_000 + rng.normal(0, 0.02)
      score = ref.random + hns * (ref.human - ref.random)
      f.write(f"{steps},{steps / 1000:.3f},{score:.2f},{500 + i}\n")


def _plot(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=300, check=False)


def _assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG
  image = imageio.v3.imread(path)
  assert image.shape[0] > 200 and image.shape[1] > 400


def test_two_runs_on_two_games_give_curves_and_an_aggregate(tmp_path):
  _fake_run(tmp_path / "impala" / "Pong-v5" / "seed_0", "Pong-v5", 0.5, 0)
  _fake_run(tmp_path / "impala" / "Breakout-v5" / "seed_0", "Breakout-v5", 1.0, 1)
  output = tmp_path / "plots" / "curves.png"
  result = _plot(f"--logdirs={tmp_path}/impala/*/seed_*", f"--output={output}",
                 "--bootstrap_reps=200")
  assert result.returncode == 0, result.stderr
  _assert_png(output)
  _assert_png(tmp_path / "plots" / "curves_aggregate.png")
  # Labelled "impala" (seed_N and game directories skipped); the final score is the mean of
  # the last 20 games, and the aggregate lines print median, IQM and mean.
  assert "Pong-v5 impala:" in result.stdout and "Breakout-v5 impala:" in result.stdout
  assert "impala    iqm" in result.stdout


def test_single_run_usage_falls_back_to_metrics_csv(tmp_path):
  logdir = tmp_path / "old_run"
  os.makedirs(logdir)
  with open(logdir / "metrics.csv", "w") as f:  # A run from before episodes.csv.
    f.write("env_steps,wall_seconds,episode_return,loss\n")
    f.write("1000,10.0,,1.0\n2000,20.0,-20.5,0.9\n3000,30.0,-19.0,0.8\n")
  result = _plot(f"--logdir={logdir}")
  assert result.returncode == 0, result.stderr
  _assert_png(logdir / "learning_curve.png")
  assert "2 points (metrics.csv), last score -19.00, best -19.00" in result.stdout
  assert not (logdir / "learning_curve_aggregate.png").exists()


def test_labels_group_runs_and_bad_patterns_fail(tmp_path):
  for seed in range(2):
    _fake_run(tmp_path / "a" / f"seed_{seed}", "Pong-v5", 0.5, seed)
    _fake_run(tmp_path / "b" / f"seed_{seed}", "Pong-v5", 1.0, seed + 5)
  output = tmp_path / "labelled.png"
  result = _plot(f"--logdirs={tmp_path}/a/*,{tmp_path}/b/*", "--labels=slow,fast",
                 f"--output={output}", "--band=stderr")
  assert result.returncode == 0, result.stderr
  _assert_png(output)
  assert result.stdout.count("Pong-v5 slow:") == 2 and result.stdout.count("Pong-v5 fast:") == 2
  result = _plot(f"--logdirs={tmp_path}/nothing_here_*")
  assert result.returncode != 0 and "No run directory matches" in result.stderr
  assert "Traceback" not in result.stderr, result.stderr  # A usage error, not a crash.


def test_a_multi_task_run_gives_a_curve_per_game_and_their_aggregate(tmp_path):
  logdir = tmp_path / "multi"
  os.makedirs(logdir)
  games = ("Pong-v5", "Breakout-v5")
  with open(logdir / "config.json", "w") as f:
    json.dump({"env": {"env_id": ",".join(games), "frame_skip": 4}}, f)
  rng = np.random.default_rng(0)
  scores = {game: [] for game in games}
  with open(logdir / "episodes.csv", "w") as f:
    f.write("env_steps,wall_seconds,episode_return,episode_length,source,game\n")
    for i in range(240):  # The games alternate; Breakout learns twice as fast.
      game = games[i % 2]
      ref = atari_scores.reference_scores(game)
      steps = 2_000 * (1 + i // 4)
      hns = (1 + i % 2) * 0.5 * steps / 100_000 + rng.normal(0, 0.02)
      scores[game].append(round(ref.random + hns * (ref.human - ref.random), 2))
      f.write(f"{steps},{steps / 1000:.3f},{scores[game][-1]:.2f},{500 + i},local,{game}\n")
  result = _plot(f"--logdir={logdir}", "--bootstrap_reps=200")
  assert result.returncode == 0, result.stderr
  _assert_png(logdir / "learning_curve.png")
  _assert_png(logdir / "learning_curve_aggregate.png")
  # One curve per game, under the run's label: the mean of that game's own last 20 games.
  for game in games:
    assert f"{game} multi: {logdir}: 60 points (episodes.csv), last score " + (
        f"{np.mean(scores[game][-20:]):.2f}") in result.stdout, result.stdout
  assert "multi    iqm" in result.stdout  # The aggregate over the run's two games.
