"""The run's score: over every game, per source, and as `--stop_at_score` judges it.

Every finished episode carries its source (`types.EpisodeStats.source`): "local" for this
process's own actors, else the remote host that played it ("env host 1a2b3c4d", "actor host
1a2b3c4d"). `Scores` keeps the last `window` games of all of them (the progress score,
`recent`) and of each source, for at most `max_sources` sources (the least recently heard-from
is forgotten first: a source's name is its host's word, so the table must be bounded).

The stop rule. A remote host's games are its own report: within the values a task allows (30
one-step games worth 1e6 each pass where the task declares no reward bound) one host can send
any score, and a host's name is its own word, so one token holder can also pose as several
hosts. So the target counts as reached when the local actors' own score reaches it; remote
scores only propose it: when at least two remote sources each reach it over their own last
`window` games (so one host alone cannot even make the learner look), the learner plays games
of its own with its current parameters and stops only if those reach it too
(`runtime.score_check`). However many hosts lie, the run ends only on games it played itself.

A multi-task run's games are also kept per task (`types.EpisodeStats.task`): each game's own
score is the mean of its last `window` games (`by_task`), and the run's is the median over the
games of their human-normalised scores (`telemetry`).

The score itself, the mean of the last `window` games, is `recent_mean`; `rolling_means` is the
same after every game of a run, for curves (`experiments/plot_metrics.py`, the learning
benchmark), so that a curve shows what the run logged.
"""

import collections
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from impala_jax import types

MAX_SOURCES = 64


def recent_mean(returns: Sequence[float], window: int) -> Optional[float]:
  """The score after the last of `returns` (in the order played): the mean of the last `window`,
  or of all of them while there are fewer; None before the first game."""
  returns = np.asarray(returns, np.float64)[-window:]
  return float(np.mean(returns)) if len(returns) else None


def rolling_means(returns: Sequence[float], window: int) -> np.ndarray:
  """The score after each game: element i is `recent_mean(returns[:i + 1], window)`."""
  returns = np.asarray(returns, np.float64)
  # The first `window - 1` games: the mean of all so far. Then one full window per game.
  head = [np.mean(returns[:k]) for k in range(1, min(window, len(returns) + 1))]
  full = (np.lib.stride_tricks.sliding_window_view(returns, window).mean(axis=-1)
          if len(returns) >= window else np.zeros(0))
  return np.concatenate([np.asarray(head, np.float64), full])


def row_ends(env_steps: Sequence[float]) -> np.ndarray:
  """Indices of the last game recorded at each metrics row: games finished between two rows are
  written at the second (`metrics.EpisodeWriter`), so they share its `env_steps`."""
  env_steps = np.asarray(env_steps)
  if not len(env_steps):
    return np.zeros(0, np.int64)
  return np.flatnonzero(np.append(env_steps[1:] != env_steps[:-1], True))


class Scores:
  """The last `window` game scores overall and per source.

  Args:
    window: games per score (`telemetry.RECENT_EPISODES`).
    previous: games from before a resume, oldest first (their sources as recorded).
  """

  def __init__(self, window: int, previous: Iterable[types.EpisodeStats] = (),
               max_sources: int = MAX_SOURCES):
    self._window = window
    self._max_sources = max_sources
    self._all = collections.deque(maxlen=window)
    self._by_source: "collections.OrderedDict[str, collections.deque]" = (
        collections.OrderedDict())
    self.counts: Dict[str, int] = collections.Counter()  # Games per source, this session.
    # Task ids are the run's few games (`EnvConfig.tasks`): no bound needed.
    self._by_task: Dict[int, collections.deque] = {}
    self._add(previous, count=False)

  def add(self, episodes: Iterable[types.EpisodeStats]) -> None:
    self._add(episodes, count=True)

  def _add(self, episodes: Iterable[types.EpisodeStats], count: bool) -> None:
    for episode in episodes:
      self._all.append(episode.episode_return)
      recent = self._by_source.pop(episode.source, None)
      if recent is None:
        recent = collections.deque(maxlen=self._window)
      recent.append(episode.episode_return)
      self._by_source[episode.source] = recent  # Now the most recently heard from.
      while len(self._by_source) > self._max_sources:
        forgotten, _ = self._by_source.popitem(last=False)
        self.counts.pop(forgotten, None)
      if count:
        self.counts[episode.source] += 1
      self._by_task.setdefault(episode.task, collections.deque(maxlen=self._window)).append(
          episode.episode_return)

  def games(self) -> int:
    """Games in the overall window (at most `window`)."""
    return len(self._all)

  def mean(self) -> Optional[float]:
    """The mean of the last `window` games, however many there are so far (None: none)."""
    return recent_mean(self._all, self._window)

  def recent(self) -> Optional[float]:
    """The mean of the last `window` games of every source, once there are that many."""
    return self.mean() if len(self._all) == self._window else None

  def by_source(self) -> Dict[str, float]:
    """Each source's own score: the mean of its last `window` games, once it has that many."""
    return {source: recent_mean(recent, self._window)
            for source, recent in self._by_source.items() if len(recent) == self._window}

  def by_task(self, full: bool = False) -> Dict[int, float]:
    """Each task's own score: the mean of its last `window` games, however many so far (a
    task without games is left out); with `full`, only once it has `window` of them."""
    return {task: recent_mean(recent, self._window) for task, recent in self._by_task.items()
            if not full or len(recent) == self._window}

  def local_score(self) -> Optional[float]:
    """The local actors' own score (None until they have finished `window` games)."""
    return self.by_source().get(types.LOCAL_SOURCE)

  def remote_score(self) -> Optional[float]:
    """The second best of the remote sources' own scores (None until two have one): what
    at least two remote hosts each reach, so that one host's report never decides."""
    remote = sorted((score for source, score in self.by_source().items()
                     if source != types.LOCAL_SOURCE), reverse=True)
    return remote[1] if len(remote) >= 2 else None

  def summary(self) -> str:
    """Games and score per source, for a log line: "local 40 games 23.5, env host ab 9 games"."""
    scores = self.by_source()
    parts = []
    for source in self._by_source:
      score = scores.get(source)
      parts.append(f"{source} {self.counts.get(source, 0)} games" +
                   ("" if score is None else f" {score:.2f}"))
    return "; ".join(parts)
