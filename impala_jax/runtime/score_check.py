"""The learner's own games, played before remote hosts' scores may end a run.

Remote hosts' games are their own report, and a host's name is its own word (`runtime.scores`):
a token holder can send high scores under several names. So when remote scores alone reach
`--stop_at_score`, the learner plays `num_games` whole games itself, with its current
parameters and the evaluation settings (`evaluation.episodes`: whole games, unclipped rewards,
up to 30 no-ops), and the run ends only if their mean reaches the target too.

A confirmation costs the learner's time (the actors wait on a full queue meanwhile), and remote
hosts that claim the target over and over could make it play all the time. After a score that
falls short, the next confirmation waits `backoff_factor` times as long as this one took (at
least `min_backoff_seconds`), so confirmations take at most 1 / (1 + backoff_factor) of the
run's time.
"""

import time
from typing import Any, Callable, Optional

from absl import logging
import numpy as np

from impala_jax import config as config_lib
from impala_jax import networks
from impala_jax.evaluation import episodes as episodes_lib

# Environments that play the confirming games side by side (fewer if fewer games).
_MAX_ENVS = 8
# Seeds the confirming games' environments apart from the training ones (seed, seed + 1, ...).
_SEED_OFFSET = 1_000_003


class OwnGames:
  """`confirm(target) -> bool`: whether the learner's own games reach `target`.

  Args:
    network: the policy's network.
    params: returns the learner's current parameters (one device's copy).
    env_config: the training environment; the games use its evaluation settings.
    num_games: games per confirmation (the score's window, `telemetry.RECENT_EPISODES`).
    min_backoff_seconds, backoff_factor: the wait after a score that falls short (module doc).
    clock: seconds, monotonic (for tests).
  """

  def __init__(self, network: networks.ImpalaNetwork, params: Callable[[], Any],
               env_config: config_lib.EnvConfig, num_games: int,
               min_backoff_seconds: float = 60.0, backoff_factor: float = 5.0,
               clock: Callable[[], float] = time.monotonic):
    if num_games < 1:
      raise ValueError(f"num_games must be >= 1, got {num_games}.")
    self._network = network
    self._params = params
    self._env_config = episodes_lib.evaluation_env_config(
        env_config, num_envs=min(_MAX_ENVS, num_games), seed=env_config.seed + _SEED_OFFSET)
    self._num_games = num_games
    self._min_backoff = min_backoff_seconds
    self._backoff_factor = backoff_factor
    self._clock = clock
    self._next_allowed = -np.inf
    self.confirmations = 0
    self.last_score: Optional[float] = None

  def __call__(self, target: float) -> bool:
    if self._clock() < self._next_allowed:
      return False
    start = self._clock()
    result = episodes_lib.play_episodes(self._network, self._params(), self._env_config,
                                        self._num_games, seed=self.confirmations)
    self.confirmations += 1
    self.last_score = float(np.mean([e.episode_return for e in result.episodes]))
    seconds = self._clock() - start
    if self.last_score >= target:
      logging.info("Remote hosts' scores reach --stop_at_score=%g, and so do the learner's own "
                   "%d games: %.2f (%.1f s).", target, self._num_games, self.last_score, seconds)
      return True
    wait = max(self._min_backoff, self._backoff_factor * seconds)
    self._next_allowed = self._clock() + wait
    logging.warning("Remote hosts' scores reach --stop_at_score=%g, but the learner's own %d "
                    "games score %.2f (%.1f s): training goes on; the next check in %.0f s at "
                    "the earliest.", target, self._num_games, self.last_score, seconds, wait)
    return False
