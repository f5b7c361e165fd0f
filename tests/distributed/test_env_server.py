"""The env host server on a real loopback socket, with a fake inference server behind it:
the wire and the protocol.

Every bad input is rejected with a status that names the problem and a log line, and the
server keeps serving well-behaved hosts (each test ends by checking one).
"""

import logging
import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_server
from impala_jax.distributed import wire
from tests.distributed.fake_learner import assert_still_serving
from tests.distributed.fake_learner import call
from tests.distributed.fake_learner import hello
from tests.distributed.fake_learner import LEASE_SECONDS
from tests.distributed.fake_learner import lingering
from tests.distributed.fake_learner import NUM_ENVS
from tests.distributed.fake_learner import open_stream
from tests.distributed.fake_learner import SPEC
from tests.distributed.fake_learner import step
from tests.distributed.fake_learner import TOKEN
from tests.distributed.fake_learner import UNROLL_LENGTH


def test_a_host_gets_actions_for_its_steps_and_its_unrolls_reach_the_queue(server):
  replies, error = call(server.port, [hello()] + [step(s) for s in range(1, 6)])
  assert error is None and len(replies) == 5
  # T+1 = 3 steps per unroll, overlapping by one: steps 1-3 and 3-5, for each environment.
  assert server.unrolls.queued_unrolls() == 2 * NUM_ENVS
  unroll = server.unrolls.get(timeout=1).unroll
  assert unroll.observation.shape == (UNROLL_LENGTH + 1, 1, 4)
  # The first observation of each environment starts an episode; global ids are the slots.
  ids, first = server.fake.requests[0]
  np.testing.assert_array_equal(ids, np.arange(NUM_ENVS))
  assert first.all() and not server.fake.requests[1][1].any()
  # The inference server heard of the host arriving (1) and leaving (0).
  assert server.fake.expected[:1] == [1] and server.fake.expected[-1] == 0


@pytest.mark.parametrize("token", [None, "wrong-token-wrong-token-wrong-xx"])
def test_a_wrong_token_is_refused(server, token, caplog):
  with caplog.at_level(logging.WARNING):
    replies, error = call(server.port, [hello(), step(1)], token=token)
  assert not replies and error.code() == grpc.StatusCode.UNAUTHENTICATED
  assert "wrong or missing token" in error.details()
  assert "wrong or missing token" in caplog.text
  assert_still_serving(server)


def test_a_hello_that_does_not_match_the_learner_is_refused(server, caplog):
  pong = envs.env_spec(config_lib.EnvConfig("Pong-v5", num_envs=2))
  with caplog.at_level(logging.WARNING):
    _, error = call(server.port, [hello(spec=pong, name="Pong-v5")])
  assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
  assert "environment 'Pong-v5', the learner trains on 'CartPole-v1'" in error.details()
  assert "observation shape (4, 84, 84)" in error.details()
  assert "does not match the learner" in caplog.text
  _, error = call(server.port, [hello(num_envs=NUM_ENVS + 1)])
  assert f"num_envs={NUM_ENVS + 1}, accepted 1..{NUM_ENVS}" in error.details()
  assert_still_serving(server)


def _wrong_version(payload):
  return payload[:4] + (2).to_bytes(2, "little") + payload[6:]


@pytest.mark.parametrize("bad_message, detail", [
    (_wrong_version(step(1)), "Wire format version 2"),
    (step(1, observation=np.zeros((NUM_ENVS, 4), np.float64),
           _schema=tuple(s._replace(dtype=np.float64) if s.name == "observation" else s
                         for s in env_protocol.step_schema(SPEC))),
     "'observation' has dtype float64; expected float32"),
    (step(1, observation=np.zeros((NUM_ENVS, 5), np.float32),
           _schema=tuple(s._replace(shape=(None, 5)) if s.name == "observation" else s
                         for s in env_protocol.step_schema(SPEC))),
     r"'observation' has shape (4, 5); expected (batch, 4)"),
    (step(1)[:-3], "truncated"),
    (step(1, ids=[0, 1, 2, 7]), "env ids 0..7 outside [0, 4)"),
    (step(1, ids=[0, 0, 1, 2]), "env ids repeat"),
    (step(3), "sequence number 3 is stale or duplicate (expected 1)"),
    (wire.encode(env_protocol.ACTIONS, 1, env_protocol.actions_schema(SPEC),
                 dict(env_ids=[0], action=[1])), "expected a STEP"),
])
def test_bad_steps_are_rejected_with_a_reason(server, bad_message, detail, caplog):
  with caplog.at_level(logging.WARNING):
    _, error = call(server.port, [hello(), bad_message])
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert detail in error.details()
  assert detail in caplog.text
  assert_still_serving(server)


