"""The settings hosts take from their learner: round trip, strict decoding, merging."""

import json

import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax.distributed import learner_settings
from impala_jax.distributed import wire

LEARNER = config_lib.TrainConfig(
    env=config_lib.EnvConfig("CartPole-v1", num_envs=16, max_episode_steps=200),
    network=config_lib.NetworkConfig("mlp", use_lstm=True, mlp_hidden_sizes=(32, 32)),
    unroll_length=10, loss=config_lib.LossConfig(discount=0.97))


def _message(text):
  return wire.encode(learner_settings.SETTINGS, 0, learner_settings.SCHEMA,
                     dict(json=np.frombuffer(text.encode(), np.uint8)))


def test_an_actor_host_takes_every_acting_setting_and_keeps_its_own_layout():
  settings = learner_settings.decode(learner_settings.encode(learner_settings.of_config(LEARNER)))
  host = config_lib.TrainConfig(env=config_lib.EnvConfig("Pong-v5", num_envs=4, seed=7),
                                num_actor_threads=1)
  merged = learner_settings.train_config(settings, host, explicit={"env_id": "CartPole-v1"})
  assert merged.env == config_lib.EnvConfig("CartPole-v1", num_envs=4, seed=7,
                                            max_episode_steps=200)
  assert merged.network == LEARNER.network
  assert (merged.unroll_length, merged.loss.discount) == (10, 0.97)
  assert merged.num_actor_threads == 1
  with pytest.raises(ValueError, match=r"--network='shallow' \(the learner's: 'mlp'\), "
                                       r"--unroll_length=20 \(the learner's: 10\)\. Hosts take"):
    learner_settings.train_config(settings, host, {"unroll_length": 20, "torso": "shallow"})


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON text"),
    ("[1, 2]", "The settings hold list"),
    (json.dumps(dict(learner_settings.of_config(LEARNER), extra=1)), "The settings hold"),
    (json.dumps(dict(learner_settings.of_config(LEARNER), unroll_length="10")),
     "Setting 'unroll_length' is '10'; expected a int"),
    (json.dumps(dict(learner_settings.of_config(LEARNER), use_lstm=1)),
     "Setting 'use_lstm' is 1; expected a bool"),
    (json.dumps(dict(learner_settings.of_config(LEARNER), mlp_hidden_sizes=[1.5])),
     "Setting 'mlp_hidden_sizes' is"),
])
def test_settings_are_parsed_strictly(text, message):
  with pytest.raises(wire.WireError, match=message):
    learner_settings.decode(_message(text))
