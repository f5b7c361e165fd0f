"""Tests for impala_jax.evaluation.aggregate: IQM, median, mean and the stratified bootstrap."""

import numpy as np
import pytest
import scipy.stats

from impala_jax.evaluation import aggregate


def test_iqm_of_known_values():
  # 8 values: drop the 2 lowest and the 2 highest.
  assert aggregate.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)
  assert aggregate.iqm([100, 1, 2, 3]) == pytest.approx(2.5)  # outliers do not count
  assert aggregate.iqm([7.0]) == 7.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 33])
def test_iqm_is_scipys_25_percent_trimmed_mean(n):
  values = np.random.default_rng(n).normal(size=n)
  assert aggregate.iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25))


def test_aggregates_of_known_values():
  # Per-game means 1, 2 and 10 (rliable: median and mean of the per-game means).
  scores = {"a": [0.0, 2.0], "b": [2.0], "c": [9.0, 10.0, 11.0]}
  assert aggregate.aggregate(scores, "median") == pytest.approx(2.0)
  assert aggregate.aggregate(scores, "mean") == pytest.approx(13.0 / 3)
  # IQM over all 6 run × game scores [0, 2, 2, 9, 10, 11]: the middle 4 (int(0.25 · 6) = 1).
  assert aggregate.aggregate(scores, "iqm") == pytest.approx((2 + 2 + 9 + 10) / 4)
  with pytest.raises(ValueError, match="Unknown metric"):
    aggregate.aggregate(scores, "mode")


def test_bootstrap_interval_contains_the_point_estimate_and_is_deterministic():
  rng = np.random.default_rng(0)
  scores = {f"game{i}": rng.normal(i * 0.3, 0.2, size=5) for i in range(8)}
  for metric in ("median", "iqm", "mean"):
    interval = aggregate.stratified_bootstrap(scores, metric, reps=500, seed=3)
    assert interval.low <= interval.point <= interval.high
    assert interval.low < interval.high
    assert aggregate.stratified_bootstrap(scores, metric, reps=500, seed=3) == interval
  same = aggregate.stratified_bootstrap(scores, "iqm", reps=500, seed=3)
  other = aggregate.stratified_bootstrap(scores, "iqm", reps=500, seed=4)
  assert other.point == same.point and (other.low, other.high) != (same.low, same.high)


def test_bootstrap_is_stratified_by_game():
  # One run per game: every replicate resamples each game's only run, so no uncertainty.
  interval = aggregate.stratified_bootstrap({"a": [1.0], "b": [5.0]}, "mean", reps=200)
  assert interval == (3.0, 3.0, 3.0)
  # Games with different run counts are fine (rliable needs a rectangular array).
  interval = aggregate.stratified_bootstrap({"a": [1.0, 2.0, 3.0], "b": [5.0]}, "mean",
                                            reps=2000, seed=0)
  assert 3.0 <= interval.low <= interval.point == 3.5 <= interval.high <= 4.0


def test_more_runs_give_a_narrower_interval():
  rng = np.random.default_rng(1)
  few = {f"g{i}": rng.normal(1.0, 0.5, size=3) for i in range(5)}
  many = {f"g{i}": rng.normal(1.0, 0.5, size=60) for i in range(5)}
  width = lambda i: i.high - i.low
  assert width(aggregate.stratified_bootstrap(many, "iqm", reps=1000)) < width(
      aggregate.stratified_bootstrap(few, "iqm", reps=1000))


def test_interval_estimates_and_bad_input():
  estimates = aggregate.interval_estimates({"a": [0.5, 1.0], "b": [2.0, 3.0]}, reps=100)
  assert set(estimates) == {"median", "iqm", "mean"}
  with pytest.raises(ValueError, match="No games"):
    aggregate.aggregate({})
  with pytest.raises(ValueError, match="at least one run"):
    aggregate.aggregate({"a": []})
  with pytest.raises(ValueError, match="finite"):
    aggregate.aggregate({"a": [float("nan")]})
