"""The env host server on a real loopback socket, with a fake inference server behind it.

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
from impala_jax.acting import batch_assembler
from impala_jax.acting import inference
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_server
from impala_jax.distributed import host_sessions
from impala_jax.distributed import wire

TOKEN = "a-test-token-of-32-characters-xx"
NUM_ENVS = 4
UNROLL_LENGTH = 2
LEASE_SECONDS = 1.5
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1", num_envs=NUM_ENVS))


class FakeInference:
  """Answers every request with action 1 and counts the expected requesters it is told of."""

  def __init__(self):
    self.expected = []
    self.requests = []

  def act(self, env_ids, observation, first):
    self.requests.append((np.array(env_ids), np.array(first)))
    n = len(env_ids)
    return inference.ActResult(np.ones(n, np.int32), np.zeros(n, np.float32), 0, ())

  def set_expected_requests(self, n):
    self.expected.append(n)


@pytest.fixture(name="server")
def fixture_server():
  fake = FakeInference()
  unrolls = batch_assembler.BatchAssembler(batch_size=1, capacity=64)  # One unroll a batch.
  table = host_sessions.SessionTable()
  remote = config_lib.RemoteEnvConfig(listen="127.0.0.1:0", max_envs=2 * NUM_ENVS,
                                      max_envs_per_host=NUM_ENVS, max_hosts=4,
                                      lease_seconds=LEASE_SECONDS)
  service = env_server.EnvHostService(
      spec=SPEC, env_name="CartPole-v1", unroll_length=UNROLL_LENGTH, inference=fake,
      unroll_sink=unrolls, stop_requested=lambda: False,
      on_episode=lambda e: None, token=TOKEN,
      slots=host_sessions.SlotAllocator(0, remote.max_envs), table=table,
      max_envs_per_host=NUM_ENVS, on_hosts_changed=fake.set_expected_requests)
  max_bytes = wire.max_message_bytes(env_protocol.step_schema(SPEC), NUM_ENVS) + 4096
  server = env_server.EnvServer(remote, service, table, max_bytes).start()
  server.fake, server.unrolls = fake, unrolls
  yield server
  server.close()


def _hello(session_id=b"s" * 16, spec=SPEC, num_envs=NUM_ENVS, name="CartPole-v1"):
  return env_protocol.encode_hello(session_id, name, num_envs, spec)


def _step(sequence, ids=range(NUM_ENVS), **overrides):
  ids = np.asarray(list(ids), np.int32)
  n = len(ids)
  arrays = dict(env_ids=ids, observation=np.zeros((n, 4), np.float32),
                reward=np.ones(n, np.float32), terminated=np.zeros(n, bool),
                truncated=np.zeros(n, bool), game_reward=np.ones(n, np.float32),
                game_over=np.zeros(n, bool), elapsed_step=np.full(n, sequence, np.int32))
  schema = overrides.pop("_schema", env_protocol.step_schema(SPEC))
  arrays.update(overrides)
  return wire.encode(env_protocol.STEP, sequence, schema, arrays)


def _call(port, messages, token=TOKEN, timeout=20):
  """Sends `messages` on one stream; returns (replies, error or None)."""
  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stream = channel.stream_stream(env_protocol.METHOD)
    metadata = [(env_protocol.TOKEN_METADATA_KEY, token)] if token else []
    replies = []
    try:
      for reply in stream(iter(messages), metadata=metadata, timeout=timeout):
        replies.append(reply)
    except grpc.RpcError as e:
      return replies, e
    return replies, None


def _assert_still_serving(server, session_id=b"g" * 16):
  replies, error = _call(server.port, [_hello(session_id), _step(1), _step(2)])
  assert error is None, error
  decoded = [wire.decode(r, env_protocol.actions_schema(SPEC), NUM_ENVS) for r in replies]
  assert [d.sequence for d in decoded] == [1, 2]
  np.testing.assert_array_equal(decoded[0].arrays["action"], np.ones(NUM_ENVS))


def test_a_host_gets_actions_for_its_steps_and_its_unrolls_reach_the_queue(server):
  replies, error = _call(server.port, [_hello()] + [_step(s) for s in range(1, 6)])
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
    replies, error = _call(server.port, [_hello(), _step(1)], token=token)
  assert not replies and error.code() == grpc.StatusCode.UNAUTHENTICATED
  assert "wrong or missing token" in error.details()
  assert "wrong or missing token" in caplog.text
  _assert_still_serving(server)


def test_a_hello_that_does_not_match_the_learner_is_refused(server, caplog):
  pong = envs.env_spec(config_lib.EnvConfig("Pong-v5", num_envs=2))
  with caplog.at_level(logging.WARNING):
    _, error = _call(server.port, [_hello(spec=pong, name="Pong-v5")])
  assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
  assert "environment 'Pong-v5', the learner trains on 'CartPole-v1'" in error.details()
  assert "observation shape (4, 84, 84)" in error.details()
  assert "does not match the learner" in caplog.text
  _, error = _call(server.port, [_hello(num_envs=NUM_ENVS + 1)])
  assert f"num_envs={NUM_ENVS + 1}, accepted 1..{NUM_ENVS}" in error.details()
  _assert_still_serving(server)


def _wrong_version(payload):
  return payload[:4] + (2).to_bytes(2, "little") + payload[6:]


@pytest.mark.parametrize("bad_message, detail", [
    (_wrong_version(_step(1)), "Wire format version 2"),
    (_step(1, observation=np.zeros((NUM_ENVS, 4), np.float64),
           _schema=tuple(s._replace(dtype=np.float64) if s.name == "observation" else s
                         for s in env_protocol.step_schema(SPEC))),
     "'observation' has dtype float64; expected float32"),
    (_step(1, observation=np.zeros((NUM_ENVS, 5), np.float32),
           _schema=tuple(s._replace(shape=(None, 5)) if s.name == "observation" else s
                         for s in env_protocol.step_schema(SPEC))),
     r"'observation' has shape (4, 5); expected (batch, 4)"),
    (_step(1)[:-3], "truncated"),
    (_step(1, ids=[0, 1, 2, 7]), "env ids 0..7 outside [0, 4)"),
    (_step(1, ids=[0, 0, 1, 2]), "env ids repeat"),
    (_step(3), "sequence number 3 is stale or duplicate (expected 1)"),
    (wire.encode(env_protocol.ACTIONS, 1, env_protocol.actions_schema(SPEC),
                 dict(env_ids=[0], action=[1])), "expected a STEP"),
])
def test_bad_steps_are_rejected_with_a_reason(server, bad_message, detail, caplog):
  with caplog.at_level(logging.WARNING):
    _, error = _call(server.port, [_hello(), bad_message])
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert detail in error.details()
  assert detail in caplog.text
  _assert_still_serving(server)


def test_a_repeated_sequence_number_is_rejected(server):
  replies, error = _call(server.port, [_hello(), _step(1), _step(2), _step(2)])
  assert len(replies) == 2
  assert "sequence number 2 is stale or duplicate (expected 3)" in error.details()
  _assert_still_serving(server)


def test_an_oversized_message_is_refused_by_the_transport(server):
  huge = b"\0" * (wire.max_message_bytes(env_protocol.step_schema(SPEC), NUM_ENVS) + 10_000)
  _, error = _call(server.port, [_hello(), huge])
  assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  _assert_still_serving(server)


def test_random_bytes_and_truncated_frames_on_the_port_do_not_take_it_down(server):
  rng = np.random.default_rng(0)
  valid_prefix = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
  for trial in range(20):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
      if trial % 2:
        raw.sendall(rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
      else:  # The HTTP/2 preface, then a frame header that promises more than it sends.
        raw.sendall(valid_prefix + b"\x00\x40\x00\x01\x04\x00\x00\x00\x01" + b"\x00" * 7)
  _assert_still_serving(server)


def test_a_silent_host_is_evicted_after_its_lease_and_its_slots_freed(server, caplog):
  release = threading.Event()

  def silent_after_one_step():
    yield _hello(b"q" * 16)
    yield _step(1)
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
  assert "Evicting host 71717171" in caplog.text
  assert server.stats().hosts == 0 and server.stats().evicted == 1
  # Its slots are free again: two full hosts fit the 2 × NUM_ENVS slots at once.
  _assert_still_serving(server)


def test_a_reconnect_with_the_same_session_id_replaces_the_old_stream(server):
  release = threading.Event()

  def lingering():
    yield _hello(b"r" * 16)
    yield _step(1)
    release.wait(30)

  with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    old = channel.stream_stream(env_protocol.METHOD)(
        lingering(), metadata=[(env_protocol.TOKEN_METADATA_KEY, TOKEN)])
    assert next(old)  # The old stream got its first ACTIONS.
    _assert_still_serving(server, session_id=b"r" * 16)  # Same id: a fresh session.
    with pytest.raises(grpc.RpcError) as error:
      next(old)
    release.set()
  assert error.value.code() == grpc.StatusCode.CANCELLED


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
