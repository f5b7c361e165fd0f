"""Whole games with the evaluation settings, and their summary.

Training on Atari ends an episode at every life loss and clips rewards (the paper's Table G.1);
evaluation plays the game as the reference scores were measured: whole games (all lives,
`episodic_life=False`), unclipped rewards (`reward_clip=False`), up to 30 no-op actions at the
start of each game, games capped at 27,000 agent steps = 108,000 frames (EnvPool's default,
unless the run set `max_episode_steps`). Frame stack, action repeat, frame size and sticky
actions stay those of training (the network was trained on them). Other tasks have no such
settings: they play exactly as in training. That includes custom environments
(`module.path:factory`, `envs.custom`), whose videos come from their own `render()`.

`play_episodes` runs K environments in one synchronous EnvPool and plays a fixed set of games:
environment i plays the first `N // K` (+1 for the first `N % K`) games of its own seed, so the
games played depend on the seed and K only, never on timing, and short games are not
over-represented. The LSTM state (if any) is kept per environment across steps and zeroed at
the first step of each game; actions are sampled from the policy, or its mode (`greedy`).
(Training with `episodic_life` also zeroed it after every life loss, where a training episode
ended; evaluation does not: there a whole game is one episode.)

A multi-task run's policy plays each of its games in turn (`task_configs`: each with the full
action space it was trained with); `summarize_games` adds the median over the games.
"""

import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.envs import atari_scores

# The paper's evaluation: a random number of no-ops (1 to 30) at the start of each game.
EVAL_NOOP_MAX = 30


class Episode(NamedTuple):
  """One finished game.

  Attributes:
    env_index: the environment (of the evaluation pool) that played it.
    episode_return: the game's real score (unclipped, all lives).
    episode_length: agent steps (Atari frames = this × frame_skip, no-ops excluded).
  """

  env_index: int
  episode_return: float
  episode_length: int


class EvaluationResult(NamedTuple):
  """Attributes:
    episodes: the games, ordered by environment, then by finish.
    recorded_frames: frames handed to `on_frame` (0 without it).
    agent_steps: agent steps taken by the whole pool.
    seconds: wall time.
  """

  episodes: List[Episode]
  recorded_frames: int
  agent_steps: int
  seconds: float


def evaluation_env_config(env_config: config_lib.EnvConfig, *, num_envs: int, seed: int,
                          noop_max: int = EVAL_NOOP_MAX) -> config_lib.EnvConfig:
  """The training `EnvConfig` with the evaluation settings (module doc); one synchronous pool."""
  return dataclasses.replace(env_config, num_envs=num_envs, batch_size=None, seed=seed,
                             episodic_life=False, reward_clip=False, noop_max=noop_max)


def task_configs(env_config: config_lib.EnvConfig, **settings: Any) -> List[config_lib.EnvConfig]:
  """`evaluation_env_config(..., **settings)` of each task's game, by task id: one config for
  a run of one task, one per game (full action space) for a multi-task run."""
  return [evaluation_env_config(env_config.task_config(task), **settings)
          for task in range(env_config.num_tasks)]


def make_act_fn(network: networks.ImpalaNetwork, greedy: bool):
  """`act(params, observation [K, ...], first [K], core_state, key) -> (action, core_state)`.

  The network zeroes the core state where `first` is True before the step (`cores.LSTMCore`).
  """

  def act(params, observation, first, core_state, key):
    output, core_state = network.apply(params, observation[None], first[None], core_state)
    policy = jax.tree.map(lambda x: x[0], output.policy)
    action = policy.mode() if greedy else policy.sample(key)
    return action, core_state

  return jax.jit(act)


class _Games:
  """The games that count: environment i keeps its first `N // K` (+1 for the first `N % K`)
  finished games, so the set depends on the seed and K only, never on timing."""

  def __init__(self, num_episodes: int, num_envs: int):
    self._quotas = np.array([num_episodes // num_envs + (i < num_episodes % num_envs)
                             for i in range(num_envs)])
    self._played = np.zeros(num_envs, int)
    self._num_episodes = num_episodes
    self.episodes: List[Episode] = []

  @property
  def done(self) -> bool:
    return len(self.episodes) >= self._num_episodes

  def add(self, env_ids: np.ndarray, finished: Sequence[Any]) -> None:
    """`finished[j]` is the `EpisodeStats` of the game environment `env_ids[j]` just ended."""
    for env_index, stats in zip(env_ids, finished):
      if self._played[env_index] < self._quotas[env_index]:
        self._played[env_index] += 1
        self.episodes.append(Episode(int(env_index), stats.episode_return,
                                     stats.episode_length))

  def in_order(self) -> List[Episode]:
    """By environment; stable, so each environment's games stay in the order played."""
    return sorted(self.episodes, key=lambda e: e.env_index)


def _check_counts(num_episodes: int, num_envs: int) -> None:
  if num_episodes < 1:
    raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
  if num_envs > num_episodes:
    raise ValueError(f"num_envs ({num_envs}) must be <= num_episodes ({num_episodes}): an "
                     "environment without a game to play would only cost time.")


