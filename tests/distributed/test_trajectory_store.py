"""The Redis trajectory store against a real redis-server on a private loopback port."""

import dataclasses

import jax
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.distributed import codecs
from impala_jax.distributed import local_redis
from impala_jax.distributed import store_learner
from impala_jax.distributed import trajectory_store
from impala_jax.distributed import wire

T = 4
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1", num_envs=2))
LSTM = networks.make_network(config_lib.NetworkConfig("mlp", use_lstm=True, lstm_size=8),
                             num_actions=2)


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory):
  with local_redis.LocalRedisServer(str(tmp_path_factory.mktemp("redis"))) as server:
    yield server


@pytest.fixture(name="store")
def fixture_store(server, request):
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, password_file=server.password_file,
      key_prefix=request.node.name.replace("[", "_").replace("]", "")[:60], capacity=16))
  yield store
  store.close()


def _unroll(seed, version=0, core_state=()):
  rng = np.random.default_rng(seed)
  n = T + 1
  return types.Unroll(
      observation=rng.normal(size=(n, 1, 4)).astype(np.float32),
      reward=rng.normal(size=(n, 1)).astype(np.float32),
      terminated=rng.random((n, 1)) < 0.2, truncated=np.zeros((n, 1), bool),
      first=rng.random((n, 1)) < 0.2,
      action=rng.integers(0, 2, (n, 1)).astype(np.int32),
      behaviour_log_prob=rng.normal(size=(n, 1)).astype(np.float32),
      policy_version=np.full((n, 1), version, np.int32), core_state=core_state)


def _lstm_state(seed):
  rng = np.random.default_rng(seed)
  return networks.LSTMState(cell=rng.normal(size=(1, 8)).astype(np.float32),
                            hidden=rng.normal(size=(1, 8)).astype(np.float32))


def test_unrolls_round_trip_with_their_core_state():
  initial = LSTM.initial_state(1)
  schema = codecs.unroll_schema(SPEC, T, initial)
  unroll = _unroll(0, core_state=_lstm_state(1))
  decoded = codecs.decode_unroll(codecs.encode_unroll(unroll, schema), schema, initial)
  for field in types.Unroll._fields:
    jax.tree.map(np.testing.assert_array_equal, getattr(decoded, field), getattr(unroll, field))
  # A learner with another unroll length (or network) refuses it.
  other = codecs.unroll_schema(SPEC, T + 1, initial)
  with pytest.raises(wire.WireError, match="'observation' has shape"):
    codecs.decode_unroll(codecs.encode_unroll(unroll, schema), other, initial)


def test_push_and_pop_keep_order_and_the_store_stays_bounded(store):
  schema = codecs.unroll_schema(SPEC, T, ())
  blobs = [codecs.encode_unroll(_unroll(i, version=i), schema) for i in range(20)]
  assert store.push_unrolls(blobs[:10]) == 0
  # Capacity 16: pushing 10 more drops the 4 oldest (stale data is worse than lost data).
  assert store.push_unrolls(blobs[10:]) == 4
  stats = store.stats()
  assert (stats.length, stats.dropped) == (16, 4)
  popped = store.pop_unrolls(5)
  assert popped == blobs[4:9]  # Oldest first, one round trip for the four after the first.
  assert store.stats().length == 11
  assert store.pop_unrolls(100) == blobs[9:]
  assert store.pop_unrolls(3, block_seconds=0.2) == []  # Empty: waits, then returns.


