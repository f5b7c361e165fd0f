"""The Redis trajectory store against a real redis-server on a private loopback port."""

import dataclasses
import logging
import threading
import time

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
from tests.distributed import tls_certs

T = 4
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1", num_envs=2))
LSTM = networks.make_network(config_lib.NetworkConfig("mlp", use_lstm=True, lstm_size=8),
                             num_actions=2)


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory):
  with local_redis.LocalRedisServer(str(tmp_path_factory.mktemp("redis"))) as server:
    yield server


def _role_store(server, request, role, **kwargs):
  return trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, username=role, password_file=getattr(server, f"{role}_password_file"),
      key_prefix=request.node.name.replace("[", "_").replace("]", "")[:60], capacity=16,
      **kwargs))


@pytest.fixture(name="store")
def fixture_store(server, request):
  """The learner's side (the `learner` ACL user)."""
  store = _role_store(server, request, "learner")
  yield store
  store.close()


@pytest.fixture(name="actor_store")
def fixture_actor_store(server, request):
  """An actor host's side (the `actor` ACL user), on the same keys."""
  store = _role_store(server, request, "actor")
  yield store
  store.close()


def _unroll(seed, version=0, core_state=()):
  rng = np.random.default_rng(seed)
  n = T + 1
  return types.Unroll(
      # Within CartPole's declared bounds (the learner checks them).
      observation=rng.uniform(-0.4, 0.4, size=(n, 1, 4)).astype(np.float32),
      reward=rng.normal(size=(n, 1)).astype(np.float32),
      terminated=rng.random((n, 1)) < 0.2, truncated=np.zeros((n, 1), bool),
      first=rng.random((n, 1)) < 0.2,
      action=rng.integers(0, 2, (n, 1)).astype(np.int32),
      behaviour_log_prob=-np.abs(rng.normal(size=(n, 1))).astype(np.float32),
      policy_version=np.full((n, 1), version, np.int32), task=np.zeros((n, 1), np.int32),
      core_state=core_state)


def test_unrolls_cross_the_wire_as_task_0_and_other_tasks_are_refused():
  schema = codecs.unroll_schema(SPEC, T, ())
  decoded, _ = codecs.decode_unroll(codecs.encode_unroll(_unroll(0), schema), schema, ())
  assert decoded.task.shape == (T + 1, 1) and decoded.task.dtype == np.int32
  assert not decoded.task.any()
  other_task = _unroll(0)._replace(task=np.ones((T + 1, 1), np.int32))
  with pytest.raises(ValueError, match="Only task 0's unrolls cross the wire"):
    codecs.encode_unroll(other_task, schema)


def _lstm_state(seed):
  rng = np.random.default_rng(seed)
  return networks.LSTMState(cell=rng.normal(size=(1, 8)).astype(np.float32),
                            hidden=rng.normal(size=(1, 8)).astype(np.float32))


def test_unrolls_round_trip_with_their_core_state():
  initial = LSTM.initial_state(1)
  schema = codecs.unroll_schema(SPEC, T, initial)
  unroll = _unroll(0, core_state=_lstm_state(1))
  decoded, host_id = codecs.decode_unroll(codecs.encode_unroll(unroll, schema, host_id=9),
                                          schema, initial)
  assert host_id == 9
  for field in types.Unroll._fields:
    jax.tree.map(np.testing.assert_array_equal, getattr(decoded, field), getattr(unroll, field))
  # A learner with another unroll length (or network) refuses it.
  other = codecs.unroll_schema(SPEC, T + 1, initial)
  with pytest.raises(wire.WireError, match="'observation' has shape"):
    codecs.decode_unroll(codecs.encode_unroll(unroll, schema), other, initial)


def test_push_and_pop_keep_order_and_the_store_stays_bounded(store, actor_store):
  schema = codecs.unroll_schema(SPEC, T, ())
  size = codecs.blob_bytes(schema)
  blobs = [codecs.encode_unroll(_unroll(i, version=i), schema) for i in range(20)]
  assert actor_store.push_unrolls(blobs[:10]) == 0
  # Capacity 16: pushing 10 more drops the 4 oldest (stale data is worse than lost data).
  assert actor_store.push_unrolls(blobs[10:]) == 4
  stats = store.stats()
  assert (stats.length, stats.dropped) == (16, 4)
  assert store.pop_unrolls(5, size).blobs == blobs[4:9]  # Oldest first, one round trip.
  assert store.stats().length == 11
  assert store.pop_unrolls(100, size).blobs == blobs[9:]
  start = time.monotonic()
  assert store.pop_unrolls(3, size, block_seconds=0.3).blobs == []  # Waits, then returns.
  assert time.monotonic() - start >= 0.3


def test_reads_are_bounded_in_bytes(store, actor_store):
  size = codecs.blob_bytes(codecs.unroll_schema(SPEC, T, ()))
  actor_store.push_unrolls([b"x" * size, b"y" * (10 * size), b"z" * size])
  # The oversized blob is dropped in Redis, unread, and counted.
  assert store.pop_unrolls(10, size) == trajectory_store.Popped([b"x" * size, b"z" * size], 1)
  store.publish_params(b"p" * 100, 1)
  assert actor_store.fetch_params(100) == b"p" * 100
  with pytest.raises(ValueError, match="holds more than 99 bytes"):
    actor_store.fetch_params(99)


