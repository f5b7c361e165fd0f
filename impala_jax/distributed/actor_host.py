"""A decoupled actor host: local actors and a local (CPU) policy, linked to a learner by Redis.

    EnvPool ─▶ Actor threads ─▶ InferenceServer (this host's copy of the policy)
                   │                   ▲
                   ▼                   │ ParamsPoller: fetch when the version changed
             encoded unrolls ─▶ UnrollPusher ─▶ Redis ◀─ learner (pops batches, publishes)

The actors are the training run's own (`acting.actor`); only the ends differ: unrolls go to
Redis in batches instead of to a learner in this process, and parameters come from Redis.
Redis restarting or unreachable: the pusher and poller retry with backoff while the actors
block on their bounded queue; nothing waits without a timeout.
"""

import collections
import queue
import time
from typing import Any, List, Optional

from absl import logging
import jax

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.acting import actor as actor_lib
from impala_jax.acting import inference
from impala_jax.distributed import codecs
from impala_jax.distributed import trajectory_store
from impala_jax.distributed import wire
from impala_jax.runtime import worker

_POLL_SECONDS = 0.1
# How often actors look for new parameters by default (one GET of a small version key): the
# policy lag grows by about the learner's updates per poll interval. An actor host polls as
# often as its learner publishes (`ActorHost`'s `params_poll_seconds`).
PARAMS_POLL_SECONDS = 0.2
# Unrolls sent per RPUSH: several per round trip, without holding many back.
_PUSH_BATCH = 16


class EncodingSink:
  """The actors' sink on an actor host: each complete unroll, encoded (`codecs`, time-major
  `[T+1, 1, ...]`), into a bounded queue for the pusher."""

  def __init__(self, blob_queue: "queue.Queue[bytes]", schema):
    self._queue = blob_queue
    self._schema = schema

  def accepts_block(self, block: types.Unroll) -> bool:
    del block
    return False  # Unrolls leave one by one, encoded.

  def put_block(self, block, stop_requested):
    raise NotImplementedError("An actor host encodes unrolls one by one (put_unrolls).")

  def put_unrolls(self, block: types.Unroll, columns, stop_requested) -> bool:
    for column in columns:
      unroll = types.Unroll(*(field[:, column:column + 1] for field in block[:-1]),
                            core_state=jax.tree.map(lambda x, c=column: x[c:c + 1],
                                                    block.core_state))
      blob = codecs.encode_unroll(unroll, self._schema)
      while True:
        if stop_requested():
          return False
        try:
          self._queue.put(blob, timeout=_POLL_SECONDS)
          break
        except queue.Full:
          continue
    return True


class UnrollPusher(worker.Worker):
  """Moves encoded unrolls from the actors' queue to the store, several per round trip."""

  def __init__(self, blob_queue: "queue.Queue[bytes]", store: trajectory_store.RedisStore,
               episodes: "queue.SimpleQueue[types.EpisodeStats]"):
    super().__init__(name="unroll-pusher", description="The unroll pusher")
    self._queue = blob_queue
    self._episodes = episodes
    self._store = store
    self.pushed = 0
    self.dropped_by_store = 0
    self.bytes_pushed = 0
    # This host's most recent finished episodes (bounded: a long run must not grow memory).
    self.recent_episodes = collections.deque(maxlen=100)

  def _run(self) -> None:
    while not self._stop.is_set():
      blobs = self._take()
      if blobs:
        dropped = trajectory_store.retrying(lambda: self._store.push_unrolls(blobs),
                                            self._stop.is_set, "pushing unrolls")
        self.pushed += len(blobs)
        self.dropped_by_store += dropped or 0
        self.bytes_pushed += sum(len(b) for b in blobs)
      finished = _drain(self._episodes)
      if finished:
        blob = codecs.encode_episodes(finished[:codecs.MAX_EPISODES_PER_MESSAGE])
        trajectory_store.retrying(lambda: self._store.push_episodes(blob), self._stop.is_set,
                                  "pushing episode scores")
        self.recent_episodes.extend(finished)

  def _take(self) -> List[bytes]:
    try:
      first = self._queue.get(timeout=_POLL_SECONDS)
    except queue.Empty:
      return []
    blobs = [first]
    while len(blobs) < _PUSH_BATCH:
      try:
        blobs.append(self._queue.get_nowait())
      except queue.Empty:
        break
    return blobs


def _drain(episodes: "queue.SimpleQueue[types.EpisodeStats]") -> List[types.EpisodeStats]:
  finished = []
  while True:
    try:
      finished.append(episodes.get_nowait())
    except queue.Empty:
      return finished