def test_the_learner_drops_stale_unrolls_and_rejects_foreign_blobs(store):
  schema = codecs.unroll_schema(SPEC, T, ())
  version = {"now": 30}
  source = store_learner.StoreBatchSource(
      store, batch_size=3, schema=schema, initial_core_state=(), max_policy_lag=5,
      current_version=lambda: version["now"], stop_requested=lambda: False,
      max_wait_seconds=5)
  pong = envs.env_spec(config_lib.EnvConfig("Pong-v5", num_envs=2))
  foreign = codecs.encode_unroll(
      _unroll(0)._replace(observation=np.zeros((T + 1, 1, 4, 84, 84), np.uint8)),
      codecs.unroll_schema(pong, T, ()))
  store.push_unrolls([
      codecs.encode_unroll(_unroll(1, version=10), schema),   # 20 updates old: stale.
      b"not a message at all",
      foreign,                                                # Another environment's.
      codecs.encode_unroll(_unroll(2, version=31), schema),   # From the future: stale.
      codecs.encode_unroll(_unroll(3, version=25), schema),   # Lag 5: fresh.
      codecs.encode_unroll(_unroll(4, version=29), schema),
      codecs.encode_unroll(_unroll(5, version=30), schema)])
  batch = source.next_batch().unroll  # Time-major: [T+1, B].
  assert batch.policy_version[0].tolist() == [25, 29, 30]
  assert (source.stale, source.rejected) == (2, 2)


def test_parameters_are_versioned_and_checked_against_the_network(store):
  params = networks.init_params(LSTM, SPEC, seed=0)
  assert store.params_version() is None and store.fetch_params() is None
  store.publish_params(codecs.encode_params(params, 7), 7)
  assert store.params_version() == 7
  restored, version = codecs.decode_params(store.fetch_params(), params)
  assert version == 7
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  smaller = networks.init_params(
      networks.make_network(config_lib.NetworkConfig("mlp", mlp_hidden_sizes=(8,)),
                            num_actions=2), SPEC, seed=0)
  with pytest.raises(wire.WireError):
    codecs.decode_params(store.fetch_params(), smaller)


def test_a_wrong_password_and_a_password_in_the_url_are_refused(server, monkeypatch):
  monkeypatch.setenv("REDIS_PASSWORD", "a-wrong-password-for-this-test")
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(url=server.url))
  with pytest.raises(PermissionError, match="wrong or missing password"):
    store.check()
  monkeypatch.delenv("REDIS_PASSWORD")
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(url=server.url))
  with pytest.raises(PermissionError, match="wrong or missing password"):
    store.check()
  with pytest.raises(ValueError, match="not in the URL"):
    trajectory_store.parse_url(f"redis://:secret@127.0.0.1:{server.port}/0")


def test_a_restarted_redis_is_reconnected_to_without_repair(tmp_path):
  server = local_redis.LocalRedisServer(str(tmp_path)).start()
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, password_file=server.password_file))
  try:
    store.publish_params(b"x", 1)
    server.stop()
    with pytest.raises(trajectory_store.StoreUnavailable, match="unavailable"):
      store.params_version()
    server.start()  # Same port, empty (no persistence).
    assert trajectory_store.retrying(store.params_version, lambda: False, "test") is None
    store.publish_params(b"y", 2)
    assert store.params_version() == 2
  finally:
    store.close()
    server.stop()


def test_store_config_is_validated():
  with pytest.raises(ValueError, match="redis://HOST:PORT/DB URL, got 'http://x'"):
    config_lib.TrajectoryStoreConfig(url="http://x")
  with pytest.raises(ValueError, match="no actors of its own"):
    config_lib.TrainConfig(num_actor_threads=2,
                           trajectory_store=config_lib.TrajectoryStoreConfig())
  config = config_lib.TrainConfig(num_actor_threads=0,
                                  trajectory_store=config_lib.TrajectoryStoreConfig())
  assert dataclasses.asdict(config)["trajectory_store"]["url"].startswith("redis://")


def test_one_learner_per_key_prefix(store):
  assert store.claim_learner("learner-a", 30) is None
  assert store.claim_learner("learner-b", 30) == "learner-a"  # Refused, with the holder.
  assert store.renew_learner("learner-a", 30)
  assert not store.renew_learner("learner-b", 30)
  store._client.delete(f"{store.prefix}:learner")  # pylint: disable=protected-access
  assert store.renew_learner("learner-a", 30)  # Redis lost the key (restart): taken back.
  assert store.claim_learner("learner-b", 30) == "learner-a"
  store.release_learner("learner-b")  # Not b's to release.
  assert store.claim_learner("learner-b", 30) == "learner-a"
  store.release_learner("learner-a")
  assert store.claim_learner("learner-b", 30) is None
