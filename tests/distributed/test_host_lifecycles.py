"""Bad hosts against a real learner process, and hosts that end with its run.

Each test runs a learner (experiments/control.py, CartPole) and one honest host as real
processes, plays bad hosts against the learner from this process over real sockets (a gRPC
port, a redis-server), and checks that training goes on to its budget, that nothing bad
reached it, that forged scores did not end it, and that the honest host exits 0 when the run
ends.
"""

import csv
import os
import re
import threading
import time

import grpc
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import types
from impala_jax.distributed import codecs
from impala_jax.distributed import env_protocol
from impala_jax.distributed import local_redis
from impala_jax.distributed import trajectory_store
from impala_jax.distributed import wire
from tests.distributed.processes import metrics
from tests.distributed.processes import read
from tests.distributed.processes import REPO
from tests.distributed.processes import wait_for

TOKEN = "host-lifecycles-test-token-0123456789"
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1"))
BUDGET = 12_000
CONTROL = os.path.join(REPO, "experiments", "control.py")


def _episodes(logdir):
  with open(os.path.join(logdir, "episodes.csv"), encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


# -- env hosts (gRPC) -----------------------------------------------------------------------


def _hello(session_id, host_id, num_envs=4):
  return env_protocol.encode_hello(session_id, host_id, "CartPole-v1", num_envs, SPEC)


def _step(sequence, n=4, **overrides):
  arrays = dict(env_ids=np.arange(n, dtype=np.int32), observation=np.zeros((n, 4), np.float32),
                reward=np.ones(n, np.float32), terminated=np.zeros(n, bool),
                truncated=np.zeros(n, bool), game_reward=np.ones(n, np.float32),
                game_over=np.zeros(n, bool), elapsed_step=np.ones(n, np.int32))
  arrays.update(overrides)
  return wire.encode(env_protocol.STEP, sequence, env_protocol.step_schema(SPEC), arrays)


def _call(port, messages, timeout=30):
  """Sends `messages` on one stream; returns (replies, the status code it ended with)."""
  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stream = channel.stream_stream(env_protocol.METHOD)(
        messages, metadata=[(env_protocol.TOKEN_METADATA_KEY, TOKEN)], timeout=timeout)
    replies = []
    try:
      for reply in stream:
        replies.append(reply)
    except grpc.RpcError as e:
      return replies, e.code()
    return replies, grpc.StatusCode.OK


def _play_bad_env_hosts(port):
  nan = _step(1, reward=np.array([1, np.nan, 1, 1], np.float32))
  # A host sending NaN: rejected, then (second time) evicted.
  assert _call(port, iter([_hello(b"a" * 16, b"N" * 16), nan]))[1] == grpc.StatusCode.DATA_LOSS
  assert _call(port, iter([_hello(b"b" * 16, b"N" * 16), nan]))[1] == (
      grpc.StatusCode.PERMISSION_DENIED)
  # A host asking for every slot: refused (its fair share is 32 // 4 = 8).
  assert _call(port, iter([_hello(b"c" * 16, b"H" * 16, num_envs=32)]))[1] == (
      grpc.StatusCode.FAILED_PRECONDITION)
  def silent():
    time.sleep(5)  # Past the deadline (the stream is closed by then).
    yield _hello(b"d" * 16, b"S" * 16)

  start = time.monotonic()  # A stream that never says HELLO: closed at the 2 s deadline.
  assert _call(port, silent())[1] == grpc.StatusCode.CANCELLED
  assert time.monotonic() - start < 10
  release = threading.Event()

  def lingering():
    yield _hello(b"e" * 16, b"L" * 16)
    yield _step(1)
    release.wait(30)

  with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    live = channel.stream_stream(env_protocol.METHOD)(
        lingering(), metadata=[(env_protocol.TOKEN_METADATA_KEY, TOKEN)])
    next(live)
    # Its session id from another connection: refused, the live session stays.
    assert _call(port, iter([_hello(b"e" * 16, b"T" * 16), _step(1)]))[1] == (
        grpc.StatusCode.ALREADY_EXISTS)
    release.set()
    list(live)
  # Forged scores: 8 STEPs that each end 4 one-step games of 1e6 (within --max_abs_reward).
  over = np.ones(4, bool)
  forged = [_step(s, reward=np.full(4, 1e6, np.float32), game_reward=np.full(4, 1e6, np.float32),
                  terminated=over, game_over=over) for s in range(1, 9)]
  # ... under two host ids, so that two remote hosts each "reach" --stop_at_score.
  for session_id, host_id in ((b"f" * 16, b"F" * 16), (b"g" * 16, b"G" * 16)):
    replies, code = _call(port, iter([_hello(session_id, host_id)] + forged))
    assert code == grpc.StatusCode.OK and len(replies) == 8


def test_bad_env_hosts_neither_end_nor_fake_the_run_and_hosts_exit_at_its_end(tmp_path,
                                                                             processes):
  token_file = tmp_path / "token"
  token_file.write_text(TOKEN)
  os.chmod(token_file, 0o600)
  logdir = str(tmp_path / "learner")
  learner = processes.start("learner", [
      CONTROL, "--listen=127.0.0.1:0", f"--token_file={token_file}", "--num_actor_threads=0",
      f"--logdir={logdir}", f"--total_env_steps={BUDGET}", "--stop_at_score=400",
      "--progress=false", "--log_interval_seconds=1", "--max_hosts=4", "--remote_max_envs=32",
      "--hello_timeout_seconds=2", "--violations_to_evict=2"])
  port = int(wait_for(lambda: re.search(r"Serving env hosts on .* \(port (\d+)",
                                        read(learner.log_path)), 120, "the server").group(1))
  _play_bad_env_hosts(port)
  # An honest host with no settings of its own: the learner's CartPole, T, ...
  host = processes.start("host", [os.path.join(REPO, "experiments", "env_host.py"),
                                  f"--learner=127.0.0.1:{port}", f"--token_file={token_file}",
                                  "--num_envs=8", "--seed=1"])
  assert learner.wait(timeout=300) == 0, read(learner.log_path)[-3000:]
  assert host.wait(timeout=60) == 0, read(host.log_path)[-3000:]
  log = read(learner.log_path)
  # Not "score_reached": two hosts' 1e6 games only made the learner play its own games.
  assert "Done (completed)" in log
  assert re.search(r"Remote hosts' scores reach --stop_at_score=400, but the learner's own 20 "
                   r"games score \d", log), log[-3000:]
  assert "The learner's run has ended" in read(host.log_path)
  rows = metrics(logdir)
  assert int(float(rows[-1]["env_steps"])) >= BUDGET
  assert int(rows[-1]["value_violations"]) == 2 and int(rows[-1]["evicted_hosts"]) >= 1
  # Every game is attributed to its host: the forger's 32 + 32 show as what they are.
  for host_id in (b"F" * 16, b"G" * 16):
    forger = f"env host {host_id.hex()[:8]}"
    assert f"{forger} 32 games 1000000.00" in log
    forged = [r for r in _episodes(logdir) if r["source"] == forger]
    assert len(forged) == 32 and all(float(r["episode_return"]) == 1e6 for r in forged)


# -- actor hosts (Redis) --------------------------------------------------------------------


def _push_bad_blobs(redis_server):
  store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
      url=redis_server.url, username="actor", password_file=redis_server.actor_password_file))
  n = 11  # The learner's T + 1 (control.py: unroll_length 10, an MLP without LSTM).
  unroll = types.Unroll(observation=np.zeros((n, 1, 4), np.float32),
                        reward=np.zeros((n, 1), np.float32), terminated=np.zeros((n, 1), bool),
                        truncated=np.zeros((n, 1), bool), first=np.zeros((n, 1), bool),
                        action=np.full((n, 1), 5, np.int32),  # CartPole has 2 actions.
                        behaviour_log_prob=np.zeros((n, 1), np.float32),
                        policy_version=np.zeros((n, 1), np.int32),
                        task=np.zeros((n, 1), np.int32), core_state=())
  schema = codecs.unroll_schema(SPEC, 10, ())
  store.push_unrolls([codecs.encode_unroll(unroll, schema, host_id=0xBAD)] * 3)
  store.push_episodes(codecs.encode_episodes([types.EpisodeStats(1e9, 1)], host_id=0xBAD))
  store.close()


