"""Tests of the run's metric files (impala_jax.runtime.metrics): what a resumed run keeps."""

import csv
import os

from impala_jax import types
from impala_jax.runtime import metrics

GAMES = ("Pong-v5",)  # The run's one game.


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_resumed_writers_drop_rows_past_the_checkpoint_and_append(tmp_path):
  logdir = str(tmp_path)
  writer = metrics.MetricsWriter(logdir, start_step=0)
  episodes = metrics.EpisodeWriter(logdir, start_step=0, games=GAMES)
  assert episodes.previous_returns == []
  for step in (100, 200, 300):
    writer.write(dict(env_steps=step, wall_seconds=step / 10, loss=1.0, extra=2.0))
    episodes.write(step, step / 10, [_Episode(float(step), source=f"env host {step}")])
  writer.close()
  episodes.close()

  resumed = metrics.MetricsWriter(logdir, start_step=200)  # The checkpoint was at step 200.
  resumed_episodes = metrics.EpisodeWriter(logdir, start_step=200, games=GAMES)
  # The games up to the checkpoint, for the score window (runtime.telemetry).
  assert resumed_episodes.previous_returns == [100.0, 200.0]
  assert resumed_episodes.previous_sources == ["env host 100", "env host 200"]
  resumed.write(dict(env_steps=250, wall_seconds=25.0, loss=0.5, extra=3.0))
  resumed_episodes.write(250, 25.0, [_Episode(-1.0)])
  resumed.close()
  resumed_episodes.close()

  rows = _read(os.path.join(logdir, "metrics.csv"))
  assert [int(r["env_steps"]) for r in rows] == [100, 200, 250]
  assert rows[-1]["extra"] == "3.0"  # The header (with the extra column) was kept.
  episode_rows = _read(os.path.join(logdir, "episodes.csv"))
  assert [float(r["episode_return"]) for r in episode_rows] == [100.0, 200.0, -1.0]
  assert [r["source"] for r in episode_rows] == ["env host 100", "env host 200", "local"]


def test_an_episodes_file_from_before_sources_keeps_its_columns(tmp_path):
  path = tmp_path / "episodes.csv"
  path.write_text("env_steps,wall_seconds,episode_return,episode_length\n10,1.0,7.0,5\n")
  episodes = metrics.EpisodeWriter(str(tmp_path), start_step=10, games=GAMES)
  assert (episodes.previous_returns, episodes.previous_sources) == ([7.0], ["local"])
  episodes.write(20, 2.0, [_Episode(8.0, source="env host 1")])
  episodes.close()
  assert [list(r.values()) for r in _read(path)] == [["10", "1.0", "7.0", "5"],
                                                     ["20", "2.000", "8.0", "5"]]


def test_a_run_from_scratch_replaces_an_earlier_runs_rows(tmp_path):
  path = tmp_path / "metrics.csv"
  path.write_text("env_steps,wall_seconds,loss\n100,1.0,0.5\n")
  writer = metrics.MetricsWriter(str(tmp_path), start_step=0)
  writer.write(dict(env_steps=10, wall_seconds=0.1, loss=2.0, policy_lag=1.0))
  writer.close()
  rows = _read(path)
  assert [r["env_steps"] for r in rows] == ["10"]
  assert "policy_lag" in rows[0]


def test_drop_rows_after_counts_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "episodes.csv"
  path.write_text("env_steps,wall_seconds,episode_return,episode_length\n"
                  "10,1.0,1.0,5\n20,2.0,2.0,5\n30,3.0,3.0,5\n")
  assert metrics.drop_rows_after(str(path), 20) == 1
  assert metrics.drop_rows_after(str(path), 20) == 0
  assert metrics.drop_rows_after(str(tmp_path / "absent.csv"), 20) == 0
  assert [r["env_steps"] for r in _read(path)] == ["10", "20"]
  assert os.listdir(tmp_path) == ["episodes.csv"]


def _Episode(episode_return, source="local"):  # pylint: disable=invalid-name
  return types.EpisodeStats(episode_return, 5, source)


def test_rows_read_back_as_numbers_with_empty_cells_none_and_sources_as_text(tmp_path):
  logdir = str(tmp_path)
  writer = metrics.MetricsWriter(logdir, start_step=0)
  episodes = metrics.EpisodeWriter(logdir, start_step=0, games=GAMES)
  writer.write(dict(env_steps=100, wall_seconds=1.5, loss=0.25, episode_return=None))
  episodes.write(100, 1.5, [_Episode(-21.0, source="env host 1a")])
  writer.close()
  episodes.close()
  rows = metrics.read_csv(os.path.join(logdir, "metrics.csv"))
  assert rows[0]["env_steps"] == 100.0 and rows[0]["loss"] == 0.25
  assert rows[0]["episode_return"] is None
  assert metrics.read_csv(os.path.join(logdir, "episodes.csv")) == [dict(
      env_steps=100.0, wall_seconds=1.5, episode_return=-21.0, episode_length=5.0,
      source="env host 1a", game="Pong-v5")]
  assert metrics.read_csv(os.path.join(logdir, "missing.csv")) == []


def test_each_game_is_named_in_episodes_csv_and_read_back_as_its_task_on_resume(tmp_path):
  logdir = str(tmp_path)
  games = ("Pong-v5", "Breakout-v5")
  episodes = metrics.EpisodeWriter(logdir, start_step=0, games=games)
  episodes.write(100, 1.0, [types.EpisodeStats(-21.0, 5, task=0),
                            types.EpisodeStats(3.0, 5, task=1)])
  episodes.close()
  rows = metrics.read_csv(os.path.join(logdir, "episodes.csv"))
  assert [(r["game"], r["episode_return"]) for r in rows] == [("Pong-v5", -21.0),
                                                              ("Breakout-v5", 3.0)]
  resumed = metrics.EpisodeWriter(logdir, start_step=100, games=games)
  assert resumed.previous_tasks == [0, 1] and resumed.previous_returns == [-21.0, 3.0]
  resumed.close()
  # A run resumed with other games keeps only those it plays in its scores.
  other = metrics.EpisodeWriter(logdir, start_step=100, games=("Breakout-v5",))
  assert other.previous_tasks == [0] and other.previous_returns == [3.0]
  other.close()


def test_an_episodes_file_from_before_games_counts_its_games_as_the_first_task(tmp_path):
  path = tmp_path / "episodes.csv"
  path.write_text("env_steps,wall_seconds,episode_return,episode_length,source\n"
                  "10,1.0,7.0,5,local\n")
  episodes = metrics.EpisodeWriter(str(tmp_path), start_step=10, games=GAMES)
  assert episodes.previous_tasks == [0]
  episodes.write(20, 2.0, [_Episode(8.0)])
  episodes.close()
  assert [list(r.values()) for r in _read(path)][-1] == ["20", "2.000", "8.0", "5", "local"]
