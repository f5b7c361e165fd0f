"""Values checked where they enter: against what the task declares and the learner's limits."""

import dm_env
from dm_env import specs as dm_specs
import gymnasium
from gymnasium import spaces
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import types
from impala_jax.envs import custom
from impala_jax.envs import value_checks

CARTPOLE = envs.env_spec(config_lib.EnvConfig("CartPole-v1", num_envs=1))
PONG = envs.env_spec(config_lib.EnvConfig("Pong-v5", num_envs=1))
LIMITS = config_lib.ValueLimits(max_abs_reward=1e3, max_abs_value=1e4)
T = 3


def test_specs_declare_what_envpool_declares():
  # CartPole: its observation space's bounds (x within ±4.8) and its 500-step limit.
  assert CARTPOLE.ranges.observation_low[0] == np.float32(-4.8)
  assert np.isposinf(CARTPOLE.ranges.observation_high[1])
  assert CARTPOLE.ranges.max_episode_steps == 500
  assert (CARTPOLE.ranges.reward_low, CARTPOLE.ranges.reward_high) == (-np.inf, np.inf)
  # Pong: uint8 frames (bounded by their dtype), clipped rewards, its own time limit.
  assert PONG.ranges.observation_low is None
  assert (PONG.ranges.reward_low, PONG.ranges.reward_high) == (-1.0, 1.0)
  unclipped = envs.env_spec(config_lib.EnvConfig("Pong-v5", num_envs=1, reward_clip=False,
                                                 max_episode_steps=100))
  assert np.isposinf(unclipped.ranges.reward_high)
  assert unclipped.ranges.max_episode_steps == 100


def _step(**overrides):
  arrays = dict(observation=np.zeros((2, 4), np.float32), reward=np.ones(2, np.float32),
                game_reward=np.ones(2, np.float32), elapsed_step=np.array([1, 2], np.int32))
  arrays.update(overrides)
  return arrays


@pytest.mark.parametrize("field, value, message", [
    ("observation", np.array([[0, np.nan, 0, 0], [0, 0, 0, 0]], np.float32),
     r"observation holds nan at index \[0, 1\]"),
    ("observation", np.array([[5.0, 0, 0, 0], [0, 0, 0, 0]], np.float32),
     r"observation holds 5 at index \[0, 0\]; accepted: finite values in \[-4.8, 4.8\]"),
    ("observation", np.array([[0, 0, 0, 0], [0, 2e4, 0, 0]], np.float32),
     r"holds 20000 .* in \[-10000, 10000\]"),
    ("reward", np.array([1.0, np.inf], np.float32), r"reward holds inf at index \[1\]"),
    ("reward", np.array([1.0, 1e6], np.float32), r"reward holds 1e\+06 .*\[-1000, 1000\]"),
    ("game_reward", np.array([np.nan, 1.0], np.float32), "game_reward holds nan"),
    ("elapsed_step", np.array([0, 501], np.int32), r"elapsed_step holds 501 .*\[0, 500\]"),
    ("elapsed_step", np.array([-1, 0], np.int32), "elapsed_step holds -1"),
])
def test_a_step_outside_the_declared_ranges_or_limits_names_the_value(field, value, message):
  checker = value_checks.ValueChecker(CARTPOLE, LIMITS)
  checker.step(_step())  # Well-formed: accepted.
  with pytest.raises(value_checks.ValueViolation, match=message):
    checker.step(_step(**{field: value}))


def test_clipped_atari_rewards_must_be_clipped_but_the_game_score_need_not_be():
  checker = value_checks.ValueChecker(PONG, LIMITS)
  frames = np.zeros((1, 4, 84, 84), np.uint8)
  checker.step(dict(observation=frames, reward=np.array([1.0], np.float32),
                    game_reward=np.array([500.0], np.float32),
                    elapsed_step=np.array([3], np.int32)))
  with pytest.raises(value_checks.ValueViolation, match=r"reward holds 2 .*\[-1, 1\]"):
    checker.env_results(frames, np.array([2.0], np.float32))


def _unroll(**overrides):
  n = T + 1
  unroll = types.Unroll(
      observation=np.zeros((n, 1, 4), np.float32), reward=np.ones((n, 1), np.float32),
      terminated=np.zeros((n, 1), bool), truncated=np.zeros((n, 1), bool),
      first=np.zeros((n, 1), bool), action=np.ones((n, 1), np.int32),
      behaviour_log_prob=np.full((n, 1), -0.7, np.float32),
      policy_version=np.zeros((n, 1), np.int32), task=np.zeros((n, 1), np.int32),
      core_state=(np.zeros((1, 8), np.float32),))
  return unroll._replace(**overrides)


