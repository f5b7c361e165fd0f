"""Tests for impala_jax.runtime.scores' score of the last games, after each game and per row."""

import numpy as np
import pytest

from impala_jax import types
from impala_jax.runtime import scores as scores_lib


def test_the_score_is_the_mean_of_the_last_games_or_of_all_while_fewer():
  assert scores_lib.recent_mean([], 20) is None
  assert scores_lib.recent_mean([1.0, 2.0], 20) == 1.5
  assert scores_lib.recent_mean(list(range(30)), 20) == pytest.approx(sum(range(10, 30)) / 20)


@pytest.mark.parametrize("window", [1, 3, 20])
def test_the_rolling_score_after_each_game_is_the_score_of_the_games_so_far(window):
  returns = np.random.default_rng(0).normal(1000.0, 300.0, size=50)
  rolling = scores_lib.rolling_means(returns, window)
  # Exactly what a run logs after each game, not a cumulative sum's approximation of it.
  assert rolling.tolist() == [scores_lib.recent_mean(returns[:i + 1], window)
                              for i in range(len(returns))]
  assert scores_lib.rolling_means(returns[:2], window).tolist() == rolling[:2].tolist()
  assert scores_lib.rolling_means([], window).shape == (0,)


def test_the_rolling_score_is_the_score_the_run_logs():
  returns = np.random.default_rng(1).normal(size=45)
  scores = scores_lib.Scores(window=20)
  logged = []
  for value in returns:
    scores.add([types.EpisodeStats(float(value), 1)])
    logged.append(scores.mean())
  assert scores_lib.rolling_means(returns, 20).tolist() == logged


def test_row_ends_are_the_last_game_written_at_each_metrics_row():
  assert scores_lib.row_ends([100, 100, 200, 300, 300, 300]).tolist() == [1, 2, 5]
  assert scores_lib.row_ends([]).tolist() == []


def test_each_task_keeps_the_score_of_its_own_last_games():
  scores = scores_lib.Scores(window=2, previous=[types.EpisodeStats(9.0, 1, task=1)])
  scores.add([types.EpisodeStats(1.0, 1, task=0), types.EpisodeStats(3.0, 1, task=1),
              types.EpisodeStats(5.0, 1, task=1)])
  assert scores.by_task() == {1: 4.0, 0: 1.0}  # Task 1's last two: 3 and 5.
  assert scores.by_task(full=True) == {1: 4.0}  # Task 0 has one game of a window of two.
  assert scores.mean() == 4.0  # The overall score: the last two games of any task.