def _game_ends(env, action: np.ndarray, tracker: envs.EpisodeTracker):
  """One synchronous step of every environment: (observation, ended [K]: it is the last
  observation of a game, env_ids of the games that ended, their `EpisodeStats`)."""
  observation, reward, terminated, truncated, info = env.step(action)
  env_ids = np.asarray(info["env_id"])
  if not np.array_equal(env_ids, np.arange(len(env_ids))):  # Rows are environments, in order.
    raise RuntimeError(f"A synchronous EnvPool answered for environments {env_ids}.")
  # With episodic_life=False a game ends exactly at terminated | truncated.
  ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
  finished = tracker.update(env_ids, reward, terminated, truncated, info)
  if len(finished) != int(ended.sum()):
    raise RuntimeError("EpisodeTracker and the environment disagree on episode ends; "
                       "is episodic_life on?")
  return observation, ended, env_ids[ended], finished


def play_episodes(network: networks.ImpalaNetwork, params: Any,
                  env_config: config_lib.EnvConfig, num_episodes: int, *,
                  greedy: bool = False, seed: int = 0,
                  on_frame: Optional[Callable[[np.ndarray], None]] = None) -> EvaluationResult:
  """Plays `num_episodes` whole games with `env_config.num_envs` environments.

  Args:
    network, params: the policy.
    env_config: the environment, usually `evaluation_env_config(...)`; its `num_envs`
      environments play in one synchronous pool, seeded `seed + i` by EnvPool.
    num_episodes: games to play, >= 1.
    greedy: take the policy's mode instead of sampling from it.
    seed: seeds action sampling (the environments' seed is `env_config.seed`).
    on_frame: called with each `[H, W, 3]` uint8 RGB frame of environment 0's first game
      (EnvPool's `render`): its first observation, then one per agent step up to the last.
      Frames are streamed, not kept: a whole Atari game can be 27,000 of them.

  Returns:
    An `EvaluationResult` with exactly `num_episodes` episodes.
  """
  num_envs = env_config.num_envs
  _check_counts(num_episodes, num_envs)
  start = time.monotonic()
  env = envs.make_env(env_config, render=on_frame is not None)
  try:
    spec = envs.env_spec(env)
    act = make_act_fn(network, greedy)
    games = _Games(num_episodes, num_envs)
    tracker = envs.EpisodeTracker(num_envs, spec.family)
    key = jax.random.PRNGKey(seed)
    core_state = network.initial_state(num_envs)
    observation, _ = env.reset()
    # `first`: `observation` starts a game; `last`: it ends one.
    first, last = np.ones(num_envs, bool), np.zeros(num_envs, bool)
    recording, recorded, agent_steps = on_frame is not None, 0, 0
    if recording:
      on_frame(_render(env))
      recorded += 1
    while not games.done:
      key, step_key = jax.random.split(key)
      action, core_state = act(params, observation, first, core_state, step_key)
      observation, ended, ended_ids, finished = _game_ends(
          env, envs.to_env_action(np.asarray(action), spec), tracker)
      # EnvPool's next-step autoreset: the step that ends a game returns its last observation,
      # and the step after it (its action ignored) the next game's first. The core state
      # restarts there, where the actors mark `first` in training (`acting.recorder`); a step
      # early, each later game would start from the state of the last game's end.
      first, last = last, ended
      agent_steps += num_envs
      if recording:
        on_frame(_render(env))
        recorded += 1
        recording = 0 not in ended_ids  # Environment 0's first game is over.
      games.add(ended_ids, finished)
  finally:
    env.close()
  return EvaluationResult(games.in_order(), recorded, agent_steps, time.monotonic() - start)


def _render(env) -> np.ndarray:
  frame = np.asarray(env.render(env_ids=[0]))
  return frame[0] if frame.ndim == 4 else frame


def summarize(env_id: str, returns: Sequence[float]) -> Dict[str, Any]:
  """Mean, median, min, max and standard deviation of real scores; on Atari-57 also of their
  human-normalised scores (`"human_normalized_score"`, None elsewhere)."""
  returns = [float(r) for r in returns]
  if not returns:
    raise ValueError("No episodes to summarise.")

  def stats(values: List[float]) -> Dict[str, float]:
    return dict(mean=statistics.fmean(values), median=statistics.median(values),
                min=min(values), max=max(values),
                std=statistics.pstdev(values) if len(values) > 1 else 0.0)

  hns = [atari_scores.human_normalized_score(env_id, r) for r in returns]
  return dict(score=stats(returns),
              human_normalized_score=None if hns[0] is None else stats(hns))


def summarize_games(summaries: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
  """A multi-task evaluation's summary over its games, from each game's `summarize`: the
  median over the games of their mean human-normalised score (None unless every game has
  one), and of their mean real score (for reference: games' scores have different scales)."""
  hns = [s["human_normalized_score"] for s in summaries.values()]
  return dict(
      num_games=len(summaries),
      median_human_normalized_score=(None if any(h is None for h in hns) else
                                     statistics.median(h["mean"] for h in hns)),
      median_score=statistics.median(s["score"]["mean"] for s in summaries.values()))
