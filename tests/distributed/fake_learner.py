"""A learner's env host server on a real loopback socket, with a fake inference server behind it
(for the env host tests: tests/distributed/test_env_server.py, test_host_admission.py,
test_env_host.py)."""

import dataclasses

import grpc
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax.acting import batch_assembler
from impala_jax.acting import inference
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_server
from impala_jax.distributed import env_service
from impala_jax.distributed import host_sessions
from impala_jax.distributed import learner_settings
from impala_jax.distributed import wire

TOKEN = "a-test-token-of-32-characters-xx"
NUM_ENVS = 4
UNROLL_LENGTH = 2
LEASE_SECONDS = 1.5
HELLO_TIMEOUT_SECONDS = 1.5
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1", num_envs=NUM_ENVS))
LIMITS = config_lib.ValueLimits(max_abs_reward=1e3, violations_to_evict=2)
REMOTE = config_lib.RemoteEnvConfig(listen="127.0.0.1:0", max_envs=2 * NUM_ENVS,
                                    max_envs_per_host=NUM_ENVS, max_hosts=2,
                                    lease_seconds=LEASE_SECONDS,
                                    hello_timeout_seconds=HELLO_TIMEOUT_SECONDS)
CONFIG = config_lib.TrainConfig(env=config_lib.EnvConfig("CartPole-v1"),
                                unroll_length=UNROLL_LENGTH, num_actor_threads=0,
                                remote_envs=REMOTE, value_limits=LIMITS)
SETTINGS = learner_settings.of_config(CONFIG)


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


def start_server(remote=REMOTE):
  """A started `EnvServer` for CartPole with `FakeInference`; its `fake`, `unrolls` (one
  unroll a batch) and `episodes` (a list) are attributes. `close()` it."""
  fake = FakeInference()
  unrolls = batch_assembler.BatchAssembler(batch_size=1, capacity=64)
  table = host_sessions.SessionTable(LIMITS.violations_to_evict)
  episodes = []
  # No local actors: the hosts' environments are the first ids, their requests the only ones.
  config = dataclasses.replace(CONFIG, remote_envs=remote)
  service = env_service.EnvHostService(
      config, spec=SPEC, inference=fake, unroll_sink=unrolls, table=table, token=TOKEN,
      on_episode=episodes.append, stop_requested=lambda: False)
  max_bytes = wire.max_message_bytes(env_protocol.step_schema(SPEC), NUM_ENVS) + 4096
  server = env_server.EnvServer(remote, service, table, max_bytes).start()
  server.fake, server.unrolls, server.episodes = fake, unrolls, episodes
  return server


def hello(session_id=b"s" * 16, spec=SPEC, num_envs=NUM_ENVS, name="CartPole-v1",
          host_id=b"h" * 16):
  return env_protocol.encode_hello(session_id, host_id, name, num_envs, spec)


def step(sequence, ids=range(NUM_ENVS), **overrides):
  ids = np.asarray(list(ids), np.int32)
  n = len(ids)
  arrays = dict(env_ids=ids, observation=np.zeros((n, 4), np.float32),
                reward=np.ones(n, np.float32), terminated=np.zeros(n, bool),
                truncated=np.zeros(n, bool), game_reward=np.ones(n, np.float32),
                game_over=np.zeros(n, bool), elapsed_step=np.full(n, sequence, np.int32))
  schema = overrides.pop("_schema", env_protocol.step_schema(SPEC))
  arrays.update(overrides)
  return wire.encode(env_protocol.STEP, sequence, schema, arrays)


def call(port, messages, token=TOKEN, timeout=20):
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


def assert_still_serving(server, session_id=b"g" * 16):
  replies, error = call(server.port, [hello(session_id), step(1), step(2)])
  assert error is None, error
  decoded = [wire.decode(r, env_protocol.actions_schema(SPEC), NUM_ENVS) for r in replies]
  assert [d.sequence for d in decoded] == [1, 2]
  np.testing.assert_array_equal(decoded[0].arrays["action"], np.ones(NUM_ENVS))


def open_stream(channel, messages):
  return channel.stream_stream(env_protocol.METHOD)(
      messages, metadata=[(env_protocol.TOKEN_METADATA_KEY, TOKEN)])


def lingering(session_id, release, host_id=b"h" * 16):
  """A host that says HELLO and one STEP, then waits (its stream open) until `release`."""
  yield hello(session_id, host_id=host_id)
  yield step(1)
  release.wait(30)


def settings_call(port, token=TOKEN):
  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    return channel.unary_unary(env_protocol.SETTINGS_METHOD)(
        b"", metadata=[(env_protocol.TOKEN_METADATA_KEY, token)], timeout=10)
