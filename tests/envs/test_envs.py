"""Tests for impala_jax.envs, on real EnvPool environments with a few envs each.

Besides the module's own contract, these tests pin down the EnvPool behaviour the actor and
learner rely on (next-step autoreset, terminated vs truncated, Atari life-loss semantics), so an
EnvPool upgrade that changes it fails here first.
"""

import envpool
import numpy as np
import pytest

from impala_jax import envs
from impala_jax import networks
from impala_jax.config import EnvConfig
from impala_jax.config import NetworkConfig
from impala_jax.types import EpisodeStats


def _random_actions(rng, spec, batch):
  if spec.discrete:
    return rng.integers(0, spec.num_actions, size=batch).astype(np.int32)
  return rng.uniform(-1.0, 1.0, size=(batch, spec.action_dim))


# ------------------------------------------------------------------------------------------
# Task ids and construction.


def test_unknown_env_id_names_the_id_and_close_matches():
  with pytest.raises(ValueError, match=r"Unknown EnvPool task 'Pongg-v5'.*Did you mean:.*"
                     r"\bPong-v5\b"):
    envs.make_env(EnvConfig(env_id="Pongg-v5"))
  # The same early check guards the other entry points.
  with pytest.raises(ValueError, match="Pongg-v5"):
    envs.env_spec(EnvConfig(env_id="Pongg-v5"))
  with pytest.raises(ValueError, match="Pongg-v5"):
    envs.env_family("Pongg-v5")
  # A case slip still gets a suggestion.
  with pytest.raises(ValueError, match=r"Did you mean:.*\bCartPole-v1\b"):
    envs.env_family("cartpole-v1")
  # With nothing close, the message still names the id.
  with pytest.raises(ValueError, match="Unknown EnvPool task 'qqqqqqqqqqqq'"):
    envs.env_family("qqqqqqqqqqqq")


def test_env_family_follows_the_spec_class_and_the_colon():
  assert envs.env_family("Pong-v5") is envs.EnvFamily.ATARI
  assert envs.env_family("Breakout-v5") is envs.EnvFamily.ATARI
  assert envs.env_family("CartPole-v1") is envs.EnvFamily.ENVPOOL
  assert envs.env_family("HalfCheetah-v4") is envs.EnvFamily.ENVPOOL
  assert envs.env_family("my_sim:make_env") is envs.EnvFamily.CUSTOM
  # A built environment's spec says the same, from its class.
  assert envs.env_family(envpool.make_spec("Pong-v5")) is envs.EnvFamily.ATARI
  assert envs.env_family(envpool.make_spec("CartPole-v1")) is envs.EnvFamily.ENVPOOL
  with pytest.raises(TypeError, match="env_id must be a str"):
    envs.env_family(3)


def test_make_env_rejects_a_non_config():
  with pytest.raises(TypeError, match="EnvConfig"):
    envs.make_env({"env_id": "Pong-v5"})


def test_pong_spec_and_paper_settings_reach_envpool():
  config = EnvConfig(env_id="Pong-v5", num_envs=2, seed=3)
  spec = envs.env_spec(config)
  assert spec.observation_shape == (4, 84, 84)
  assert spec.observation_dtype == np.uint8
  assert spec.discrete and spec.num_actions == 6
  assert spec.action_dim is None and spec.action_low is None and spec.action_high is None
  assert spec.action_dtype == np.int32
  assert spec.family is envs.EnvFamily.ATARI

  env = envs.make_env(config)
  try:
    assert envs.env_spec(env) == spec
    built = env.spec.config
    assert built.episodic_life and built.reward_clip
    assert (built.noop_max, built.stack_num, built.frame_skip) == (30, 4, 4)
    assert built.repeat_action_probability == 0.0
    assert (built.img_height, built.img_width, built.gray_scale) == (84, 84, True)
    assert (built.num_envs, built.batch_size, built.seed) == (2, 2, 3)
    obs, _ = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
  finally:
    env.close()


