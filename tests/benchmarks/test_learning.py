"""The learning benchmark: its score arithmetic, and a real CartPole run to a threshold."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import learning_report
from benchmarks import learning_scores
from impala_jax.runtime import scores as scores_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _episodes(returns, steps_per_game=100):
  return [learning_scores.Episode((i + 1) * steps_per_game, float(i + 1), r)
          for i, r in enumerate(returns)]


def test_the_curve_is_the_mean_of_the_last_20_games_after_each_game(tmp_path):
  with open(tmp_path / "episodes.csv", "w") as f:
    f.write("env_steps,wall_seconds,episode_return,episode_length,source\n")
    f.writelines(f"{100 * (i + 1)},{i + 1}.0,{i},10,local\n" for i in range(30))
  curve = learning_scores.summarize_run(str(tmp_path), threshold=18.0)["curve"]
  assert curve["score"][0] == 0.0 and curve["score"][3] == pytest.approx(1.5)  # Fewer than 20.
  assert curve["score"][19] == pytest.approx(sum(range(20)) / 20)
  assert curve["score"][29] == pytest.approx(sum(range(10, 30)) / 20)
  assert curve["env_steps"][:2] == [100, 200] and curve["wall_seconds"][:2] == [1.0, 2.0]


def test_the_threshold_counts_only_once_20_games_are_in():
  # A lucky first game must not count as "solved": 21 at game 1, then -21s, then 20s.
  returns = [21.0] + [-21.0] * 19 + [20.0] * 25
  episodes = _episodes(returns)
  crossing = learning_scores.first_crossing(episodes, threshold=18.0)
  # With one -21 among the last 20 the mean is (19·20 − 21)/20 = 17.95; with none, 20: game 40.
  assert crossing == episodes[39]
  assert learning_scores.first_crossing(episodes, threshold=20.5) is None


def test_the_threshold_is_judged_at_the_end_of_each_metrics_row():
  # Games are recorded several to a metrics row (same env_steps). Mid-row the mean of the last
  # 20 touches 18, but the row ends lower: the curve and the logged score say 17, not reached.
  returns = [18.0] * 20 + [-2.0]
  episodes = [learning_scores.Episode(1000 if i < 19 else 2000, float(i), r)
              for i, r in enumerate(returns)]
  assert scores_lib.row_ends([e.env_steps for e in episodes]).tolist() == [18, 20]
  assert learning_scores.first_crossing(episodes, threshold=18.0) is None
  assert learning_scores.first_crossing(episodes, threshold=17.0) == episodes[20]


def test_median_over_seeds_counts_unreached_seeds_as_never():
  runs = {f"seed_{i}": dict(steps_to_threshold=s, seconds_to_threshold=s, final_score=1.0,
                            steps_per_second=10.0)
          for i, s in enumerate([100, None, 300])}
  summary = learning_scores.aggregate(runs)
  assert summary["reached"] == 2
  assert summary["median_steps_to_threshold"] == 300  # Sorted: 100, 300, never.
  runs["seed_2"]["steps_to_threshold"] = None
  assert learning_scores.aggregate(runs)["median_steps_to_threshold"] is None


def test_cartpole_run_to_the_threshold_reports_table_json_and_plot(tmp_path):
  output = tmp_path / "learning"
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "learning.py"),
         f"--configs={os.path.join(REPO, 'experiments', 'configs', 'cartpole_appo.flags')}",
         "--seeds=0", f"--script={os.path.join(REPO, 'experiments', 'control.py')}",
         "--threshold=400", "--stop_at_threshold", "--frames_per_step=1",
         f"--output_dir={output}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "cartpole_appo" in out.stdout
  report = json.loads((output / "learning.json").read_text())
  summary = report["configs"]["cartpole_appo"]
  run = summary["runs"]["seed_0"]
  assert summary["reached"] == 1 and run["steps_to_threshold"] <= 300_000
  # Stopped at the threshold rather than run to its 300k budget.
  assert run["final_env_steps"] < 300_000
  assert run["seconds_to_threshold"] > 0 and run["steps_per_second"] > 0
  assert (output / "learning_curves.png").stat().st_size > 10_000
  at = learning_report.curves_at(report, "cartpole_appo", [run["steps_to_threshold"]])
  assert at[run["steps_to_threshold"]] >= 400
