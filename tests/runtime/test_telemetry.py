"""Tests for impala_jax.runtime.telemetry: the score, and its human-normalised column on Atari."""

import queue
import time

import pytest

from impala_jax import config as config_lib
from impala_jax import types
from impala_jax.envs import atari_scores
from impala_jax.runtime import scores as scores_lib
from impala_jax.runtime import telemetry as telemetry_lib


class _Rows:

  def __init__(self):
    self.rows = []

  def write(self, row, step=None):
    del step
    self.rows.append(dict(row))


class _Episodes:

  def __init__(self, previous_returns=()):
    self.previous_returns = list(previous_returns)
    self.previous_sources = ["local"] * len(self.previous_returns)
    self.previous_tasks = [0] * len(self.previous_returns)

  def write(self, env_steps, wall_seconds, episodes):
    pass


def _telemetry(env_id="CartPole-v1", previous_returns=()):
  rows = _Rows()
  episodes = queue.SimpleQueue()
  config = config_lib.TrainConfig(env=config_lib.EnvConfig(env_id), total_env_steps=100,
                                  log_interval_seconds=0.0)
  telemetry = telemetry_lib.Telemetry(
      config, writer=rows, episode_writer=_Episodes(previous_returns), episodes=episodes,
      phases=telemetry_lib.PhaseTimer([]), gauges=dict, env_steps=0,
      start_time=time.monotonic(), show_progress=False)
  return telemetry, rows.rows, episodes


def test_atari_rows_carry_the_hns_of_the_recent_score_from_the_first_row():
  telemetry, rows, episodes = _telemetry("Pong-v5")
  telemetry.record({"loss": 1.0}, env_steps=10)  # No game finished yet.
  episodes.put(types.EpisodeStats(episode_return=-21.0, episode_length=800))
  episodes.put(types.EpisodeStats(episode_return=-19.0, episode_length=900))
  telemetry.record({"loss": 1.0}, env_steps=20)
  telemetry.flush(20)
  assert "recent_human_normalized_score" in rows[0]  # In the CSV header from the start.
  assert rows[0]["recent_human_normalized_score"] is None
  assert rows[1]["recent_episode_return"] == -20.0
  assert rows[1]["recent_human_normalized_score"] == (
      atari_scores.human_normalized_score("Pong-v5", -20.0))


def test_other_tasks_have_no_hns_column():
  telemetry, rows, episodes = _telemetry("CartPole-v1")
  episodes.put(types.EpisodeStats(episode_return=30.0, episode_length=30))
  telemetry.record({"loss": 1.0}, env_steps=10)
  telemetry.flush(10)
  assert rows and all("recent_human_normalized_score" not in row for row in rows)


def test_recent_score_needs_a_full_window_and_follows_the_rows():
  telemetry, rows, episodes = _telemetry()
  for i in range(telemetry_lib.RECENT_EPISODES - 1):
    episodes.put(types.EpisodeStats(episode_return=500.0, episode_length=500))
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert telemetry.recent_score() is None  # 19 games: one short of a score.
  episodes.put(types.EpisodeStats(episode_return=100.0, episode_length=100))
  assert telemetry.recent_score() is None  # Finished, but not yet in a row.
  telemetry.record({"loss": 1.0}, env_steps=20)
  expected = (500.0 * (telemetry_lib.RECENT_EPISODES - 1) + 100.0) / telemetry_lib.RECENT_EPISODES
  assert telemetry.recent_score() == expected == rows[-1]["recent_episode_return"]
  for _ in range(telemetry_lib.RECENT_EPISODES - 1):
    episodes.put(types.EpisodeStats(episode_return=500.0, episode_length=500))
  telemetry.record({"loss": 1.0}, env_steps=30)
  assert telemetry.recent_score() == expected  # The 100 is still among the last 20 ...
  episodes.put(types.EpisodeStats(episode_return=500.0, episode_length=500))
  telemetry.record({"loss": 1.0}, env_steps=40)
  assert telemetry.recent_score() == 500.0  # ... and now it is not.


def test_a_resumed_run_scores_the_games_before_its_checkpoint_too():
  window = telemetry_lib.RECENT_EPISODES
  # The earlier session finished more than a window of games: the last 20 count, at once.
  telemetry, rows, episodes = _telemetry(previous_returns=[0.0] * 5 + [10.0] * window)
  assert telemetry.recent_score() == 10.0
  episodes.put(types.EpisodeStats(episode_return=30.0, episode_length=100))
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert telemetry.recent_score() == (10.0 * (window - 1) + 30.0) / window
  assert rows[-1]["recent_episode_return"] == telemetry.recent_score()
  assert telemetry.episode_returns == [30.0]  # This session's games only.

  # One game short of a window before the checkpoint: the first new game completes it.
  telemetry, rows, episodes = _telemetry(previous_returns=[10.0] * (window - 1))
  assert telemetry.recent_score() is None
  episodes.put(types.EpisodeStats(episode_return=30.0, episode_length=100))
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert telemetry.recent_score() == (10.0 * (window - 1) + 30.0) / window


def _games(episodes, score, source, count=telemetry_lib.RECENT_EPISODES):
  for _ in range(count):
    episodes.put(types.EpisodeStats(episode_return=score, episode_length=1, source=source))