def test_non_default_atari_settings_reach_envpool():
  config = EnvConfig(env_id="Pong-v5", num_envs=1, episodic_life=False, reward_clip=False,
                     noop_max=7, stack_num=2, frame_skip=3, repeat_action_probability=0.25,
                     max_episode_steps=123)
  assert envs.env_spec(config).observation_shape == (2, 84, 84)
  env = envs.make_env(config)
  try:
    built = env.spec.config
    assert not built.episodic_life and not built.reward_clip
    assert (built.noop_max, built.stack_num, built.frame_skip) == (7, 2, 3)
    assert built.repeat_action_probability == 0.25
    assert built.max_episode_steps == 123
  finally:
    env.close()


def test_bad_atari_settings_fail_early_and_only_for_atari():
  with pytest.raises(ValueError, match="noop_max"):
    envs.make_env(EnvConfig(env_id="Pong-v5", num_envs=1, noop_max=-1))
  with pytest.raises(ValueError, match="repeat_action_probability"):
    envs.env_spec(EnvConfig(env_id="Pong-v5", repeat_action_probability=1.5))
  with pytest.raises(ValueError, match="max_episode_steps"):
    envs.env_spec(EnvConfig(env_id="CartPole-v1", max_episode_steps=0))
  # Non-Atari tasks ignore the Atari fields, bad or not.
  assert envs.env_spec(EnvConfig(env_id="CartPole-v1", noop_max=-1)).num_actions == 2


def test_non_atari_tasks_get_no_atari_kwargs():
  # The premise: EnvPool rejects keys its task does not know.
  with pytest.raises(TypeError):
    envpool.make("CartPole-v1", env_type="gymnasium", num_envs=1, episodic_life=True)
  config = EnvConfig(env_id="CartPole-v1", num_envs=2, episodic_life=True, reward_clip=True,
                     stack_num=4)
  env = envs.make_env(config)
  try:
    assert not hasattr(env.spec.config, "episodic_life")
    obs, _ = env.reset()
    assert obs.shape == (2, 4)
  finally:
    env.close()


# ------------------------------------------------------------------------------------------
# Several games: a multi-task run's environments.


def test_several_games_are_tasks_each_played_with_the_full_action_space():
  config = EnvConfig("Pong-v5,Breakout-v5", num_envs=2, image_size=42)
  assert config.tasks == ("Pong-v5", "Breakout-v5") and config.num_tasks == 2
  assert config.multi_task and not config.full_action_space
  breakout = config.task_config(1)
  assert breakout.env_id == "Breakout-v5" and breakout.full_action_space
  assert breakout.num_envs == 2 and breakout.image_size == 42 and not breakout.multi_task
  spec = envs.env_spec(config)  # One spec for both: the network's.
  assert spec.num_actions == 18 and spec.num_tasks == 2
  assert spec.observation_shape == (4, 42, 42) and spec.family is envs.EnvFamily.ATARI
  for task in range(2):
    env = envs.make_env(config.task_config(task))
    try:
      assert env.spec.config.full_action_space
      assert envs.env_spec(env) == spec._replace(num_tasks=1)
    finally:
      env.close()
  # A pool plays one game.
  with pytest.raises(ValueError, match="A pool plays one game, not 'Pong-v5,Breakout-v5'"):
    envs.make_env(config)


def test_one_game_keeps_its_minimal_action_set():
  config = EnvConfig("Pong-v5")
  assert config.tasks == ("Pong-v5",) and not config.multi_task
  assert config.task_config(0) is config
  spec = envs.env_spec(config)
  assert spec.num_actions == 6 and spec.num_tasks == 1
  assert envs.envpool_envs.envpool_kwargs(config)["full_action_space"] is False
  with pytest.raises(ValueError, match=r"task must be in \[0, 1\), got 1"):
    config.task_config(1)


