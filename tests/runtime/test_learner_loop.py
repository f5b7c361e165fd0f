"""Tests for impala_jax.runtime.learner_loop: when the loop stops, and why; batch hand-backs."""

import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import types
from impala_jax.runtime import learner_loop


class _Named(str):
  """A batch's name that also reads as a batch of finite values (the loop looks into the batch
  of an update that failed)."""

  observation = reward = action = behaviour_log_prob = np.zeros((2, 1), np.float32)
  core_state = ()


class _Batches:
  """Batch k is the string "batch-k"; `events` records takes and releases in order."""

  def __init__(self, events=None):
    self.calls = 0
    self.events = [] if events is None else events

  def next_batch(self):
    self.calls += 1
    name = f"batch-{self.calls}"
    self.events.append(("take", name))
    return types.HostBatch(_Named(name), lambda: self.events.append(("release", name)))


class _Learner:
  """Records transfers, dispatches and finishes; `nan_at` makes that update non-finite."""

  def __init__(self, events=None, nan_at=None, sends_ahead=True):
    self.update_step = 0
    self.events = [] if events is None else events
    self.nan_at = nan_at
    self.sends_ahead = sends_ahead

  def transfer(self, batch):
    self.events.append(("transfer", batch))
    return batch

  def dispatch(self, batch):
    self.events.append(("dispatch", batch))
    return batch

  def finish(self, batch):
    self.events.append(("finish", batch))
    finite = batch != self.nan_at
    self.update_step += finite
    return {"finite": float(finite), "loss": 0.0, "grad_norm": 0.0, "policy_version_mean": 0.0}

  def params(self):
    return {}


class _Telemetry:

  def record(self, metrics, env_steps):
    pass

  def flush(self, env_steps):
    pass


class _Checkpoints:

  def __init__(self):
    self.saved = []

  def maybe_save(self, env_steps):
    pass

  def save(self, env_steps):
    self.saved.append(env_steps)


def _loop(batches, checkpoints, learner=None, total_env_steps=1_000, **kwargs):
  # 10 agent steps per update: 1 unroll of 10.
  config = config_lib.TrainConfig(batch_size=1, unroll_length=10,
                                  total_env_steps=total_env_steps)
  return learner_loop.LearnerLoop(
      config, batches=batches, learner=learner or _Learner(),
      publish=lambda params, version: None, telemetry=_Telemetry(), checkpoints=checkpoints,
      **kwargs)


def test_a_reached_score_ends_the_run_early_with_a_checkpoint():
  batches, checkpoints = _Batches(), _Checkpoints()
  loop = _loop(batches, checkpoints, score_reached=lambda: batches.calls >= 3)
  result = loop.run()
  assert result == learner_loop.LoopResult(30, "score_reached")
  assert batches.calls == 3  # No batch is taken once the score is there.
  assert checkpoints.saved == [30]


def test_without_a_target_the_run_goes_to_its_budget():
  result = _loop(_Batches(), _Checkpoints()).run()
  assert result == learner_loop.LoopResult(1_000, "completed")


def _other_process_reports(code, after_updates):
  """An agreement with a second process that reports `code` from its `after_updates`th call."""
  calls = {"n": 0}

  def agree(own_code):
    calls["n"] += 1
    other = code if calls["n"] > after_updates else learner_loop.CONTINUE
    codes = [own_code, other]
    origin = max(range(2), key=lambda i: codes[i])
    return codes[origin], origin

  return agree


def test_another_process_reaching_the_score_stops_this_one_for_that_reason():
  result = _loop(_Batches(), _Checkpoints(),
                 agree=_other_process_reports(learner_loop.SCORE_REACHED, 2)).run()
  assert result == learner_loop.LoopResult(20, "score_reached")


def test_a_signal_elsewhere_outranks_a_reached_score():
  result = _loop(_Batches(), _Checkpoints(), score_reached=lambda: True,
                 agree=_other_process_reports(learner_loop.STOP, 0)).run()
  assert result == learner_loop.LoopResult(0, "signal")


def test_without_sending_ahead_the_next_batch_is_taken_after_the_update_is_published():
  events = []
  _loop(_Batches(events), _Checkpoints(), learner=_Learner(events, sends_ahead=False),
        total_env_steps=20).run()
  assert events == [
      ("take", "batch-1"), ("transfer", "batch-1"), ("dispatch", "batch-1"),
      ("finish", "batch-1"), ("release", "batch-1"),
      ("take", "batch-2"), ("transfer", "batch-2"), ("dispatch", "batch-2"),
      ("finish", "batch-2"), ("release", "batch-2")]


def test_the_next_batch_moves_to_the_devices_while_an_update_runs_and_is_released_after():
  events = []
  _loop(_Batches(events), _Checkpoints(), learner=_Learner(events), total_env_steps=30).run()
  assert events == [
      ("take", "batch-1"), ("transfer", "batch-1"), ("dispatch", "batch-1"),
      ("take", "batch-2"), ("transfer", "batch-2"), ("finish", "batch-1"),
      ("release", "batch-1"), ("dispatch", "batch-2"),
      ("take", "batch-3"), ("transfer", "batch-3"), ("finish", "batch-2"),
      ("release", "batch-2"), ("dispatch", "batch-3"),
      ("finish", "batch-3"), ("release", "batch-3")]  # No batch taken past the budget.


def test_a_non_finite_update_stops_the_run_and_every_batch_goes_back():
  events = []
  loop = _loop(_Batches(events), _Checkpoints(), learner=_Learner(events, nan_at="batch-2"))
  with pytest.raises(FloatingPointError, match="non-finite at update 1.*values are all "
                                               "finite, so the update itself diverged"):
    loop.run()
  taken = [name for kind, name in events if kind == "take"]
  released = [name for kind, name in events if kind == "release"]
  assert sorted(released) == sorted(taken) == ["batch-1", "batch-2", "batch-3"]
  # The batch transferred ahead is handed back too; the failed update's after it finished.
  assert events.index(("release", "batch-2")) > events.index(("finish", "batch-2"))


def test_a_stop_while_an_update_runs_lets_it_finish_before_its_batch_goes_back():
  events = []
  batches = _Batches(events)
  original = batches.next_batch
  batches.next_batch = lambda: original() if batches.calls < 1 else None  # Then: stop.
  result = _loop(batches, _Checkpoints(), learner=_Learner(events)).run()
  assert result == learner_loop.LoopResult(10, "signal")
  assert events[-2:] == [("finish", "batch-1"), ("release", "batch-1")]


def test_a_non_finite_update_on_non_finite_data_blames_the_data():
  unroll = types.Unroll(*(np.zeros((3, 1), np.float32) for _ in range(9)), core_state=())
  unroll = unroll._replace(reward=np.array([[0.0], [np.nan], [0.0]], np.float32))
  cause = learner_loop._likely_cause(unroll)  # pylint: disable=protected-access
  assert cause.startswith("The batch itself holds NaN or infinite values (in reward): the "
                          "data, not the optimizer.")
