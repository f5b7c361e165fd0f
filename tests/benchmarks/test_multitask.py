"""The multi-task benchmark's report: per-game final scores, HNS, median / IQM, the mean over the
run of the median HNS, table, plot; and a real two-game sweep of a few thousand steps."""

import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import multitask
from impala_jax.envs import atari_scores
from impala_jax.runtime import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GAMES = ("Pong-v5", "Breakout-v5", "SpaceInvaders-v5")
STEPS_PER_ROW = 1000


def _hns(env_id, score):
  """From the reference table itself, not through the function under test."""
  reference = atari_scores.reference_scores(env_id)
  return (score - reference.random) / (reference.human - reference.random)


def _write_run(logdir, returns):
  """A run as the runtime writes it: config.json, episodes.csv with each game's games (one game
  of each per metrics row, rows every STEPS_PER_ROW agent steps and 1 s), metrics.csv."""
  os.makedirs(logdir)
  games = list(returns)
  with open(os.path.join(logdir, "config.json"), "w") as f:
    json.dump(dict(env=dict(env_id=",".join(games), frame_skip=4)), f)
  rows = max(len(r) for r in returns.values())
  with open(os.path.join(logdir, "episodes.csv"), "w") as f:
    f.write(",".join(metrics_lib.EPISODE_COLUMNS) + "\n")
    for row in range(rows):
      for game in games:
        if row < len(returns[game]):
          f.write(f"{STEPS_PER_ROW * (row + 1)},{row + 1}.0,{returns[game][row]},100,local,"
                  f"{game}\n")
  columns = metrics_lib.CSV_COLUMNS + tuple(
      f"recent_episode_return/{g}" for g in games) + ("recent_human_normalized_score",)
  with open(os.path.join(logdir, "metrics.csv"), "w") as f:
    f.write(",".join(columns) + "\n")
    for row in range(rows):
      values = dict(env_steps=STEPS_PER_ROW * (row + 1), wall_seconds=row + 1.0,
                    steps_per_second=STEPS_PER_ROW)
      f.write(",".join(str(values.get(c, "")) for c in columns) + "\n")


def _constant(scores):
  """Each game's 30 games, all at its score."""
  return {game: [score] * 30 for game, score in zip(GAMES, scores)}


def _sweep(out):
  # clipped: two seeds, constant scores; Pong's seed 0 climbs from -21 to -11 after 10 games.
  pong = [-21.0] * 10 + [-11.0] * 20
  _write_run(os.path.join(out, "multitask_clipped", "seed_0"),
             {**_constant([0.0, 10.0, 300.0]), "Pong-v5": pong})
  _write_run(os.path.join(out, "multitask_clipped", "seed_1"), _constant([-15.0, 20.0, 500.0]))
  _write_run(os.path.join(out, "multitask_popart", "seed_0"), _constant([-5.0, 30.0, 400.0]))
  # Breakout has no finished game yet: the run waits.
  _write_run(os.path.join(out, "multitask_unclipped", "seed_0"),
             {"Pong-v5": [-21.0] * 5, "Breakout-v5": [], "SpaceInvaders-v5": [600.0] * 5})


def test_final_scores_and_hns_per_game_and_seed(tmp_path):
  out = str(tmp_path)
  _sweep(out)
  report = multitask.summarize(out, multitask.VARIANTS, reps=200)
  assert list(report["variants"]) == ["multitask_clipped", "multitask_popart"]
  assert report["waiting"] == [os.path.join(out, "multitask_unclipped", "seed_0")]
  clipped = report["variants"]["multitask_clipped"]
  seed_0 = clipped["runs"]["seed_0"]
  # Pong's last 20 games of seed 0 are all -11: the 10 games at -21 are out of the window.
  assert seed_0["games"]["Pong-v5"]["final_score"] == pytest.approx(-11.0)
  assert seed_0["games"]["Pong-v5"]["episodes"] == 30
  finals = {"seed_0": dict(zip(GAMES, [-11.0, 10.0, 300.0])),
            "seed_1": dict(zip(GAMES, [-15.0, 20.0, 500.0]))}
  for seed, scores in finals.items():
    run = clipped["runs"][seed]
    for game, score in scores.items():
      assert run["games"][game]["final_score"] == pytest.approx(score)
      assert run["games"][game]["hns"] == pytest.approx(_hns(game, score))
    assert run["median_hns"] == pytest.approx(statistics.median(
        _hns(g, s) for g, s in scores.items()))
    assert run["steps_per_second"] == pytest.approx(STEPS_PER_ROW)
  hns = {g: [_hns(g, finals[s][g]) for s in finals] for g in GAMES}
  for game in GAMES:
    assert clipped["games"][game]["hns"] == pytest.approx(statistics.fmean(hns[game]))
    assert clipped["games"][game]["final_score"] == pytest.approx(
        statistics.fmean(finals[s][game] for s in finals))
  # rliable's: the median over games of each game's mean over seeds; the IQM of all 6 scores
  # (scipy's trim_mean cuts int(0.25 · 6) = 1 from each end).
  assert clipped["median_hns"]["point"] == pytest.approx(
      statistics.median(statistics.fmean(v) for v in hns.values()))
  assert clipped["iqm_hns"]["point"] == pytest.approx(
      statistics.fmean(sorted(sum(hns.values(), []))[1:-1]))
  assert clipped["median_hns"]["low"] <= clipped["median_hns"]["point"] <= (
      clipped["median_hns"]["high"])
  assert clipped["budget"] == 30 * STEPS_PER_ROW and clipped["seeds"] == 2


def test_a_game_without_reference_scores_is_refused(tmp_path):
  logdir = str(tmp_path / "multitask_clipped" / "seed_0")
  _write_run(logdir, {"Pong-v5": [-21.0], "Adventure-v5": [0.0]})
  with pytest.raises(ValueError, match="plays Adventure-v5, which has no human reference"):
    multitask.summarize(str(tmp_path), multitask.VARIANTS, reps=10)