@pytest.mark.parametrize("env_id, message", [
    ("Pong-v5,,Breakout-v5", "Bad game '' in env_id 'Pong-v5,,Breakout-v5'"),
    ("Pong-v5,", "Bad game '' in env_id 'Pong-v5,'"),
    ("Pong-v5, Breakout-v5", "Bad game ' Breakout-v5'"),
    ("Pong-v5,impala_jax.envs.examples:make_corridor",
     "Bad game 'impala_jax.envs.examples:make_corridor'"),
    ("Pong-v5,Breakout-v5,Pong-v5", "lists Pong-v5 more than once"),
    ("", "env_id must be one EnvPool task id"),
])
def test_a_malformed_list_of_games_names_the_bad_entry_and_the_accepted_form(env_id, message):
  with pytest.raises(ValueError) as error:
    EnvConfig(env_id)
  assert message in str(error.value)
  if "more than once" not in message:
    assert "Atari games separated by commas without spaces, e.g. 'Pong-v5,Breakout-v5'" in (
        str(error.value))


def test_every_game_is_checked_to_be_an_envpool_atari_game():
  with pytest.raises(ValueError, match=r"Unknown EnvPool task 'Breakoutt-v5'. Did you mean: "
                     r"Breakout-v5"):
    envs.env_spec(EnvConfig("Pong-v5,Breakoutt-v5"))
  with pytest.raises(ValueError) as error:
    envs.env_spec(EnvConfig("Pong-v5,CartPole-v1"))
  assert str(error.value) == (
      "A multi-task run takes Atari games only; 'CartPole-v1' in --env=Pong-v5,CartPole-v1 is "
      "not one (its family: envpool). Accepted: EnvPool Atari ids separated by commas, e.g. "
      "Pong-v5,Breakout-v5.")


def test_a_trackers_episodes_carry_its_task():
  tracker = envs.EpisodeTracker(num_envs=2, family=envs.EnvFamily.ENVPOOL, task=3)
  assert _update(tracker, [0, 1], [1.0, 2.0], [1, 0], [0, 0], _info([4, 4])) == [
      EpisodeStats(1.0, 4, task=3)]


# ------------------------------------------------------------------------------------------
# Atari semantics: clipped reward, life loss, info["terminated"].


def test_atari_reward_clipping_and_episodic_life():
  # Space Invaders scores 5-30 points per invader and has 3 lives, so random play shows both
  # clipping and life losses within a few hundred steps.
  num_envs = 2
  config = EnvConfig(env_id="SpaceInvaders-v5", num_envs=num_envs, seed=0)
  spec = envs.env_spec(config)
  env = envs.make_env(config)
  rng = np.random.default_rng(0)
  try:
    _, info = env.reset()
    lives = info["lives"].copy()
    after_life_loss = np.zeros(num_envs, bool)
    saw_big_reward = saw_life_loss = False
    for _ in range(1500):
      _, reward, terminated, truncated, info = env.step(_random_actions(rng, spec, num_envs))
      raw = info["reward"]
      np.testing.assert_array_equal(reward, np.sign(raw))  # training reward: sign(raw).
      saw_big_reward |= bool((raw > 1).any())
      assert not (terminated & truncated).any()
      # The step after a life loss is a reset step: reward 0, lives unchanged, but the game
      # (and its step counter) goes on.
      if after_life_loss.any():
        assert (raw[after_life_loss] == 0).all()
        assert (info["lives"][after_life_loss] == lives[after_life_loss]).all()
        assert (info["elapsed_step"][after_life_loss] > 0).all()
      life_loss = terminated & (info["terminated"] == 0)
      if life_loss.any():
        saw_life_loss = True
        # episodic_life: a life loss is `terminated` but not the real game over.
        assert (info["lives"][life_loss] == lives[life_loss] - 1).all()
        assert (info["lives"][life_loss] > 0).all()
      game_over = info["terminated"] == 1
      assert (terminated[game_over]).all() and (info["lives"][game_over] == 0).all()
      after_life_loss = life_loss
      lives = info["lives"].copy()
      if saw_big_reward and saw_life_loss:
        break
    assert saw_big_reward, "no reward above 1 seen; clipping untested"
    assert saw_life_loss, "no life loss seen; episodic life untested"
  finally:
    env.close()


# ------------------------------------------------------------------------------------------
# Classic control: terminated vs truncated and the next-step autoreset.