def test_one_hosts_report_never_reaches_the_target_however_high(caplog):
  telemetry, rows, episodes = _telemetry()
  _games(episodes, 1e6, "env host aaaaaaaa", count=30)  # Thirty one-step games of 1e6.
  _games(episodes, 20.0, "env host bbbbbbbb", count=5)
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert rows[-1]["recent_episode_return"] > 475  # What every game says ...
  assert rows[-1]["stop_score"] is None and rows[-1]["score_sources"] == 1
  assert not telemetry.score_reached(475.0)  # ... does not end the run.
  assert "neither the local actors nor two remote hosts each reach it" in caplog.text
  assert "env host aaaaaaaa 30 games 1000000.00; env host bbbbbbbb 5 games" in caplog.text
  # A second host that reaches the target on its own games: two hosts agree, and that only
  # proposes it: the learner's own games decide.
  _games(episodes, 480.0, "env host bbbbbbbb")
  telemetry.record({"loss": 1.0}, env_steps=20)
  assert rows[-1]["stop_score"] == 480.0
  asked = []
  assert not telemetry.score_reached(475.0)  # Nothing to confirm with.
  assert not telemetry.score_reached(475.0, confirm=lambda t: asked.append(t) or False)
  assert telemetry.score_reached(475.0, confirm=lambda t: asked.append(t) or True)
  assert asked == [475.0, 475.0]


def test_the_local_actors_score_alone_counts():
  telemetry, rows, episodes = _telemetry()
  _games(episodes, 500.0, "local")
  _games(episodes, 10.0, "env host aaaaaaaa")
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert rows[-1]["stop_score"] == 500.0
  assert telemetry.score_reached(475.0, confirm=lambda t: pytest.fail("no need to confirm"))
  assert not telemetry.score_reached(None)


def test_sources_are_bounded_and_the_least_recent_forgotten():
  scores = scores_lib.Scores(window=2, max_sources=3)
  for name in "abcd":
    scores.add([types.EpisodeStats(1.0, 1, name)] * 2)
  assert sorted(scores.by_source()) == ["b", "c", "d"]
  scores.add([types.EpisodeStats(5.0, 1, "b")])
  scores.add([types.EpisodeStats(1.0, 1, "e")])
  assert sorted(scores.by_source()) == ["b", "d"]  # c was heard from least recently.


def _hns(env_id, score):
  return atari_scores.human_normalized_score(env_id, score)


def test_a_multi_task_row_has_each_games_score_and_hns_and_their_median():
  telemetry, rows, episodes = _telemetry("Pong-v5,Breakout-v5")
  telemetry.record({"loss": 1.0}, env_steps=10)  # No game finished yet.
  assert rows[0]["recent_episode_return/Pong-v5"] is None
  assert rows[0]["recent_human_normalized_score/Breakout-v5"] is None
  assert rows[0]["recent_human_normalized_score"] is None  # In the CSV header from row one.
  episodes.put(types.EpisodeStats(-21.0, 800, task=0))
  episodes.put(types.EpisodeStats(-19.0, 800, task=0))
  telemetry.record({"loss": 1.0}, env_steps=20)
  assert rows[1]["recent_episode_return/Pong-v5"] == -20.0
  assert rows[1]["recent_human_normalized_score/Pong-v5"] == _hns("Pong-v5", -20.0)
  assert rows[1]["recent_episode_return/Breakout-v5"] is None
  assert rows[1]["recent_human_normalized_score"] is None  # Breakout has no score yet.
  episodes.put(types.EpisodeStats(10.0, 300, task=1))
  telemetry.record({"loss": 1.0}, env_steps=30)
  telemetry.flush(30)
  assert rows[2]["recent_episode_return/Breakout-v5"] == 10.0
  median = (_hns("Pong-v5", -20.0) + _hns("Breakout-v5", 10.0)) / 2  # Of two: their mean.
  assert rows[2]["recent_human_normalized_score"] == pytest.approx(median)
  assert rows[2]["recent_episode_return"] == pytest.approx((-21.0 - 19.0 + 10.0) / 3)


def test_a_multi_task_stop_score_is_the_median_hns_once_every_game_has_a_window():
  window = telemetry_lib.RECENT_EPISODES
  telemetry, rows, episodes = _telemetry("Pong-v5,Breakout-v5")
  for _ in range(window):
    episodes.put(types.EpisodeStats(14.6, 800, task=0))  # Pong's human score: HNS 1.
  for _ in range(window - 1):
    episodes.put(types.EpisodeStats(1.7, 300, task=1))  # Breakout's random score: HNS 0.
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert rows[-1]["stop_score"] is None  # Breakout is one game short of its window.
  assert not telemetry.score_reached(0.4)
  episodes.put(types.EpisodeStats(1.7, 300, task=1))
  telemetry.record({"loss": 1.0}, env_steps=20)
  assert rows[-1]["stop_score"] == pytest.approx(0.5)
  assert telemetry.score_reached(0.4) and not telemetry.score_reached(0.6)


def test_a_resumed_multi_task_run_scores_each_games_earlier_games():
  rows = _Rows()
  previous = _Episodes([14.6, 1.7, 1.7])
  previous.previous_tasks = [0, 1, 1]
  episodes = queue.SimpleQueue()
  config = config_lib.TrainConfig(env=config_lib.EnvConfig("Pong-v5,Breakout-v5"),
                                  total_env_steps=100, log_interval_seconds=0.0)
  telemetry = telemetry_lib.Telemetry(
      config, writer=rows, episode_writer=previous, episodes=episodes,
      phases=telemetry_lib.PhaseTimer([]), gauges=dict, env_steps=0,
      start_time=time.monotonic(), show_progress=False)
  episodes.put(types.EpisodeStats(30.7, 300, task=1))
  telemetry.record({"loss": 1.0}, env_steps=10)
  assert rows.rows[-1]["recent_episode_return/Pong-v5"] == 14.6
  assert rows.rows[-1]["recent_episode_return/Breakout-v5"] == pytest.approx(
      (1.7 + 1.7 + 30.7) / 3)
