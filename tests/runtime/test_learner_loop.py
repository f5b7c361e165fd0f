"""Tests for impala_jax.runtime.learner_loop: when the loop stops, and why."""

from impala_jax.runtime import learner_loop


class _Batches:

  def __init__(self):
    self.calls = 0

  def next_batch(self):
    self.calls += 1
    return ["unroll"]


class _Learner:

  def __init__(self):
    self.update_step = 0

  def step(self, unrolls):
    del unrolls
    self.update_step += 1
    return {"finite": 1.0, "loss": 0.0, "grad_norm": 0.0, "policy_version_mean": 0.0}

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


def _loop(batches, checkpoints, **kwargs):
  return learner_loop.LearnerLoop(
      batches=batches, learner=_Learner(), publish=lambda params, version: None,
      telemetry=_Telemetry(), checkpoints=checkpoints, steps_per_update=10,
      total_env_steps=1_000, **kwargs)


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