def test_cartpole_spec():
  spec = envs.env_spec(EnvConfig(env_id="CartPole-v1"))
  assert spec.discrete and spec.num_actions == 2
  assert spec.observation_shape == (4,)
  assert np.issubdtype(spec.observation_dtype, np.floating)
  assert spec.family is envs.EnvFamily.ENVPOOL


def test_cartpole_time_limit_is_truncation_then_autoreset():
  config = EnvConfig(env_id="CartPole-v1", num_envs=1, max_episode_steps=5)
  env = envs.make_env(config)
  try:
    env.reset()
    for step in range(1, 6):
      # Alternating pushes keep the pole up for far longer than 5 steps.
      _, reward, terminated, truncated, info = env.step(np.array([step % 2], np.int32))
      assert reward[0] == 1.0 and info["elapsed_step"][0] == step
      assert not terminated[0]
      assert truncated[0] == (step == 5)
    # Autoreset: the action is ignored, no reward, the counter restarts, nothing ends.
    obs, reward, terminated, truncated, info = env.step(np.array([0], np.int32))
    assert reward[0] == 0.0 and info["elapsed_step"][0] == 0
    assert not terminated[0] and not truncated[0]
    assert np.abs(obs).max() <= 0.05  # CartPole's initial state is uniform in ±0.05.
  finally:
    env.close()


def test_cartpole_failure_is_termination_then_autoreset():
  env = envs.make_env(EnvConfig(env_id="CartPole-v1", num_envs=1))
  try:
    env.reset()
    for _ in range(100):
      # Always pushing right topples the pole within a few dozen steps.
      _, reward, terminated, truncated, info = env.step(np.array([1], np.int32))
      assert not truncated[0]
      if terminated[0]:
        break
    assert terminated[0], "the pole never fell"
    assert reward[0] == 1.0 and info["elapsed_step"][0] < 100
    obs, reward, terminated, truncated, info = env.step(np.array([1], np.int32))
    assert reward[0] == 0.0 and info["elapsed_step"][0] == 0
    assert not terminated[0] and not truncated[0]
    assert np.abs(obs).max() <= 0.05
  finally:
    env.close()


# ------------------------------------------------------------------------------------------
# Continuous control and actions.


def test_halfcheetah_continuous_spec_and_clipped_actions():
  config = EnvConfig(env_id="HalfCheetah-v4", num_envs=2)
  spec = envs.env_spec(config)
  assert not spec.discrete and spec.num_actions is None
  assert spec.action_dim == 6
  np.testing.assert_array_equal(spec.action_low, -np.ones(6))
  np.testing.assert_array_equal(spec.action_high, np.ones(6))
  assert spec.observation_shape == (17,)
  assert spec.family is envs.EnvFamily.ENVPOOL

  policy_actions = np.array([[2.0, -3.0, 0.5, -0.25, 1.0, -1.0],
                             [0.0, 0.1, -7.0, 9.0, 0.0, 0.0]], np.float32)
  actions = envs.to_env_action(policy_actions, spec)
  assert actions.dtype == spec.action_dtype
  np.testing.assert_allclose(actions, np.clip(policy_actions, -1.0, 1.0))
  assert policy_actions[0, 0] == 2.0  # The input is not modified.

  env = envs.make_env(config)
  try:
    env.reset()
    obs, reward, _, _, _ = env.step(actions)
    assert obs.shape == (2, 17) and reward.shape == (2,)
  finally:
    env.close()


def _discrete_spec(num_actions=6):
  return envs.EnvSpec(observation_shape=(4,), observation_dtype=np.dtype(np.float32),
                      discrete=True, num_actions=num_actions, action_dim=None,
                      action_low=None, action_high=None, action_dtype=np.dtype(np.int32),
                      family=envs.EnvFamily.ENVPOOL)


def _continuous_spec():
  return envs.EnvSpec(observation_shape=(3,), observation_dtype=np.dtype(np.float32),
                      discrete=False, num_actions=None, action_dim=2,
                      action_low=np.array([-2.0, 0.0], np.float32),
                      action_high=np.array([2.0, 1.0], np.float32),
                      action_dtype=np.dtype(np.float32),
                      family=envs.EnvFamily.ENVPOOL)