def test_a_repeated_sequence_number_is_rejected(server):
  replies, error = call(server.port, [hello(), step(1), step(2), step(2)])
  assert len(replies) == 2
  assert "sequence number 2 is stale or duplicate (expected 3)" in error.details()
  assert_still_serving(server)


def test_an_oversized_message_is_refused_by_the_transport(server):
  huge = b"\0" * (wire.max_message_bytes(env_protocol.step_schema(SPEC), NUM_ENVS) + 10_000)
  _, error = call(server.port, [hello(), huge])
  assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert_still_serving(server)


def test_random_bytes_and_truncated_frames_on_the_port_do_not_take_it_down(server):
  rng = np.random.default_rng(0)
  valid_prefix = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
  for trial in range(20):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
      if trial % 2:
        raw.sendall(rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
      else:  # The HTTP/2 preface, then a frame header that promises more than it sends.
        raw.sendall(valid_prefix + b"\x00\x40\x00\x01\x04\x00\x00\x00\x01" + b"\x00" * 7)
  assert_still_serving(server)


def test_a_silent_host_is_evicted_after_its_lease_and_its_slots_freed(server, caplog):
  release = threading.Event()

  def silent_after_one_step():
    yield hello(b"q" * 16)
    yield step(1)
    release.wait(30)  # Sends nothing more, but keeps the stream open.

  with caplog.at_level(logging.INFO):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
      stream = channel.stream_stream(env_protocol.METHOD)(
          silent_after_one_step(), metadata=[(env_protocol.TOKEN_METADATA_KEY, TOKEN)])
      start = time.monotonic()
      with pytest.raises(grpc.RpcError) as error:
        for _ in stream:
          pass
      release.set()
  assert error.value.code() == grpc.StatusCode.CANCELLED
  assert LEASE_SECONDS <= time.monotonic() - start < LEASE_SECONDS + 10
  assert "Evicting env host 68686868 (session 71717171" in caplog.text
  # The client sees the cancel first; the stream's handler then removes the session.
  deadline = time.monotonic() + 10
  while server.stats().hosts and time.monotonic() < deadline:
    time.sleep(0.05)
  assert server.stats().hosts == 0 and server.stats().evicted == 1
  # Its slots are free again: two full hosts fit the 2 × NUM_ENVS slots at once.
  assert_still_serving(server)


def test_a_session_id_cannot_take_over_a_live_session(server, caplog):
  release = threading.Event()
  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    live = open_stream(channel, lingering(b"r" * 16, release))
    assert next(live)  # The live stream got its first ACTIONS.
    with caplog.at_level(logging.WARNING):
      _, error = call(server.port, [hello(b"r" * 16, host_id=b"x" * 16), step(1)])
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "session id 72727272 belongs to a live connection" in error.details()
    assert "a session cannot be taken over" in caplog.text
    assert server.stats().hosts == 1  # The live session is still there, and still served.
    release.set()
    assert list(live) == []  # It ends cleanly, with no error.
  assert_still_serving(server)


def test_the_server_refuses_to_start_without_a_token(tmp_path, monkeypatch):
  monkeypatch.delenv("IMPALA_JAX_TOKEN", raising=False)
  remote = config_lib.RemoteEnvConfig(listen="127.0.0.1:0")
  with pytest.raises(ValueError, match="needs a shared token"):
    env_server.read_token(remote)
  short = tmp_path / "short"
  short.write_text("abc")
  os.chmod(short, 0o600)
  with pytest.raises(ValueError, match="has 3 characters; use at least 16"):
    env_server.read_token(config_lib.RemoteEnvConfig("127.0.0.1:0", str(short)))
  good = tmp_path / "good"
  good.write_text(TOKEN + "\n")
  os.chmod(good, 0o600)
  assert env_server.read_token(config_lib.RemoteEnvConfig("127.0.0.1:0", str(good))) == TOKEN


# -- values, admission, the end of the run ----------------------------------------------------
