"""An actor host's links to its learner through a real redis-server: the learner's settings,
the run's end, a learner that is gone."""

import time

import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.distributed import actor_host
from impala_jax.distributed import codecs
from impala_jax.distributed import learner_settings
from impala_jax.distributed import local_redis
from impala_jax.distributed import trajectory_store
from tests.distributed.processes import wait_for

LEARNER = config_lib.TrainConfig(env=config_lib.EnvConfig("CartPole-v1"),
                                 network=config_lib.NetworkConfig("mlp"), unroll_length=10)
SPEC = envs.env_spec(LEARNER.env)
NETWORK = networks.network_for_spec(LEARNER.network, SPEC)


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory):
  with local_redis.LocalRedisServer(str(tmp_path_factory.mktemp("redis"))) as server:
    yield server


def _store(server, role, prefix):
  return trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, username=role, password_file=getattr(server, f"{role}_password_file"),
      key_prefix=prefix))


class _Server:
  """What the poller gives new parameters to."""

  def __init__(self):
    self.versions = []

  def update_params(self, params, version):
    del params
    self.versions.append(version)


def _poller(server, prefix, timeout):
  template = networks.init_params(NETWORK, SPEC, 0)
  return actor_host.ParamsPoller(_store(server, "actor", prefix), _Server(), template, 0,
                                 poll_seconds=0.05, learner_timeout_seconds=timeout), template


def test_the_host_takes_the_learners_settings_and_parameters_and_stops_at_the_end(server):
  learner = _store(server, "learner", "ended")
  settings = learner_settings.encode(learner_settings.of_config(LEARNER))
  poller, template = _poller(server, "ended", timeout=30)
  assert learner.claim_learner("a learner", 30) is None
  learner.begin_run()
  learner.publish_params(codecs.encode_params(template, 3), 3, settings)
  host = _store(server, "actor", "ended")
  assert actor_host.wait_for_settings(host, lambda: False, 5) == (
      learner_settings.of_config(LEARNER))
  with poller:
    wait_for(lambda: poller.version == 3, 10, "the parameters")
    learner.mark_run_ended()
    wait_for(lambda: not poller.is_alive(), 10, "the poller to stop")
  assert poller.run_ended and poller.error is None


def test_the_host_gives_up_on_a_learner_that_is_gone(server):
  poller, _ = _poller(server, "gone", timeout=1.0)
  start = time.monotonic()
  with poller:  # No learner holds these keys.
    wait_for(lambda: not poller.is_alive(), 10, "the poller to give up")
  assert "No learner has held gone:* in" in str(poller.error)
  assert "(--learner_timeout_seconds); giving up" in str(poller.error)
  assert 1.0 <= time.monotonic() - start < 5
  with pytest.raises(TimeoutError, match="No learner settings in .* after 0 s"):
    actor_host.wait_for_settings(_store(server, "actor", "gone"), lambda: False, 0.2)
