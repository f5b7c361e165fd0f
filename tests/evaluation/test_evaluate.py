"""Tests for impala_jax.evaluation and experiments/evaluate.py, on tiny trained runs.

Two CartPole runs are trained in-process (an MLP and an LSTM agent, a few hundred updates at
most); a Pong run is a checkpoint of initial parameters written the way training writes them
(no training: what matters there is the Atari path, RGB frames and the human-normalised score).
"""

import dataclasses
import json
import os
import subprocess
import sys

import imageio
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageSequence
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.envs import atari_scores
from impala_jax.envs import examples
from impala_jax.evaluation import episodes as episodes_lib
from impala_jax.evaluation import policy as policy_lib
from impala_jax.evaluation import video as video_lib
from impala_jax.learning import optimizers
from impala_jax.learning.update import TrainState
from impala_jax.rl import distributions
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "evaluate.py")


def _cartpole_config(logdir, use_lstm, total_env_steps):
  return config_lib.TrainConfig(
      env=config_lib.EnvConfig("CartPole-v1", num_envs=8, seed=1),
      network=config_lib.NetworkConfig("mlp", use_lstm=use_lstm, lstm_size=16,
                                       mlp_hidden_sizes=(32,)),
      optimizer=config_lib.OptimizerConfig(optimizer="adam", learning_rate=3e-3),
      num_actor_threads=1, unroll_length=10, batch_size=8, total_env_steps=total_env_steps,
      logdir=str(logdir), log_interval_seconds=1.0)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
  config = _cartpole_config(tmp_path_factory.mktemp("mlp"), False, 2_000)
  training.train(config, show_progress=False)
  return config


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
  config = _cartpole_config(tmp_path_factory.mktemp("lstm"), True, 160)
  training.train(config, show_progress=False)
  return config


def _initial_checkpoint(logdir, env_config):
  """A run of `env_config` whose checkpoint 7 holds initial parameters, saved as training saves
  them; the config only in config.json."""
  config = config_lib.TrainConfig(env=env_config, network=config_lib.NetworkConfig("shallow"),
                                  logdir=str(logdir))
  spec = envs.env_spec(config.env)
  network = networks.network_for_spec(config.network, spec)
  params = networks.init_params(network, spec, config.seed)
  optimizer = optimizers.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(logdir, "checkpoints"))
  checkpointer.save(7, TrainState(params, optimizer.init(params), jnp.array(7, jnp.int32)),
                    {"env_steps": 4480})
  checkpointer.close()
  with open(os.path.join(logdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f)
  return config


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory):
  return _initial_checkpoint(tmp_path_factory.mktemp("pong"), config_lib.EnvConfig(
      "Pong-v5", num_envs=4, max_episode_steps=20, image_size=42))


@pytest.fixture(scope="module")
def two_games_run(tmp_path_factory):
  return _initial_checkpoint(tmp_path_factory.mktemp("two_games"), config_lib.EnvConfig(
      "Pong-v5,Breakout-v5", num_envs=4, max_episode_steps=20, image_size=42))


def _evaluate(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=300, check=False)


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _checkpoints(logdir):
  return sorted(int(n) for n in os.listdir(os.path.join(logdir, "checkpoints")) if n.isdigit())


def test_config_round_trips_through_json():
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig("Breakout-v5", num_envs=3, max_episode_steps=100),
      network=config_lib.NetworkConfig("mlp", use_lstm=True, mlp_hidden_sizes=(8, 4)),
      remote_envs=config_lib.RemoteEnvConfig(max_envs=4, max_envs_per_host=2))
  values = json.loads(json.dumps(dataclasses.asdict(config)))
  assert policy_lib.config_from_dict(values) == config
  values["network"]["a_setting_from_another_version"] = 1  # Ignored, with a warning.
  del values["loss"]  # Missing: the defaults.
  restored = policy_lib.config_from_dict(values)
  assert restored.network == config.network and restored.loss == config_lib.LossConfig()


def test_a_feeding_section_that_is_no_longer_valid_is_left_out():
  # Written before a non-loopback --listen needed TLS: the run still evaluates.
  values = json.loads(json.dumps(dataclasses.asdict(config_lib.TrainConfig())))
  values["remote_envs"] = dict(listen="0.0.0.0:50051", max_envs=256)
  assert policy_lib.config_from_dict(values).remote_envs is None


def test_evaluation_settings_are_the_papers_and_keep_the_observation_format():
  train_env = config_lib.EnvConfig("Pong-v5", num_envs=32, batch_size=16, noop_max=0,
                                   image_size=42, stack_num=2, frame_skip=3)
  env = episodes_lib.evaluation_env_config(train_env, num_envs=2, seed=9)
  assert (env.episodic_life, env.reward_clip, env.noop_max) == (False, False, 30)
  assert (env.num_envs, env.batch_size, env.seed) == (2, None, 9)
  assert (env.image_size, env.stack_num, env.frame_skip) == (42, 2, 3)