def test_to_env_action_discrete():
  spec = _discrete_spec()
  actions = envs.to_env_action(np.array([0, 5, 3], np.int64), spec)
  assert actions.dtype == np.int32
  np.testing.assert_array_equal(actions, [0, 5, 3])
  with pytest.raises(ValueError, match=r"\[0, 6\)"):
    envs.to_env_action(np.array([0, 6]), spec)
  with pytest.raises(ValueError, match=r"\[0, 6\)"):
    envs.to_env_action(np.array([-1, 0]), spec)
  with pytest.raises(TypeError, match="integers"):
    envs.to_env_action(np.array([0.0, 1.0]), spec)
  with pytest.raises(ValueError, match="batch"):
    envs.to_env_action(np.zeros((2, 1), np.int32), spec)


def test_to_env_action_continuous():
  spec = _continuous_spec()
  actions = envs.to_env_action(np.array([[3.0, -1.0], [-3.0, 0.5]]), spec)
  assert actions.dtype == np.float32
  np.testing.assert_array_equal(actions, [[2.0, 0.0], [-2.0, 0.5]])
  with pytest.raises(ValueError, match="NaN"):
    envs.to_env_action(np.array([[np.nan, 0.0]]), spec)
  with pytest.raises(ValueError, match=r"\[batch, 2\]"):
    envs.to_env_action(np.zeros((2, 3)), spec)


# ------------------------------------------------------------------------------------------
# EpisodeTracker on synthetic batches.


def _info(elapsed_step, reward=None, terminated=None):
  info = {"elapsed_step": np.asarray(elapsed_step, np.int32)}
  if reward is not None:
    info["reward"] = np.asarray(reward, np.float32)
  if terminated is not None:
    info["terminated"] = np.asarray(terminated, np.int32)
  return info


def _update(tracker, env_ids, reward, terminated, truncated, info):
  return tracker.update(np.asarray(env_ids, np.int32), np.asarray(reward, np.float32),
                        np.asarray(terminated, bool), np.asarray(truncated, bool), info)


def test_tracker_async_subsets_synthetic():
  tracker = envs.EpisodeTracker(num_envs=4, family=envs.EnvFamily.ENVPOOL)
  assert _update(tracker, [0, 2], [1, 2], [0, 0], [0, 0], _info([1, 1])) == []
  # Env 3 ends after one step; env 1 goes on.
  assert _update(tracker, [1, 3], [5, 1], [0, 1], [0, 0], _info([1, 1])) == [
      EpisodeStats(1.0, 1)]
  # Env 2 is truncated (ends too); the batch order here is [2, 0].
  assert _update(tracker, [2, 0], [3, 1], [0, 0], [1, 0], _info([2, 2])) == [
      EpisodeStats(5.0, 2)]
  # Env 3's autoreset step: reward 0, starts nothing new in the count.
  assert _update(tracker, [3], [0], [0], [0], _info([0])) == []
  # Two ends in one batch come back in batch order.
  assert _update(tracker, [3, 0], [4, 1], [1, 1], [0, 0], _info([1, 3])) == [
      EpisodeStats(4.0, 1), EpisodeStats(3.0, 3)]
  assert _update(tracker, [1], [0.5], [1], [0], _info([2])) == [EpisodeStats(5.5, 2)]
  assert tracker.num_episodes == 5
  assert _update(tracker, np.zeros(0, np.int32), [], [], [], _info([])) == []


