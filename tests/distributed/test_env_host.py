"""An env host against a learner's server on a real loopback socket: settings, the run's end,
a learner that never answers."""

import socket
import time

from impala_jax import config as config_lib
from impala_jax.distributed import env_host
from tests.distributed.fake_learner import NUM_ENVS
from tests.distributed.fake_learner import TOKEN
from tests.distributed.processes import wait_for


def _host(port, **kwargs):
  # Only the count, threads and seed are this host's own; the rest comes from the learner.
  return env_host.EnvHost(config_lib.EnvConfig("Pong-v5", num_envs=NUM_ENVS, seed=3),
                          f"127.0.0.1:{port}", TOKEN, reply_timeout_seconds=10, **kwargs)


def test_a_host_takes_the_learners_settings_and_stops_when_the_run_ends(server):
  with _host(server.port) as host:
    wait_for(lambda: server.unrolls.queued_unrolls() >= NUM_ENVS, 60, "the host's unrolls")
    assert server.stats().hosts == 1  # CartPole, the learner's task, not this host's Pong.
    server.say_goodbye(timeout_seconds=10)
    wait_for(lambda: not host.is_alive(), 10, "the host to stop")
  assert host.run_ended and host.error is None
  assert server.stats().hosts == 0


def test_a_host_given_other_settings_is_refused_at_connect_naming_them(server):
  with _host(server.port, explicit=dict(env_id="Pong-v5", image_size=84,
                                        max_episode_steps=100)) as host:
    wait_for(lambda: not host.is_alive(), 30, "the host to give up")
  assert "--env='Pong-v5' (the learner's: 'CartPole-v1')" in str(host.error)
  assert "--max_episode_steps=100 (the learner's: None)" in str(host.error)
  assert "image_size" not in str(host.error)  # The same as the learner's: no difference.
  assert server.stats().hosts == 0 and not server.unrolls.queued_unrolls()


def test_a_host_gives_up_on_a_learner_that_never_answers():
  with socket.socket() as s:  # A port nobody listens on.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  with _host(port, learner_timeout_seconds=2.0, connect_timeout_seconds=0.5) as host:
    wait_for(lambda: not host.is_alive(), 30, "the host to give up")
  assert "No answer from the learner at 127.0.0.1" in str(host.error)
  assert "--learner_timeout_seconds=2); giving up" in str(host.error)
  assert time.monotonic() - start < 10