@pytest.mark.filterwarnings("ignore:os.fork")  # imageio runs ffmpeg to read the mp4 back.
def test_cartpole_evaluation_writes_json_video_and_frame(mlp_run, tmp_path):
  step = _checkpoints(mlp_run.logdir)[-1]
  video, frame = tmp_path / "cartpole.mp4", tmp_path / "frame.png"
  result = _evaluate(f"--logdir={mlp_run.logdir}", "--episodes=3", "--num_envs=2", "--greedy",
                     "--seed=5", f"--video={video}", f"--frame_png={frame}")
  assert result.returncode == 0, result.stderr
  report = _read_json(os.path.join(mlp_run.logdir, f"evaluation_{step}.json"))
  assert report["checkpoint"] == step and report["num_episodes"] == 3
  assert report["env_settings"]["episodic_life"] is False
  assert report["human_normalized_score"] is None
  episodes = report["episodes"]
  assert [e["env_index"] for e in episodes] == [0, 0, 1]  # 2 games for env 0, 1 for env 1.
  # CartPole pays 1 per step: the real score of each game is its length.
  for e in episodes:
    assert e["episode_return"] == e["episode_length"] >= 1
  returns = [e["episode_return"] for e in episodes]
  assert report["score"]["mean"] == pytest.approx(np.mean(returns))
  assert report["score"]["max"] == max(returns)

  # A valid H.264 mp4 of env 0's first game: its first observation, then one frame per step.
  with open(video, "rb") as f:
    assert f.read(12)[4:8] == b"ftyp"
  reader = imageio.v2.get_reader(str(video))
  assert reader.count_frames() == episodes[0]["episode_length"] + 1
  reader.close()
  image = imageio.v3.imread(frame)
  assert image.shape == (400, 600, 3) and image.dtype == np.uint8

  # Greedy with the same seed plays the same games, here in this process.
  policy = policy_lib.load_policy(mlp_run.logdir)
  env = episodes_lib.evaluation_env_config(policy.config.env, num_envs=2, seed=5)
  again = episodes_lib.play_episodes(policy.network, policy.params, env, 3, greedy=True, seed=5)
  assert [e._asdict() for e in again.episodes] == episodes


def test_lstm_agent_keeps_its_state_within_a_game_and_resets_it_between_games(lstm_run):
  policy = policy_lib.load_policy(lstm_run.logdir)
  assert policy.network.use_lstm
  env = episodes_lib.evaluation_env_config(policy.config.env, num_envs=1, seed=3)
  act = episodes_lib.make_act_fn(policy.network, greedy=True)
  observation = np.full((1, 4), 0.05, np.float32)
  key = np.zeros(2, np.uint32)
  zero = policy.network.initial_state(1)
  _, state = act(policy.params, observation, np.ones(1, bool), zero, key)
  _, carried = act(policy.params, observation, np.zeros(1, bool), state, key)
  _, reset = act(policy.params, observation, np.ones(1, bool), state, key)
  assert not np.allclose(carried.hidden, state.hidden)  # The state moves on within a game ...
  np.testing.assert_allclose(reset.hidden, state.hidden, rtol=1e-6)  # ... and restarts.

  # Whole games with the LSTM agent; sampled actions are reproducible for a seed too.
  env = dataclasses.replace(env, num_envs=2)
  first = episodes_lib.play_episodes(policy.network, policy.params, env, 3, seed=3)
  second = episodes_lib.play_episodes(policy.network, policy.params, env, 3, seed=3)
  assert len(first.episodes) == 3 and first.episodes == second.episodes
  assert all(e.episode_return == e.episode_length for e in first.episodes)


class _RememberFirstObservation:
  """A stand-in recurrent network for the cue-recall task: its state is the observation it was
  given with `first` True, and it names the cue kept there (greedily). It wins every game if,
  and only if, `first` marks each game's first observation, where the cue is shown."""

  def initial_state(self, batch_size):
    return jnp.zeros((batch_size, examples.NUM_CUES + 1), jnp.float32)

  def apply(self, params, observation, first, core_state):
    del params
    state = jnp.where(first[0][:, None], observation[0], core_state)
    policy = distributions.Categorical(logits=state[None, :, :examples.NUM_CUES])
    return networks.AgentOutput(policy=policy, value=jnp.zeros((1, len(state)))), state


@pytest.mark.parametrize("num_envs", [1, 3])
def test_the_core_state_restarts_at_each_games_first_observation(num_envs):
  # EnvPool's next-step autoreset: the step that ends a game returns its last observation; the
  # next one, the reset, returns the next game's first. The state must restart there, as the
  # actors mark it in training; one step early, every game after an environment's first
  # starts from the state of the last game's end, and the cue is missed.
  env = config_lib.EnvConfig("impala_jax.envs.examples:make_cue_recall", num_envs=num_envs,
                             seed=4)
  result = episodes_lib.play_episodes(_RememberFirstObservation(), None, env, 12, greedy=True)
  assert [e.episode_return for e in result.episodes] == [examples.CORRECT_REWARD] * 12


