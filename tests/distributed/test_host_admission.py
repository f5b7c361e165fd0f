"""What a host may send and hold, on a real loopback socket: values, admission, the run's end.

Each test runs a learner's env host server with a fake inference server (`fake_learner`) and
plays one bad host against it: one that sends NaN or out-of-range values (rejected, then
evicted), one that never says HELLO, one that hogs slots or connections, one that reuses a
live session's id; then checks that a well-behaved host is still served.
"""

import logging
import threading
import time

import grpc
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax.distributed import env_protocol
from impala_jax.distributed import host_sessions
from impala_jax.distributed import learner_settings
from impala_jax.distributed import wire
from tests.distributed.fake_learner import assert_still_serving
from tests.distributed.fake_learner import call
from tests.distributed.fake_learner import hello
from tests.distributed.fake_learner import HELLO_TIMEOUT_SECONDS
from tests.distributed.fake_learner import lingering
from tests.distributed.fake_learner import NUM_ENVS
from tests.distributed.fake_learner import open_stream
from tests.distributed.fake_learner import SETTINGS
from tests.distributed.fake_learner import settings_call
from tests.distributed.fake_learner import start_server
from tests.distributed.fake_learner import step
from tests.distributed.fake_learner import TOKEN
from tests.distributed import tls_certs


BAD_HOST = b"n" * 16


def test_a_host_sending_nan_is_rejected_then_evicted_and_nothing_reaches_the_queue(server,
                                                                                  caplog):
  nan_reward = np.array([1.0, np.nan, 1.0, 1.0], np.float32)
  with caplog.at_level(logging.WARNING):
    replies, error = call(server.port, [hello(b"1" * 16, host_id=BAD_HOST), step(1),
                                         step(2, reward=nan_reward)])
  # The STEP is rejected (its host may come back with fresh environments) ...
  assert len(replies) == 1 and error.code() == env_protocol.REJECTED_RETRY
  assert "STEP 2 rejected: reward holds nan at index [1]" in error.details()
  assert "Rejected STEP 2 of env host 6e6e6e6e" in caplog.text
  assert server.stats().value_violations == 1 and server.stats().evicted == 0
  # ... and the second time its host is evicted: refused from then on, under any session.
  huge_observation = np.full((NUM_ENVS, 4), 1e9, np.float32)
  _, error = call(server.port, [hello(b"2" * 16, host_id=BAD_HOST),
                                 step(1, observation=huge_observation)])
  assert error.code() == grpc.StatusCode.PERMISSION_DENIED
  assert "evicted after 2 messages with values outside the task's ranges" in error.details()
  assert "observation holds 1e+09 at index [0, 0]" in error.details()
  _, error = call(server.port, [hello(b"3" * 16, host_id=BAD_HOST), step(1)])
  assert error.code() == grpc.StatusCode.PERMISSION_DENIED
  assert server.stats().evicted == 1
  # Only the accepted first STEPs were recorded: no unroll is complete, none with a NaN.
  assert server.unrolls.queued_unrolls() == 0
  assert_still_serving(server)  # Another host id is served.


def test_episodes_are_attributed_to_their_host(server):
  game_over = np.array([True, False, False, False])
  steps = [step(1), step(2, terminated=game_over, game_over=game_over)]
  replies, error = call(server.port, [hello(host_id=b"\xab" * 16)] + steps)
  assert error is None and len(replies) == 2
  assert [(e.episode_return, e.source) for e in server.episodes] == [(2.0, "env host abababab")]


def test_a_stream_that_never_says_hello_is_closed_at_the_deadline(server, caplog):
  release = threading.Event()

  def silent():
    release.wait(30)
    yield hello()

  with caplog.at_level(logging.WARNING):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      start = time.monotonic()
      with pytest.raises(grpc.RpcError) as error:
        list(open_stream(channel, silent()))
      waited = time.monotonic() - start
      release.set()
  assert error.value.code() == grpc.StatusCode.CANCELLED
  assert HELLO_TIMEOUT_SECONDS <= waited < HELLO_TIMEOUT_SECONDS + 5
  assert "no HELLO within 2 s" in caplog.text
  assert_still_serving(server)


