"""The run's score: over every game, per source, and as `--stop_at_score` judges it.

Every finished episode carries its source (`types.EpisodeStats.source`): "local" for this
process's own actors, else the remote host that played it ("env host 1a2b3c4d", "actor host
1a2b3c4d"). `Scores` keeps the last `window` games of all of them (the progress score,
`recent`) and of each source, for at most `max_sources` sources (the least recently heard-from
is forgotten first: a source's name is its host's word, so the table must be bounded).

The stop rule. A remote host's games are its own report: within the values a task allows (30
one-step games worth 1e6 each pass where the task declares no reward bound) one host can send
any score. So the target counts as reached only when the local actors' own score reaches it,
or when the scores of at least two remote sources, each over its own last `window` games, do:
one host alone never ends a run. (Two hosts that agree to lie still can: see
docs/distributed.md, "Trust".)
"""

import collections
from typing import Dict, Iterable, List, Optional

import numpy as np

from impala_jax import types

MAX_SOURCES = 64


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

  def games(self) -> int:
    """Games in the overall window (at most `window`)."""
    return len(self._all)

  def mean(self) -> Optional[float]:
    """The mean of the last `window` games, however many there are so far (None: none)."""
    return float(np.mean(self._all)) if self._all else None

  def recent(self) -> Optional[float]:
    """The mean of the last `window` games of every source, once there are that many."""
    return self.mean() if len(self._all) == self._window else None

  def by_source(self) -> Dict[str, float]:
    """Each source's own score: the mean of its last `window` games, once it has that many."""
    return {source: float(np.mean(recent)) for source, recent in self._by_source.items()
            if len(recent) == self._window}

  def stop_score(self) -> Optional[float]:
    """The score `--stop_at_score` judges: the local actors' own, or the second best of the
    remote sources' own (so that one remote host's report never decides); None until one of
    these exists."""
    scores = self.by_source()
    candidates: List[float] = []
    if types.LOCAL_SOURCE in scores:
      candidates.append(scores.pop(types.LOCAL_SOURCE))
    remote = sorted(scores.values(), reverse=True)
    if len(remote) >= 2:
      candidates.append(remote[1])
    return max(candidates) if candidates else None

  def summary(self) -> str:
    """Games and score per source, for a log line: "local 40 games 23.5, env host ab 9 games"."""
    scores = self.by_source()
    parts = []
    for source in self._by_source:
      score = scores.get(source)
      parts.append(f"{source} {self.counts.get(source, 0)} games" +
                   ("" if score is None else f" {score:.2f}"))
    return "; ".join(parts)
