"""The learner's own games confirm (or not) a score that remote hosts report: real CartPole
games with an untrained MLP policy (it balances the pole for 8-40 steps, so scores ~20)."""

import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.runtime import score_check


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


@pytest.fixture(scope="module")
def cartpole():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=4, seed=3)
  spec = envs.env_spec(env_config)
  network = networks.network_for_spec(config_lib.NetworkConfig("mlp", mlp_hidden_sizes=(8,)),
                                      spec)
  return env_config, network, networks.init_params(network, spec, 0)


def test_games_that_fall_short_keep_training_and_back_off(cartpole, caplog):
  env_config, network, params = cartpole
  clock = _Clock()
  games = score_check.OwnGames(network, lambda: params, env_config, num_games=10,
                               min_backoff_seconds=60.0, clock=clock)
  assert not games(475.0)  # Hosts claim a solved CartPole; an untrained policy is not.
  assert games.confirmations == 1 and 5.0 < games.last_score < 100.0
  assert "the learner's own 10 games score" in caplog.text
  clock.now = 59.0
  assert not games(0.0) and games.confirmations == 1  # Not played again during the backoff.
  clock.now = 61.0
  assert games(games.last_score - 30.0) and games.confirmations == 2  # A reachable target.


def test_no_games_no_confirmation(cartpole):
  env_config, network, params = cartpole
  with pytest.raises(ValueError, match="num_games must be >= 1, got 0"):
    score_check.OwnGames(network, lambda: params, env_config, num_games=0)