def test_streams_waiting_for_hello_are_capped_per_address(server):
  release = threading.Event()

  def late(i):
    release.wait(30)
    yield hello(bytes([i]) * 16, host_id=bytes([i]) * 16, num_envs=1)

  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    waiting = [open_stream(channel, late(i)) for i in range(host_sessions.MAX_PENDING_PER_ADDRESS)]
    time.sleep(0.5)  # They are all waiting for their HELLO now.
    _, error = call(server.port, [hello(), step(1)])
    release.set()
    for stream in waiting:  # Their HELLOs arrive in time (what follows is not this test's).
      try:
        list(stream)
      except grpc.RpcError:
        pass
  assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert "are waiting to say HELLO already" in error.details()
  assert_still_serving(server)


def test_one_host_cannot_take_every_slot_nor_more_than_max_hosts_connect(server):
  # A host's share: 4 environments of the 8 remote slots (max_envs_per_host).
  _, error = call(server.port, [hello(num_envs=2 * NUM_ENVS)])
  assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
  assert f"num_envs={2 * NUM_ENVS}, accepted 1..{NUM_ENVS}" in error.details()
  release = threading.Event()
  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    hosts = [open_stream(channel, lingering(bytes([i]) * 16, release, host_id=bytes([i]) * 16))
             for i in range(2)]
    for host in hosts:
      assert next(host)
    _, error = call(server.port, [hello(num_envs=1), step(1, ids=[0])])
    release.set()
    for host in hosts:
      list(host)
  assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert "2 hosts are connected already (--max_hosts)" in error.details()
  assert_still_serving(server)


def test_the_fair_share_is_the_default_per_host_limit():
  assert config_lib.RemoteEnvConfig().envs_per_host == 256 // 8
  assert config_lib.RemoteEnvConfig(max_envs=64, max_hosts=2).envs_per_host == 32
  assert config_lib.RemoteEnvConfig(max_envs=64, max_envs_per_host=64).envs_per_host == 64


def test_hosts_get_the_learners_settings_and_goodbye_when_the_run_ends(server):
  assert learner_settings.decode(settings_call(server.port)) == SETTINGS
  with pytest.raises(grpc.RpcError) as error:
    settings_call(server.port, token="wrong-token-wrong-token-wrong-xx")
  assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
  release = threading.Event()
  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:

    def stepping():
      yield hello()
      for sequence in range(1, 100):
        release.wait(0.05)
        yield step(sequence)

    stream = open_stream(channel, stepping())
    assert wire.peek(next(stream))[0] == env_protocol.ACTIONS
    server.say_goodbye(timeout_seconds=10)
    kinds = [wire.peek(reply)[0] for reply in stream]  # Ends without an error.
  assert kinds[-1] == env_protocol.GOODBYE and set(kinds[:-1]) <= {env_protocol.ACTIONS}
  assert server.stats().hosts == 0
  assert wire.peek(settings_call(server.port))[0] == env_protocol.GOODBYE  # Late hosts too.


def test_a_non_loopback_address_needs_tls_or_insecure_listen():
  with pytest.raises(ValueError, match="--listen=0.0.0.0:50051 is not a loopback address and "
                                       "has no TLS.*--insecure_listen"):
    config_lib.RemoteEnvConfig(listen="0.0.0.0:50051")
  with pytest.raises(ValueError, match="is not a loopback address"):
    config_lib.RemoteEnvConfig(listen="learner.example.org:50051")
  config_lib.RemoteEnvConfig(listen="0.0.0.0:50051", tls_cert_file="c", tls_key_file="k")
  config_lib.RemoteEnvConfig(listen="0.0.0.0:50051", insecure_listen=True)
  for loopback in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.3.2.1:1"):
    config_lib.RemoteEnvConfig(listen=loopback)


def test_tls_serves_hosts_that_trust_its_ca_and_no_one_in_the_clear(tmp_path):
  certificates = tls_certs.make(str(tmp_path))
  remote = config_lib.RemoteEnvConfig(listen="127.0.0.1:0", max_envs=NUM_ENVS,
                                      tls_cert_file=certificates.server_cert,
                                      tls_key_file=certificates.server_key)
  server = start_server(remote)
  metadata = [(env_protocol.TOKEN_METADATA_KEY, TOKEN)]
  try:
    with open(certificates.ca, "rb") as f:
      credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
      reply = channel.unary_unary(env_protocol.SETTINGS_METHOD)(b"", metadata=metadata,
                                                                timeout=10)
    assert learner_settings.decode(reply) == SETTINGS
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      with pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(env_protocol.SETTINGS_METHOD)(b"", metadata=metadata, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
  finally:
    server.close()