def test_actor_hosts_take_the_learners_settings_survive_oom_and_exit_at_the_end(tmp_path,
                                                                              processes):
  with local_redis.LocalRedisServer(str(tmp_path)) as redis_server:
    logdir = str(tmp_path / "learner")
    store = [f"--trajectory_store={redis_server.url}"]
    learner = processes.start("learner", [
        CONTROL, *store, "--redis_username=learner",
        f"--redis_password_file={redis_server.learner_password_file}", "--num_actor_threads=0",
        f"--logdir={logdir}", f"--total_env_steps={BUDGET}", "--progress=false",
        "--log_interval_seconds=1", "--violations_to_evict=2",
        "--params_publish_interval_seconds=0.1"])
    actor = [os.path.join(REPO, "experiments", "actor_host.py"), *store,
             "--redis_username=actor", f"--redis_password_file={redis_server.actor_password_file}",
             "--num_actor_threads=1", "--num_envs=8", "--status_interval_seconds=5"]
    # One that insists on another unroll length is refused at connect time, in one message
    # (which also says that the learner has published its settings).
    insisting = processes.start("insisting", actor + ["--unroll_length=20", "--seed=2"])
    assert insisting.wait(timeout=120) == 2
    assert "--unroll_length=20 (the learner's: 10)" in read(insisting.log_path)
    _push_bad_blobs(redis_server)
    # Out of memory before the honest host pushes anything, so that it meets the refusal
    # however fast this machine trains: writes are refused until it has logged one.
    admin = redis_server.admin_client()
    admin.config_set("maxmemory", 1)
    # Only --env and the store: the network (MLP), T (10), ... come from the learner.
    host = processes.start("host", actor + ["--env=CartPole-v1", "--seed=1"])
    wait_for(lambda: "OutOfMemoryError" in read(host.log_path), 180, "the host meeting OOM")
    admin.config_set("maxmemory", "1gb")
    admin.close()
    assert learner.wait(timeout=300) == 0, read(learner.log_path)[-3000:]
    assert host.wait(timeout=60) == 0, read(host.log_path)[-3000:]
  assert "Done (completed)" in read(learner.log_path)
  assert "The learner's run has ended" in read(host.log_path)
  assert "Redis is back" in read(host.log_path)
  last = metrics(logdir)[-1]
  assert int(float(last["env_steps"])) >= BUDGET
  assert int(last["value_violations"]) == 2 and int(last["evicted_hosts"]) == 1
  assert int(last["evicted_blobs"]) >= 1  # The third bad unroll, or the forged episode.
  sources = {r["source"] for r in _episodes(logdir)}
  assert len(sources) == 1 and next(iter(sources)).startswith("actor host ")
  assert "actor host 0000000000000bad" not in sources  # Its forged game was dropped.
