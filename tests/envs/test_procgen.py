"""Procgen (EnvPool's `<Game>Easy-v0` / `<Game>Hard-v0` tasks) end to end with the deep ResNet.

EnvPool's Procgen gives channel-first uint8 frames `[3, 64, 64]` (its `channel_first=True`
default), the layout the image torsos take, so no transposition is needed anywhere; the
difficulty is in the id (Easy/Hard), and `num_levels=0` (every level) is EnvPool's default.
EnvPool's Procgen library links the system's Qt 5 (`make test` installs `libqt5gui5`).
"""

import csv
import os

import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax.runtime import training

GAME = "CoinrunEasy-v0"


@pytest.fixture(scope="module", autouse=True)
def procgen_loads():
  """Fails (not skips) with the fix when EnvPool's Procgen library cannot load: `make test`
  installs its Qt 5 dependency, so a missing one is a broken set-up, not an optional feature."""
  try:
    envs.env_spec(config_lib.EnvConfig(GAME, num_envs=1))
  except ImportError as e:
    pytest.fail(f"EnvPool's Procgen cannot load: {e}. Run `make procgen-libs` (apt-get "
                "install libqt5gui5).")


def test_procgen_spec_is_channel_first_uint8_and_discrete():
  config = config_lib.EnvConfig(GAME, num_envs=2, seed=3)
  spec = envs.env_spec(config)
  assert spec.observation_shape == (3, 64, 64) and spec.observation_dtype == np.uint8
  assert spec.discrete and spec.num_actions == 15
  assert spec.family is envs.EnvFamily.ENVPOOL is envs.env_family(GAME)
  env = envs.make_env(config)
  try:
    env.async_reset()
    obs, reward, terminated, truncated, info = env.recv()
    assert obs.shape == (2, 3, 64, 64) and obs.dtype == np.uint8
    # Real frames: colour images, not blank.
    assert obs.std() > 10
    np.testing.assert_array_equal(info["elapsed_step"], [0, 0])
  finally:
    env.close()


def test_procgen_trains_a_few_hundred_steps_with_the_deep_resnet(tmp_path):
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig(GAME, num_envs=4, seed=1),
      network=config_lib.NetworkConfig("deep"),
      num_actor_threads=1, unroll_length=10, batch_size=4, total_env_steps=400,
      logdir=str(tmp_path / "coinrun"), log_interval_seconds=0.5)
  summary = training.train(config, show_progress=False)
  assert summary.stop_reason == "completed" and summary.env_steps == 400
  assert summary.updates == 10
  with open(os.path.join(config.logdir, "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert rows and int(rows[-1]["env_steps"]) == 400
  for column in ("loss", "policy_loss", "baseline_loss", "entropy_loss"):
    assert all(np.isfinite(float(r[column])) for r in rows), column
  assert os.listdir(os.path.join(config.logdir, "checkpoints"))