def test_pong_evaluation_scores_human_normalised_with_an_rgb_gif(pong_run, tmp_path):
  video, output = tmp_path / "pong.gif", tmp_path / "pong.json"
  result = _evaluate(f"--logdir={pong_run.logdir}", "--episodes=2", "--num_envs=1", "--seed=2",
                     f"--video={video}", f"--output={output}")
  assert result.returncode == 0, result.stderr
  report = _read_json(output)
  assert report["checkpoint"] == 7 and report["env_steps"] == 4480
  assert report["frames"] == 4480 * 4
  assert report["env_settings"]["reward_clip"] is False
  episodes = report["episodes"]
  assert [e["episode_length"] for e in episodes] == [20, 20]  # The run's time limit.
  mean = np.mean([e["episode_return"] for e in episodes])
  assert report["score"]["mean"] == pytest.approx(mean)
  assert report["human_normalized_score"]["mean"] == pytest.approx(
      atari_scores.human_normalized_score("Pong-v5", mean))
  with open(video, "rb") as f:
    assert f.read(6) in (b"GIF87a", b"GIF89a")
  frames = imageio.v3.imread(video, index=None)
  # The RGB screen (210 × 160) upscaled ×2.
  assert frames.shape[1:] == (420, 320, 3)
  assert np.ptp(frames[..., 0].astype(int) - frames[..., 2]) > 0  # Colour, not grey.
  # The first observation and one frame per step, 60/4 per second (GIF: 70 ms), but Pillow
  # merges identical frames into one of the summed duration: count the time.
  with PIL.Image.open(video) as gif:
    durations = [frame.info["duration"] for frame in PIL.ImageSequence.Iterator(gif)]
  assert len(durations) == len(frames) <= 21
  assert sum(durations) == 21 * video_lib.gif_frame_ms(60 / 4) == 21 * 70


def test_a_multi_task_run_is_evaluated_on_each_game_with_the_full_action_space(two_games_run,
                                                                              tmp_path):
  policy = policy_lib.load_policy(two_games_run.logdir)
  assert policy.spec.num_actions == 18 and policy.spec.num_tasks == 2
  output = tmp_path / "two.json"
  result = _evaluate(f"--logdir={two_games_run.logdir}", "--episodes=2", "--num_envs=1",
                     f"--output={output}")
  assert result.returncode == 0, result.stderr
  report = _read_json(output)
  assert report["env_id"] == "Pong-v5,Breakout-v5" and report["num_games"] == 2
  games = report["games"]
  assert list(games) == ["Pong-v5", "Breakout-v5"]
  hns = []
  for env_id, game in games.items():
    assert game["env_id"] == env_id and game["num_episodes"] == 2
    assert game["env_settings"]["full_action_space"] is True
    assert game["env_settings"]["reward_clip"] is False
    assert [e["episode_length"] for e in game["episodes"]] == [20, 20]
    mean = np.mean([e["episode_return"] for e in game["episodes"]])
    assert game["human_normalized_score"]["mean"] == pytest.approx(
        atari_scores.human_normalized_score(env_id, mean))
    hns.append(game["human_normalized_score"]["mean"])
  assert report["median_human_normalized_score"] == pytest.approx(np.median(hns))
  assert "Pong-v5, checkpoint 7" in result.stdout and "Breakout-v5, checkpoint 7" in (
      result.stdout)
  assert "2 games: median human-normalised score" in result.stdout


def test_middle_frame_of_a_stream_of_unknown_length():
  for count in (1, 2, 7, 64, 65, 1000, 12_345):
    middle = video_lib.MiddleFrame(capacity=8)
    for i in range(count):
      middle.add(np.array([i]))
    assert abs(int(middle.middle()[0]) - count // 2) <= max(1, count // 16), count


@pytest.mark.filterwarnings("ignore:os.fork")
def test_video_writer_checks_its_input(tmp_path):
  with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
    video_lib.VideoWriter(str(tmp_path / "x.avi"), fps=15)
  with pytest.raises(ValueError, match="differ in size"):
    video_lib.write_video(str(tmp_path / "x.gif"),
                          [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)], 15)
  # Odd sides are padded for H.264; grayscale frames become RGB.
  path = str(tmp_path / "odd.mp4")
  assert video_lib.write_video(path, [np.full((5, 7), v, np.uint8) for v in (0, 128, 255)],
                               fps=10, scale=3) == 3
  reader = imageio.v2.get_reader(path)
  assert reader.count_frames() == 3 and reader.get_meta_data()["size"] == (22, 16)
  reader.close()


def test_missing_run_or_checkpoint_is_a_clear_error(mlp_run, tmp_path):
  missing = tmp_path / "no_such_run"
  result = _evaluate(f"--logdir={missing}", "--episodes=1")
  assert result.returncode == 2
  assert str(missing) in result.stderr and "does not exist" in result.stderr
  with pytest.raises(policy_lib.RunNotFoundError, match="checkpoints"):
    policy_lib.load_policy(str(tmp_path))  # A directory without checkpoints/.
  with pytest.raises(policy_lib.RunNotFoundError, match=r"No checkpoint 999 in .*checkpoints"):
    policy_lib.load_policy(mlp_run.logdir, step=999)