class ParamsPoller(worker.Worker):
  """Gives the local inference server the store's parameters whenever their version changes."""

  def __init__(self, store: trajectory_store.RedisStore, server: inference.InferenceServer,
               template: Any, version: int, poll_seconds: float = PARAMS_POLL_SECONDS):
    super().__init__(name="params-poller", description="The parameter poller")
    self._poll_seconds = poll_seconds
    self._store = store
    self._server = server
    self._template = template
    self.version = version
    self.fetches = 0

  def _run(self) -> None:
    while not self._stop.wait(self._poll_seconds):
      version = trajectory_store.retrying(self._store.params_version, self._stop.is_set,
                                          "reading the parameter version")
      if version is None or version == self.version:
        continue  # A restarted learner may publish a lower version: any change counts.
      params = fetch_params(self._store, self._template, self._stop.is_set)
      if params is not None:
        self._server.update_params(params[0], params[1])
        self.version = params[1]
        self.fetches += 1


def fetch_params(store: trajectory_store.RedisStore, template: Any, stop_requested):
  """(params, version) from the store, or None (none yet, or a blob of the wrong shape)."""
  blob = trajectory_store.retrying(store.fetch_params, stop_requested, "fetching parameters")
  if blob is None:
    return None
  try:
    return codecs.decode_params(blob, template)
  except wire.WireError as e:
    logging.warning("Ignoring parameters in %s that do not fit this network: %s", store.url, e)
    return None


class ActorHost:
  """Owns the actors, the local inference server, the pusher and the poller."""

  def __init__(self, config: config_lib.TrainConfig, store: trajectory_store.RedisStore,
               params_poll_seconds: float = PARAMS_POLL_SECONDS):
    """Args:
      config: the actors' settings (environment, network, layout).
      store: the learner's Redis store.
      params_poll_seconds: how often to look for new parameters: the learner's publish
        interval, so that a fast learner's parameters reach the actors as often as it writes
        them (the data's age in updates is about the learner's updates per interval).
    """
    self._config = config
    self._store = store
    self._params_poll_seconds = params_poll_seconds
    self._spec = envs.env_spec(config.env)
    self._network = networks.network_for_spec(config.network, self._spec)
    self._template = networks.init_params(self._network, self._spec, config.seed)
    self._workers: List[worker.Worker] = []
    self._episodes: "queue.SimpleQueue[types.EpisodeStats]" = queue.SimpleQueue()
    self.pusher: Optional[UnrollPusher] = None
    self.poller: Optional[ParamsPoller] = None

  def wait_for_params(self, stop_requested, timeout_seconds: float):
    """The learner's first parameters; raises TimeoutError if none appear in time."""
    deadline = time.monotonic() + timeout_seconds
    while not stop_requested():
      params = fetch_params(self._store, self._template, stop_requested)
      if params is not None:
        return params
      if time.monotonic() > deadline:
        raise TimeoutError(f"No parameters in {self._store.url} after {timeout_seconds:.0f} s: "
                           "is the learner running with the same --trajectory_store?")
      time.sleep(PARAMS_POLL_SECONDS)
    return None

  def start(self, params: Any, version: int) -> None:
    config = self._config
    blob_queue: "queue.Queue[bytes]" = queue.Queue(maxsize=2 * _PUSH_BATCH)
    recv_batch = config.env.recv_batch_size
    server = inference.InferenceServer(
        self._network.apply, params, self._network.initial_state(1),
        num_envs=config.total_envs,
        batch_sizes=[recv_batch * k for k in range(1, config.num_actor_threads + 1)],
        seed=config.seed, batch_wait_ms=config.inference_batch_wait_ms,
        expected_requests=config.num_actor_threads, initial_version=version)
    schema = codecs.unroll_schema(self._spec, config.unroll_length,
                                  self._network.initial_state(1))
    self.pusher = UnrollPusher(blob_queue, self._store, self._episodes)
    self.poller = ParamsPoller(self._store, server, self._template, version,
                               self._params_poll_seconds)
    actors = [actor_lib.Actor(i, env_config, server, EncodingSink(blob_queue, schema),
                              config.unroll_length,
                              on_episode=self._episodes.put)
              for i, env_config in enumerate(actor_lib.env_configs(config, update_step=0))]
    self._workers = [server, self.pusher, self.poller, *actors]
    for w in self._workers:
      w.start()

  def check(self) -> None:
    worker.raise_if_failed(self._workers)

  def close(self) -> None:
    # Actors first (they may block on the queue), then the pusher, poller and server.
    worker.close_all(reversed(self._workers))