def test_tracker_atari_games_span_lives_synthetic():
  tracker = envs.EpisodeTracker(num_envs=2, family=envs.EnvFamily.ATARI)
  # Clipped training rewards differ from the game's; the game's are summed.
  assert _update(tracker, [0, 1], [1, 1], [0, 0], [0, 0],
                 _info([1, 1], reward=[30, 4], terminated=[0, 0])) == []
  # Env 0 loses a life: `terminated` for training, but the game goes on.
  assert _update(tracker, [0], [1], [1], [0], _info([2], reward=[10], terminated=[0])) == []
  assert _update(tracker, [0], [0], [0], [0], _info([2], reward=[0], terminated=[0])) == []
  # Env 1 is truncated: the game ends there.
  assert _update(tracker, [1], [1], [0], [1], _info([2], reward=[7], terminated=[0])) == [
      EpisodeStats(11.0, 2)]
  # Env 0's real game over.
  assert _update(tracker, [0], [1], [1], [0], _info([3], reward=[5], terminated=[1])) == [
      EpisodeStats(45.0, 3)]


def test_tracker_rejects_bad_inputs():
  tracker = envs.EpisodeTracker(num_envs=3, family=envs.EnvFamily.ENVPOOL)
  with pytest.raises(ValueError, match="in \\[0, 3\\)"):
    _update(tracker, [0, 3], [0, 0], [0, 0], [0, 0], _info([1, 1]))
  with pytest.raises(ValueError, match="distinct"):
    _update(tracker, [1, 1], [0, 0], [0, 0], [0, 0], _info([1, 1]))
  with pytest.raises(ValueError, match="shape"):
    _update(tracker, [0, 1], [0, 0, 0], [0, 0], [0, 0], _info([1, 1]))
  with pytest.raises(ValueError, match="elapsed_step"):
    _update(tracker, [0], [0], [0], [0], {})
  with pytest.raises(ValueError, match="1-D integer"):
    tracker.update(np.array([0.0]), [0], [False], [False], _info([1]))
  atari_tracker = envs.EpisodeTracker(num_envs=1, family=envs.EnvFamily.ATARI)
  with pytest.raises(ValueError, match="reward"):
    _update(atari_tracker, [0], [0], [0], [0], _info([1]))
  with pytest.raises(ValueError, match="num_envs"):
    envs.EpisodeTracker(num_envs=0, family=envs.EnvFamily.ENVPOOL)
  with pytest.raises(TypeError, match="EnvFamily"):  # A bool, as it once took.
    envs.EpisodeTracker(num_envs=1, family=True)


# ------------------------------------------------------------------------------------------
# EpisodeTracker on real environments.


@pytest.mark.parametrize("env_id", ["Breakout-v5", "SpaceInvaders-v5"])
def test_tracker_scores_whole_atari_games(env_id):
  num_envs = 2
  config = EnvConfig(env_id=env_id, num_envs=num_envs, seed=1)
  spec = envs.env_spec(config)
  env = envs.make_env(config)
  tracker = envs.EpisodeTracker(num_envs, spec.family)
  rng = np.random.default_rng(1)
  # Independent bookkeeping, per env, of the game in progress.
  raw_sum = np.zeros(num_envs)
  clipped_sum = np.zeros(num_envs)
  life_losses = np.zeros(num_envs, np.int64)
  applied_steps = np.zeros(num_envs, np.int64)  # steps whose action the game applied.
  previous_ended = np.zeros(num_envs, bool)  # reset() already happened: first step counts.
  games = []
  try:
    env.reset()
    for _ in range(3000):
      _, reward, terminated, truncated, info = env.step(_random_actions(rng, spec, num_envs))
      env_ids = info["env_id"]
      applied_steps[env_ids] += ~previous_ended[env_ids]
      previous_ended[env_ids] = terminated | truncated
      raw_sum[env_ids] += info["reward"]
      clipped_sum[env_ids] += reward
      life_losses[env_ids] += terminated & (info["terminated"] == 0)
      finished = tracker.update(env_ids, reward, terminated, truncated, info)
      game_over = (info["terminated"] == 1) | truncated
      assert len(finished) == int(game_over.sum())
      for stats, env_id in zip(finished, env_ids[game_over]):
        games.append((stats, raw_sum[env_id], clipped_sum[env_id], life_losses[env_id],
                      applied_steps[env_id]))
        raw_sum[env_id] = clipped_sum[env_id] = life_losses[env_id] = applied_steps[env_id] = 0
      if len(games) >= num_envs:
        break
  finally:
    env.close()
  assert len(games) >= num_envs, "no game finished"
  for stats, raw, clipped, lost_lives, steps in games:
    assert stats.episode_return == pytest.approx(raw)
    # The game outlived several life-loss episodes (Breakout has 5 lives, Space Invaders 3).
    assert lost_lives >= 2
    # Length convention: applied actions, without autoreset or life-loss reset steps.
    assert stats.episode_length == steps
  if env_id == "SpaceInvaders-v5":
    # Invaders are worth 5-30 points: the real score is not the clipped one.
    assert any(stats.episode_return > clipped for stats, _, clipped, _, _ in games)


