"""Real game scores: whole games, unclipped rewards, while training sees life-loss episodes.

With the paper's Atari training settings (`episodic_life`, `reward_clip`) the learner's episodes
end at every life loss and its rewards are clipped; the paper's figures report the game's own
score over whole games. `EpisodeTracker` computes that score from EnvPool's `info`.
"""

from typing import Any, List, Mapping

import numpy as np

from impala_jax.envs import family as family_lib
from impala_jax.types import EpisodeStats


class EpisodeTracker:
  """Scores finished episodes as the game scores them, for every environment of one pool.

  Feed it every `step()`/`recv()` result, including the first `recv()` after `async_reset()`
  and autoreset steps. Per environment it sums the reward over the episode:

  * Atari: the unclipped `info["reward"]` over the whole game, all lives; a game ends at the
    real game over (`info["terminated"]`) or at truncation, not at a life loss (which training
    with `episodic_life=True` sees as `terminated`).
  * Other tasks: `reward`; an episode ends at `terminated | truncated`.

  Episode length convention: the number of agent steps whose action the environment applied,
  i.e. the transitions of the episode. Reset steps (the autoreset after an end, and on Atari the
  reset after each life loss, whose actions EnvPool ignores) do not count. This is exactly
  EnvPool's `info["elapsed_step"]` at the episode's last step, which is read from there; the
  same counter drives truncation. (Atari frames = length × frame_skip, no-ops excluded.)

  Cost per call: a few vectorised numpy operations on the batch, and a Python loop only over
  the environments that finished.
  """

  def __init__(self, num_envs: int, family: family_lib.EnvFamily, task: int = 0):
    """Args:
      num_envs: environments of the pool.
      family: the environments' family (`EnvSpec.family`): Atari games are scored from its
        info (above).
      task: the pool's task id (`EnvConfig.tasks`), which each episode carries.
    """
    if num_envs < 1:
      raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    if not isinstance(family, family_lib.EnvFamily):
      raise TypeError(f"family must be an EnvFamily, got {family!r}.")
    self._num_envs = int(num_envs)
    self._family = family
    self._task = int(task)
    self._atari = family is family_lib.EnvFamily.ATARI
    # float64: sums of thousands of rewards must not lose precision.
    self._returns = np.zeros(self._num_envs, np.float64)
    self._all_envs = np.arange(self._num_envs)
    self._num_episodes = 0

  @property
  def num_envs(self) -> int:
    return self._num_envs

  @property
  def num_episodes(self) -> int:
    """Episodes finished since construction."""
    return self._num_episodes

  def update(self, env_ids: Any, reward: Any, terminated: Any, truncated: Any,
             info: Mapping[str, Any]) -> List[EpisodeStats]:
    """Adds one batch of EnvPool results; returns the episodes that finished in it.

    Args:
      env_ids: `[K]` ints, `info["env_id"]`: which environments these results belong to
        (distinct, in `[0, num_envs)`).
      reward: `[K]` the (possibly clipped) training reward.
      terminated: `[K]` bool.
      truncated: `[K]` bool.
      info: EnvPool's info dict; needs `"elapsed_step"`, and on Atari `"reward"` (unclipped)
        and `"terminated"` (real game over).

    Returns:
      One `EpisodeStats` per environment whose episode (Atari: game) ended in this batch, in
      batch order.

    Raises:
      ValueError: mismatched shapes, bad env ids, or missing info fields.
    """
    env_ids = np.asarray(env_ids)
    every_env = self._check_env_ids(env_ids)
    if not len(env_ids):
      return []
    score, ended, elapsed_step = self._score_and_ends(len(env_ids), reward, terminated,
                                                      truncated, info)

    # Reset steps carry reward 0, so adding them needs no mask.
    if every_env:
      self._returns += score
    else:
      self._returns[env_ids] += score
    if not ended.any():
      return []
    finished_ids = env_ids[ended]
    finished = [
        EpisodeStats(episode_return=float(self._returns[env_id]), episode_length=int(length),
                     task=self._task)
        for env_id, length in zip(finished_ids, elapsed_step[ended])
    ]
    self._returns[finished_ids] = 0.0
    self._num_episodes += len(finished)
    return finished

  def _check_env_ids(self, env_ids: np.ndarray) -> bool:
    """Raises ValueError unless `env_ids` are distinct environments; returns whether they are
    every environment in order (EnvPool's answer when recv takes them all: plain slices)."""
    if env_ids.ndim != 1 or env_ids.dtype.kind not in "iu":
      raise ValueError(f"env_ids must be a 1-D integer array, got {env_ids.dtype} "
                       f"{env_ids.shape}.")
    if not len(env_ids):
      return False
    if len(env_ids) == self._num_envs and bool((env_ids == self._all_envs).all()):
      return True
    if env_ids.min() < 0 or env_ids.max() >= self._num_envs:
      raise ValueError(f"env_ids must be in [0, {self._num_envs}), got {env_ids}.")
    # Duplicates would silently drop rewards in the fancy-indexed `+=` of `update`.
    if np.bincount(env_ids, minlength=self._num_envs).max() > 1:
      raise ValueError(f"env_ids must be distinct within a batch, got {env_ids}.")
    return False

  def _score_and_ends(self, num_results: int, reward: Any, terminated: Any, truncated: Any,
                      info: Mapping[str, Any]):
    """`[K]` arrays: the score's reward, whether the episode (Atari: game) ended, its length."""
    needed = ("reward", "terminated", "elapsed_step") if self._atari else ("elapsed_step",)
    missing = [key for key in needed if key not in info]
    if missing:
      raise ValueError(f"info lacks {missing}; EpisodeTracker(family={self._family}) "
                       "needs EnvPool's info dict.")
    if self._atari:
      score = np.asarray(info["reward"])
      ended = np.asarray(info["terminated"]).astype(bool) | np.asarray(truncated, bool)
    else:
      score = np.asarray(reward)
      ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
    elapsed_step = np.asarray(info["elapsed_step"])
    for name, array in (("reward", score), ("ended", ended), ("elapsed_step", elapsed_step)):
      if array.shape != (num_results,):
        raise ValueError(f"{name} must have shape ({num_results},) like env_ids, got "
                         f"{array.shape}.")
    return score, ended, elapsed_step
