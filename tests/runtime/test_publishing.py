"""Parameters published late on purpose (runtime.publishing), alone and in a real run."""

import pytest

from impala_jax import config as config_lib
from impala_jax.runtime import publishing
from impala_jax.runtime import training as runtime
from tests.runtime.test_training import read_metrics


def test_each_update_is_published_delay_updates_later_in_order():
  published = []
  publish = publishing.delayed(lambda params, version: published.append((params, version)), 3)
  for version in range(1, 8):
    publish(f"params {version}", version)
    # After update v the actors hold update v − 3's parameters (none before update 4).
    assert published[-1:] == ([] if version <= 3 else [(f"params {version - 3}", version - 3)])
  assert [v for _, v in published] == [1, 2, 3, 4]


def test_no_delay_publishes_through_and_a_negative_delay_is_refused():
  publish = lambda params, version: None
  assert publishing.delayed(publish, 0) is publish
  with pytest.raises(ValueError, match="delay_updates must be >= 0, got -1"):
    publishing.delayed(publish, -1)
  with pytest.raises(ValueError, match="publish_delay_updates must be >= 0, got -2"):
    config_lib.TrainConfig(publish_delay_updates=-2)


def test_a_delay_raises_the_policy_lag_of_a_real_run(tmp_path):
  def lag(delay):
    config = config_lib.TrainConfig(
        env=config_lib.EnvConfig("CartPole-v1", num_envs=4, batch_size=2),
        network=config_lib.NetworkConfig("mlp"), num_actor_threads=2, unroll_length=10,
        batch_size=4, queue_capacity=8, total_env_steps=6_000, log_interval_seconds=0.2,
        logdir=str(tmp_path / f"delay_{delay}"), publish_delay_updates=delay)
    assert runtime.train(config, show_progress=False).updates == 150
    rows = [r for r in read_metrics(config.logdir) if r["policy_lag"]]
    return float(rows[-1]["policy_lag"])

  undelayed, delayed = lag(0), lag(8)
  assert delayed >= 8 and delayed >= undelayed + 6, (undelayed, delayed)