def test_the_learner_drops_stale_unrolls_and_rejects_foreign_blobs(store):
  schema = codecs.unroll_schema(SPEC, T, ())
  version = {"now": 30}
  source = _source(store, batch_size=3, current_version=lambda: version["now"])
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


def test_parameters_are_versioned_and_checked_against_the_network(store, actor_store):
  params = networks.init_params(LSTM, SPEC, seed=0)
  size = codecs.blob_bytes(codecs.params_schema(params))
  assert actor_store.params_version() is None and actor_store.fetch_params(size) is None
  store.publish_params(codecs.encode_params(params, 7), 7)
  assert actor_store.params_version() == 7
  restored, version = codecs.decode_params(actor_store.fetch_params(size), params)
  assert version == 7
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  smaller = networks.init_params(
      networks.make_network(config_lib.NetworkConfig("mlp", mlp_hidden_sizes=(8,)),
                            num_actions=2), SPEC, seed=0)
  with pytest.raises(wire.WireError):
    codecs.decode_params(actor_store.fetch_params(size), smaller)


def test_a_wrong_password_and_a_password_in_the_url_are_refused(server, monkeypatch):
  monkeypatch.setenv("REDIS_PASSWORD", "a-wrong-password-for-this-test")
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(url=server.url))
  with pytest.raises(PermissionError, match="wrong or missing password"):
    store.check()
  monkeypatch.delenv("REDIS_PASSWORD")
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(url=server.url))
  with pytest.raises(PermissionError, match="wrong or missing password"):
    store.check()
  # The actor's password is not the learner's.
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, username="learner", password_file=server.actor_password_file))
  with pytest.raises(PermissionError, match="refused user 'learner'"):
    store.check()
  with pytest.raises(ValueError, match="not in the URL"):
    trajectory_store.parse_url(f"redis://:secret@127.0.0.1:{server.port}/0")


def test_a_restarted_redis_is_reconnected_to_without_repair(tmp_path):
  server = local_redis.LocalRedisServer(str(tmp_path)).start()
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=server.url, username="learner", password_file=server.learner_password_file))
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
  with pytest.raises(ValueError, match="rediss://HOST:PORT/DB URL, got 'http://x'"):
    config_lib.TrajectoryStoreConfig(url="http://x")
  with pytest.raises(ValueError, match="is not on loopback and has no TLS.*--insecure_redis"):
    config_lib.TrajectoryStoreConfig(url="redis://redis.example.org:6379/0")
  config_lib.TrajectoryStoreConfig(url="redis://redis.example.org:6379/0", insecure_redis=True)
  config_lib.TrajectoryStoreConfig(url="rediss://redis.example.org:6379/0", tls_ca_file="ca")
  with pytest.raises(ValueError, match="TLS files need a rediss:// URL"):
    config_lib.TrajectoryStoreConfig(url="redis://127.0.0.1:6379/0", tls_ca_file="ca")
  with pytest.raises(ValueError, match="no actors of its own"):
    config_lib.TrainConfig(num_actor_threads=2,
                           trajectory_store=config_lib.TrajectoryStoreConfig())
  config = config_lib.TrainConfig(num_actor_threads=0,
                                  trajectory_store=config_lib.TrajectoryStoreConfig())
  assert dataclasses.asdict(config)["trajectory_store"]["url"].startswith("redis://")


def _source(store, batch_size=3, current_version=lambda: 0, to_evict=2):
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig("CartPole-v1"), num_actor_threads=0, unroll_length=T,
      batch_size=batch_size, max_batch_wait_minutes=5 / 60,
      trajectory_store=config_lib.TrajectoryStoreConfig(max_policy_lag=5),
      value_limits=config_lib.ValueLimits(violations_to_evict=to_evict))
  return store_learner.StoreBatchSource(config, store, SPEC, (), current_version=current_version,
                                        stop_requested=lambda: False, on_episode=EPISODES.append)


EPISODES = []


def test_an_actor_hosts_bad_values_are_refused_and_repeated_it_is_evicted(store, actor_store,
                                                                           caplog):
  schema = codecs.unroll_schema(SPEC, T, ())
  source = _source(store, batch_size=2)
  bad_action = _unroll(1)._replace(action=np.full((T + 1, 1), 7, np.int32))  # 2 actions.
  nan_reward = _unroll(2)._replace(reward=np.full((T + 1, 1), np.nan, np.float32))
  actor_store.push_unrolls([codecs.encode_unroll(bad_action, schema, host_id=0xBAD),
                            codecs.encode_unroll(_unroll(3), schema, host_id=0x600D),
                            codecs.encode_unroll(nan_reward, schema, host_id=0xBAD),
                            codecs.encode_unroll(_unroll(4), schema, host_id=0xBAD),
                            codecs.encode_unroll(_unroll(5), schema, host_id=0x600D)])
  with caplog.at_level(logging.WARNING):
    batch = source.next_batch().unroll
  # Only the good host's unrolls made the batch; the bad host's third was dropped unchecked.
  np.testing.assert_array_equal(batch.reward, np.stack([_unroll(3).reward,
                                                        _unroll(5).reward], 1)[..., 0])
  assert (source.violations.total, source.violations.evicted, source.evicted_blobs) == (2, 1, 1)
  assert "Rejected an unroll from actor host 0000000000000bad: action holds 7" in caplog.text
  assert "Evicting actor host 0000000000000bad" in caplog.text


