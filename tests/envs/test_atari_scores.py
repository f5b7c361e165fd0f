"""Tests for impala_jax.envs.atari_scores: the reference table and human-normalised scores."""

import envpool
import pytest

from impala_jax import envs
from impala_jax.envs import atari_scores


@pytest.mark.parametrize("env_id, random, human", [
    # Mnih et al. 2015 / DQN Zoo's atari_data.py.
    ("Pong-v5", -20.7, 14.6),
    ("Breakout-v5", 1.7, 30.5),
    ("MontezumaRevenge-v5", 0.0, 4753.3),
    ("Seaquest-v5", 68.4, 42054.7),
    ("Skiing-v5", -17098.1, -4336.9),
    ("VideoPinball-v5", 16256.9, 17667.9),
    ("UpNDown-v5", 533.4, 11693.2),
    ("Surround-v5", -10.0, 6.5),
])
def test_reference_scores_are_the_published_ones(env_id, random, human):
  scores = atari_scores.reference_scores(env_id)
  assert scores == (env_id[:-3], random, human)
  assert atari_scores.human_normalized_score(env_id, random) == pytest.approx(0.0)
  assert atari_scores.human_normalized_score(env_id, human) == pytest.approx(1.0)


def test_human_normalized_score_values():
  # Pong: (0 + 20.7) / 35.3; Breakout: (400 - 1.7) / 28.8.
  assert atari_scores.human_normalized_score("Pong-v5", 0.0) == pytest.approx(20.7 / 35.3)
  assert atari_scores.human_normalized_score("Breakout-v5", 400) == pytest.approx(398.3 / 28.8)
  assert atari_scores.human_normalized_score("Pong-v5", -21.0) < 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "HalfCheetah-v4", "Tetris-v5", "Pong", "",
                                    None])
def test_not_an_atari_57_game_gives_none(env_id):
  assert atari_scores.reference_scores(env_id) is None
  assert atari_scores.human_normalized_score(env_id, 10.0) is None
  assert atari_scores.normalizer(env_id) is None


def test_none_score_gives_none():
  assert atari_scores.human_normalized_score("Pong-v5", None) is None


def test_other_spellings_of_the_id():
  for env_id in ("Pong-v5", "ALE/Pong-v5", "PongNoFrameskip-v4"):
    assert atari_scores.game_name(env_id) == "Pong"
  assert atari_scores.normalizer("Pong-v5")(14.6) == pytest.approx(1.0)


def test_every_one_of_the_57_games_is_an_envpool_task():
  assert len(atari_scores.ATARI_57) == 57
  all_ids = set(envpool.list_all_envs())
  for game in atari_scores.ATARI_57:
    env_id = atari_scores.env_id_of(game)
    assert env_id in all_ids, env_id
    assert atari_scores.game_name(env_id) == game
  for env_id in ("Pong-v5", "MontezumaRevenge-v5", "UpNDown-v5"):  # make_spec is slow-ish
    assert envs.env_family(env_id) is envs.EnvFamily.ATARI