def test_tracker_cartpole_returns_equal_lengths():
  num_envs = 4
  config = EnvConfig(env_id="CartPole-v1", num_envs=num_envs, max_episode_steps=25)
  spec = envs.env_spec(config)
  env = envs.make_env(config)
  tracker = envs.EpisodeTracker(num_envs, spec.family)
  rng = np.random.default_rng(2)
  episodes = []
  truncations = 0
  try:
    env.reset()
    for _ in range(300):
      _, reward, terminated, truncated, info = env.step(_random_actions(rng, spec, num_envs))
      truncations += int(truncated.sum())
      episodes += tracker.update(info["env_id"], reward, terminated, truncated, info)
  finally:
    env.close()
  assert len(episodes) >= 20
  assert truncations > 0, "no time limit hit; truncation untested"
  for stats in episodes:
    # CartPole pays 1 per applied step and 0 on the autoreset step.
    assert stats.episode_return == stats.episode_length
    assert 1 <= stats.episode_length <= 25


def test_tracker_async_cartpole_env_id_subsets():
  num_envs, batch_size = 4, 2
  config = EnvConfig(env_id="CartPole-v1", num_envs=num_envs, batch_size=batch_size,
                     num_threads=2, seed=5)
  spec = envs.env_spec(config)
  env = envs.make_env(config)
  tracker = envs.EpisodeTracker(num_envs, spec.family)
  rng = np.random.default_rng(3)
  applied_steps = np.zeros(num_envs, np.int64)
  # The first recv after async_reset() is a reset observation, like an autoreset.
  previous_ended = np.ones(num_envs, bool)
  seen_ids = set()
  episodes = []
  try:
    env.async_reset()
    for _ in range(400):
      _, reward, terminated, truncated, info = env.recv()
      env_ids = info["env_id"]
      assert env_ids.shape == (batch_size,) and len(set(env_ids.tolist())) == batch_size
      seen_ids.update(env_ids.tolist())
      applied_steps[env_ids] += ~previous_ended[env_ids]
      previous_ended[env_ids] = terminated | truncated
      finished = tracker.update(env_ids, reward, terminated, truncated, info)
      for stats, env_id in zip(finished, env_ids[terminated | truncated]):
        assert stats.episode_return == stats.episode_length == applied_steps[env_id]
        applied_steps[env_id] = 0
      episodes += finished
      env.send(envs.to_env_action(_random_actions(rng, spec, batch_size), spec), env_ids)
  finally:
    env.close()
  assert seen_ids == set(range(num_envs))
  assert len(episodes) >= 10


def test_atari_image_size_is_a_setting_and_the_shallow_torso_runs_on_small_frames():
  config = EnvConfig("Pong-v5", num_envs=2, image_size=42)
  spec = envs.env_spec(config)
  assert spec.observation_shape == (4, 42, 42)
  env = envs.make_env(config)
  try:
    obs, _ = env.reset()
  finally:
    env.close()
  assert obs.shape == (2, 4, 42, 42) and obs.dtype == np.uint8
  network = networks.network_for_spec(NetworkConfig("shallow"), spec)
  params = networks.init_params(network, spec, seed=0)
  output, _ = network.apply(params, obs[None], np.ones((1, 2), bool), ())
  assert output.policy.logits.shape == (1, 2, 6)
  with pytest.raises(ValueError, match="image_size must be >= 20, got 16"):
    EnvConfig("Pong-v5", image_size=16)
