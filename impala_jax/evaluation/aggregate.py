"""Aggregate scores over games, with confidence intervals, as rliable does (Agarwal et al. 2021).

"Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS 2021,
arXiv:2108.13264) recommends, for a few runs on many games, the interquartile mean (IQM) of
all run × game scores and percentile intervals from a *stratified* bootstrap: each replicate
resamples, within every game, that game's runs with replacement. The point estimates are the
ones of the `rliable` package (`rliable.metrics`):

* median: the median over games of each game's mean over runs (`aggregate_median`);
* IQM: the mean of the middle 50% of all run × game scores, `scipy.stats.trim_mean(x, 0.25)`
  (`aggregate_iqm`);
* mean: the mean over games of each game's mean over runs (`aggregate_mean`).

This is a small numpy re-implementation, not the `rliable` package: rliable 1.2 pulls in
`arch`, `statsmodels`, `pandas` and `seaborn` for what is 40 lines here. Games may have
different numbers of runs (rliable needs a rectangular `[runs, games]` array).

    scores = {"Pong": [0.9, 1.0, 1.1], "Breakout": [2.0, 3.5]}   # human-normalised, per run
    intervals = interval_estimates(scores, reps=2000, seed=0)
    intervals["iqm"]  # Interval(point=..., low=..., high=...)
"""

from typing import Callable, Dict, List, Mapping, NamedTuple, Sequence, Union

import numpy as np

# A metric maps per-game score arrays `[R, n_game]` (R bootstrap replicates, or 1) to `[R]`.
Metric = Callable[[List[np.ndarray]], np.ndarray]
Scores = Union[Mapping[str, Sequence[float]], Sequence[Sequence[float]]]

IQM_PROPORTION = 0.25


class Interval(NamedTuple):
  """A point estimate and its (percentile bootstrap) confidence interval."""

  point: float
  low: float
  high: float


def _trimmed_mean(x: np.ndarray, proportion: float) -> np.ndarray:
  """`scipy.stats.trim_mean(x, proportion, axis=-1)`: cuts int(proportion·n) from each end."""
  n = x.shape[-1]
  cut = int(proportion * n)
  return np.mean(np.sort(x, axis=-1)[..., cut:n - cut], axis=-1)


def _iqm(games: List[np.ndarray]) -> np.ndarray:
  return _trimmed_mean(np.concatenate(games, axis=-1), IQM_PROPORTION)


def _median(games: List[np.ndarray]) -> np.ndarray:
  return np.median(np.stack([g.mean(axis=-1) for g in games], axis=-1), axis=-1)


def _mean(games: List[np.ndarray]) -> np.ndarray:
  return np.mean(np.stack([g.mean(axis=-1) for g in games], axis=-1), axis=-1)


METRICS: Dict[str, Metric] = {"median": _median, "iqm": _iqm, "mean": _mean}


def _as_games(scores: Scores) -> List[np.ndarray]:
  values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
  if not values:
    raise ValueError("No games to aggregate.")
  games = []
  for value in values:
    array = np.asarray(value, np.float64).reshape(-1)
    if array.size == 0:
      raise ValueError("Every game needs at least one run's score.")
    if not np.all(np.isfinite(array)):
      raise ValueError(f"Scores must be finite, got {array}.")
    games.append(array)
  return games


def _metric(metric: Union[str, Metric]) -> Metric:
  if callable(metric):
    return metric
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; accepted: {', '.join(METRICS)}.")
  return METRICS[metric]


def iqm(values: Sequence[float]) -> float:
  """The interquartile mean of `values`: the mean of the middle 50% (scipy's trim_mean 0.25)."""
  array = np.asarray(values, np.float64).reshape(-1)
  if array.size == 0:
    raise ValueError("The IQM of no values is undefined.")
  return float(_trimmed_mean(array, IQM_PROPORTION))


def aggregate(scores: Scores, metric: Union[str, Metric] = "iqm") -> float:
  """One aggregate ("median", "iqm" or "mean", see the module doc) of per-game run scores."""
  return float(_metric(metric)([g[None] for g in _as_games(scores)])[0])


def stratified_bootstrap(scores: Scores, metric: Union[str, Metric] = "iqm", *,
                         reps: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Interval:
  """The metric and its percentile confidence interval from a stratified bootstrap.

  Each of `reps` replicates draws, for every game independently, as many runs as that game has,
  with replacement, and computes the metric; the interval is the central `confidence` mass of
  the replicates. Deterministic for a given `seed`.
  """
  if reps < 1:
    raise ValueError(f"reps must be >= 1, got {reps}.")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  games = _as_games(scores)
  fn = _metric(metric)
  rng = np.random.default_rng(seed)
  resampled = [g[rng.integers(0, g.size, size=(reps, g.size))] for g in games]
  replicates = fn(resampled)
  tail = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(replicates, [tail, 100.0 - tail])
  return Interval(float(fn([g[None] for g in games])[0]), float(low), float(high))


def interval_estimates(scores: Scores, metrics: Sequence[str] = ("median", "iqm", "mean"),
                       **kwargs) -> Dict[str, Interval]:
  """`stratified_bootstrap` for each metric name (same `reps`, `confidence`, `seed`)."""
  return {name: stratified_bootstrap(scores, name, **kwargs) for name in metrics}