def test_episode_records_are_checked_and_attributed(store, actor_store):
  source = _source(store)
  good = codecs.encode_episodes([types.EpisodeStats(20.0, 20)], host_id=1)
  forged = codecs.encode_episodes([types.EpisodeStats(1e9, 1)], host_id=2)
  impossible = codecs.encode_episodes([types.EpisodeStats(5.0, 0)], host_id=2)
  for blob in (good, forged, impossible):
    actor_store.push_episodes(blob)
  EPISODES.clear()
  source._collect_episodes()  # pylint: disable=protected-access
  assert EPISODES == [types.EpisodeStats(20.0, 20, "actor host 0000000000000001")]
  assert source.violations.total == 2


def test_roles_limit_what_an_actor_host_can_do(store, actor_store):
  store.publish_params(b"params", 3, settings=b"settings")
  for attempt in (lambda: actor_store.publish_params(b"forged", 99),
                  lambda: actor_store.publish_params(b"forged", 99, settings=b"forged"),
                  actor_store.begin_run,
                  lambda: actor_store.claim_learner("an actor", 30),
                  lambda: actor_store.pop_unrolls(1, 100),
                  lambda: actor_store.pop_episodes(100),
                  actor_store.mark_run_ended,
                  actor_store.stats):
    with pytest.raises(PermissionError, match="Redis user 'actor' may not do this"):
      attempt()
  assert actor_store.fetch_params(100) == b"params"
  assert actor_store.read_settings(100) == b"settings"
  assert actor_store.learner_state() == trajectory_store.LearnerState(3, False, False)
  store.mark_run_ended()
  assert actor_store.learner_state().run_ended


def test_redis_out_of_memory_is_backed_off_not_fatal(server, store, actor_store):
  admin = server.admin_client()
  schema = codecs.unroll_schema(SPEC, T, ())
  blob = codecs.encode_unroll(_unroll(0), schema)
  actor_store.push_unrolls([blob] * 8)
  try:
    admin.config_set("maxmemory", 1)  # Tiny: every write that may grow memory is refused.
    with pytest.raises(trajectory_store.StoreUnavailable, match="OutOfMemoryError"):
      actor_store.push_unrolls([blob])
    with pytest.raises(trajectory_store.StoreUnavailable, match="refuses this for now"):
      store.publish_params(b"p" * 100_000, 1)
    # The learner still pops (that frees memory); a pusher backs off until it can write.
    assert store.pop_unrolls(8, len(blob)).blobs == [blob] * 8
    freed = threading.Timer(1.0, lambda: admin.config_set("maxmemory", "1gb"))
    freed.start()
    start = time.monotonic()
    assert trajectory_store.retrying(lambda: store.publish_params(b"p" * 100_000, 1),
                                     lambda: False, "publishing") is None
    assert time.monotonic() - start >= 0.9  # It waited for memory, without failing.
    assert actor_store.params_version() == 1
    # A run that ends while Redis refuses writes still tells its actor hosts, once it can.
    admin.config_set("maxmemory", 1)
    threading.Timer(1.0, lambda: admin.config_set("maxmemory", "1gb")).start()
    store.mark_run_ended()
    assert actor_store.learner_state().run_ended
  finally:
    admin.config_set("maxmemory", "1gb")
    admin.close()


def test_rediss_with_client_certificates(tmp_path):
  certificates = tls_certs.make(str(tmp_path))
  tls = local_redis.TlsFiles(certificates.ca, certificates.server_cert,
                             certificates.server_key, certificates.client_cert,
                             certificates.client_key)
  with local_redis.LocalRedisServer(str(tmp_path), tls=tls) as server:
    assert server.url.startswith("rediss://")
    config = config_lib.TrajectoryStoreConfig(
        url=server.url, username="learner", password_file=server.learner_password_file,
        tls_ca_file=certificates.ca, tls_cert_file=certificates.client_cert,
        tls_key_file=certificates.client_key)
    store = trajectory_store.RedisStore(config)
    store.publish_params(b"over tls", 1)
    assert store.params_version() == 1
    store.close()
    # No client certificate: the server refuses the connection.
    anonymous = trajectory_store.RedisStore(dataclasses.replace(
        config, tls_cert_file=None, tls_key_file=None))
    with pytest.raises(trajectory_store.StoreUnavailable):
      anonymous.check()
    anonymous.close()


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