def test_mean_over_run_of_the_median_hns(tmp_path):
  out = str(tmp_path)
  _sweep(out)
  report = multitask.summarize(out, multitask.VARIANTS, reps=200)
  popart = report["variants"]["multitask_popart"]
  median = statistics.median(_hns(g, s) for g, s in zip(GAMES, [-5.0, 30.0, 400.0]))
  # Constant from the first row (step 1000) on, 0 before: the grid's points below 1000 (0,
  # 150.8, ..., 904.5: 7 of 200) count 0.
  assert popart["mean_median_hns"] == pytest.approx(median * 193 / 200)
  # Seed 0 of clipped: Pong at -21 (HNS < 0) for 10 rows, then -11 once its 20-game window
  # fills; the median moves with it. Checked against the curve the run itself would log.
  run = report["variants"]["multitask_clipped"]["runs"]["seed_0"]
  grid = np.array([500.0, 1000.0, 15000.0, 30000.0])
  # Pong's score after 1, 1, 15 (fewer than 20: the mean of all) and 30 games.
  pong_scores = (-21.0, -21.0, statistics.fmean([-21.0] * 10 + [-11.0] * 5), -11.0)
  pong = [_hns("Pong-v5", s) for s in pong_scores]
  expected = [statistics.median([p, _hns("Breakout-v5", 10.0), _hns("SpaceInvaders-v5", 300.0)])
              for p in pong]
  expected[0] = 0.0  # No game has finished at step 500.
  np.testing.assert_allclose(multitask.median_hns_curve(run, grid), expected)


def test_table_json_and_plot(tmp_path):
  out = str(tmp_path)
  _sweep(out)
  report = multitask.summarize(out, multitask.VARIANTS, reps=200)
  table = multitask.format_table(report)
  lines = table.splitlines()
  assert lines[0].startswith("| variant | agent steps | Pong-v5 final (per seed); HNS |")
  assert lines[1] == "|---" * 8 + "|"
  pong_hns = statistics.fmean([_hns("Pong-v5", -11.0), _hns("Pong-v5", -15.0)])
  assert lines[2].startswith(f"| multitask_clipped | 30.0k | -13.0 (-11.0, -15.0); "
                             f"{pong_hns:.3f} | 15.0 (10.0, 20.0); ")
  assert lines[3].startswith("| multitask_popart | 30.0k | -5.0 (-5.0); ")
  compact = multitask.without_curves(report)
  assert "curves" not in compact["variants"]["multitask_clipped"]["runs"]["seed_0"]
  assert "curves" in report["variants"]["multitask_clipped"]["runs"]["seed_0"]
  json.dumps(compact)  # Serialisable as it is.
  png = str(tmp_path / "curves.png")
  multitask.plot(report, png, frames_per_step=4, title="test")
  assert os.path.getsize(png) > 1000


def test_the_script_summarises_finished_runs_and_names_bad_flags(tmp_path):
  out = str(tmp_path)
  _sweep(out)
  script = os.path.join(REPO, "benchmarks", "multitask.py")
  done = subprocess.run([sys.executable, script, "--summarize_only", f"--output_dir={out}",
                         "--bootstrap_reps=100"], capture_output=True, text=True, timeout=300,
                        cwd=REPO)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "| multitask_clipped | 30.0k |" in done.stdout
  assert "not yet in the report" in done.stdout and "multitask_unclipped" in done.stdout
  summary = json.loads((tmp_path / "multitask.json").read_text())
  assert set(summary["variants"]) == {"multitask_clipped", "multitask_popart"}
  assert os.path.getsize(tmp_path / "multitask_curves.png") > 1000
  bad = subprocess.run([sys.executable, script, "--seeds=0,one", f"--output_dir={out}"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert bad.returncode != 0 and "--seeds must list integers, got 0,one" in bad.stderr


def test_a_real_two_game_sweep_of_a_few_thousand_steps(tmp_path):
  # Two of the flagfiles at smoke scale (all three take over 60 s here: each run starts JAX
  # and compiles): 2 games, 42x42 frames, 3k steps, 40-step episodes. The games go in flagfiles
  # of the same names, as --run_flags is split at commas.
  smoke = ["--env=Pong-v5,Breakout-v5", "--num_actor_threads=2", "--num_envs=4",
           "--image_size=42", "--total_env_steps=3000", "--max_episode_steps=40",
           "--log_interval_seconds=1"]
  configs = []
  variants = ["multitask_clipped", "multitask_popart"]
  for variant in variants:
    config = tmp_path / f"{variant}.flags"
    flagfile = os.path.join(REPO, "experiments", "configs", f"{variant}.flags")
    config.write_text("\n".join([f"--flagfile={flagfile}", *smoke]) + "\n")
    configs.append(str(config))
  out = tmp_path / "multitask"
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "multitask.py"), "--seeds=0",
         f"--configs={','.join(configs)}", "--bootstrap_reps=100", f"--output_dir={out}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  summary = json.loads((out / "multitask.json").read_text())
  assert list(summary["variants"]) == variants
  for variant in summary["variants"].values():
    run = variant["runs"]["seed_0"]
    assert set(run["games"]) == {"Pong-v5", "Breakout-v5"}
    assert run["final_env_steps"] >= 3000 and run["median_hns"] is not None
  popart = json.loads((out / "multitask_popart" / "seed_0" / "config.json").read_text())
  assert popart["popart"]["enabled"] and popart["popart"]["num_tasks"] == 2
  assert not popart["env"]["reward_clip"]
  assert (out / "multitask_curves.png").stat().st_size > 1000