@pytest.mark.parametrize("field, value, message", [
    ("action", np.array([[0], [1], [2], [0]], np.int32), r"action holds 2 .*\[0, 1\]"),
    ("action", np.array([[0], [-1], [1], [0]], np.int32), "action holds -1"),
    ("behaviour_log_prob", np.array([[0], [0.5], [-1], [-1]], np.float32),
     "behaviour_log_prob holds 0.5"),
    ("behaviour_log_prob", np.full((T + 1, 1), -1e30, np.float32),
     r"behaviour_log_prob holds -1e\+30 .*\[-50, 0.001\]"),
    ("reward", np.full((T + 1, 1), np.nan, np.float32), "reward holds nan"),
    ("core_state", (np.full((1, 8), np.inf, np.float32),), "core state leaf 0 holds inf"),
])
def test_an_unroll_with_a_bad_value_is_refused(field, value, message):
  checker = value_checks.ValueChecker(CARTPOLE, LIMITS)
  checker.unroll(_unroll())
  with pytest.raises(value_checks.ValueViolation, match=message):
    checker.unroll(_unroll(**{field: value}))


def test_episode_records_must_be_possible_games():
  checker = value_checks.ValueChecker(CARTPOLE, LIMITS)
  checker.episodes(np.array([20.0, 500.0]), np.array([20, 500]))
  with pytest.raises(value_checks.ValueViolation, match="episode_length holds 0"):
    checker.episodes(np.array([0.0]), np.array([0]))
  with pytest.raises(value_checks.ValueViolation, match="episode_length holds 501"):
    checker.episodes(np.array([501.0]), np.array([501]))
  # One step of at most 1e3 (the limit) cannot score 1e6.
  with pytest.raises(value_checks.ValueViolation,
                     match=r"episode_return holds 1e\+06 .*\[-1000, 1000\]"):
    checker.episodes(np.array([1e6]), np.array([1]))
  with pytest.raises(value_checks.ValueViolation, match="episode_return holds nan"):
    checker.episodes(np.array([np.nan]), np.array([5]))


def test_non_finite_fields_of_a_batch_are_named():
  assert value_checks.non_finite_fields(_unroll()) == []
  bad = _unroll(reward=np.full((T + 1, 1), np.nan, np.float32),
                core_state=(np.full((1, 8), np.inf, np.float32),))
  assert value_checks.non_finite_fields(bad) == ["reward", "core_state"]


# -- your own environment --------------------------------------------------------------------


class _Leaky(gymnasium.Env):
  """Box(-1, 1) observations and finite rewards, until `bad_step`, where it returns `bad`."""

  observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
  action_space = spaces.Discrete(2)
  bad_step, bad = 2, dict(observation=np.array([0.0, np.nan, 0.0], np.float32))

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self.t = 0
    return np.zeros(3, np.float32), {}

  def step(self, action):
    self.t += 1
    result = dict(observation=np.zeros(3, np.float32), reward=1.0)
    if self.t == self.bad_step:
      result.update(self.bad)
    return result["observation"], result["reward"], False, False, {}


class _OutOfItsBox(_Leaky):
  bad = dict(observation=np.array([0.0, 0.0, 1.5], np.float32))


class _NanReward(_Leaky):
  bad = dict(reward=float("nan"))


@pytest.mark.parametrize("factory, message", [
    (_Leaky, r"observation holds nan at index \[0, 1\]"),
    (_OutOfItsBox, r"observation holds 1.5 at index \[0, 2\]; accepted: finite values in "
                   r"\[-1, 1\]"),
    (_NanReward, r"reward holds nan at index \[0\]"),
])
def test_your_environment_is_held_to_what_it_declares(factory, message):
  pool = custom.CustomEnvPool(factory, num_envs=1)
  try:
    pool.reset()
    pool.step(np.zeros(1, np.int32))
    with pytest.raises(value_checks.ValueViolation, match=f"Environment .*_.*: {message}"):
      pool.step(np.zeros(1, np.int32))
  finally:
    pool.close()


class _BadDiscount(dm_env.Environment):
  """A dm_env whose episode ends with discount 2, and whose reward spec is [0, 1]."""

  def reset(self):
    return dm_env.restart(np.zeros(2, np.float32))

  def step(self, action):
    return dm_env.TimeStep(dm_env.StepType.LAST, 0.5, 2.0, np.zeros(2, np.float32))

  def observation_spec(self):
    return dm_specs.Array((2,), np.float32)

  def action_spec(self):
    return dm_specs.DiscreteArray(2)

  def reward_spec(self):
    return dm_specs.BoundedArray((), np.float32, 0.0, 1.0)


class _RewardAboveItsSpec(_BadDiscount):

  def step(self, action):
    return dm_env.transition(3.0, np.zeros(2, np.float32))


def test_a_dm_env_is_held_to_its_discount_and_reward_specs():
  pool = custom.CustomEnvPool(_BadDiscount, num_envs=1)
  try:
    assert (pool.spec.ranges.reward_low, pool.spec.ranges.reward_high) == (0.0, 1.0)
    pool.reset()
    with pytest.raises(ValueError, match="discount 2.0; a discount must be a finite number in "
                                         r"\[0, 1\]"):
      pool.step(np.zeros(1, np.int32))
  finally:
    pool.close()
  pool = custom.CustomEnvPool(_RewardAboveItsSpec, num_envs=1)
  try:
    pool.reset()
    with pytest.raises(value_checks.ValueViolation, match=r"reward holds 3 .*\[0, 1\]"):
      pool.step(np.zeros(1, np.int32))
  finally:
    pool.close()
