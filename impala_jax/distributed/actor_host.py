"""A decoupled actor host: local actors and a local (CPU) policy, linked to a learner by Redis.

    EnvPool ─▶ Actor threads ─▶ InferenceServer (this host's copy of the policy)
                   │                   ▲
                   ▼                   │ ParamsPoller: fetch when the version changed
             encoded unrolls ─▶ UnrollPusher ─▶ Redis ◀─ learner (pops batches, publishes)

The actors are the training run's own (`acting.actor`); only the ends differ: unrolls go to
Redis in batches instead of to a learner in this process, and parameters come from Redis.
The settings that must match the learner's (environment, network, unroll length) come from
the store too (`learner_settings`). Every blob carries this host's id, so the learner counts
faults per host.

How it ends: when the learner marks its run ended, the poller sees it and the host stops
(`run_ended`). Redis restarting or unreachable, or no learner holding the keys: the pusher and
poller retry with backoff while the actors block on their bounded queue, for up to
`learner_timeout_seconds`; then the host fails, saying which. Nothing waits without a timeout.
"""

import collections
import os
import queue
import time
from typing import Any, Dict, List, Optional

from absl import logging
import jax

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import threads
from impala_jax import queues
from impala_jax import types
from impala_jax.acting import actor as actor_lib
from impala_jax.acting import inference
from impala_jax.distributed import codecs
from impala_jax.distributed import learner_settings
from impala_jax.distributed import trajectory_store
from impala_jax.distributed import wire

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

  def __init__(self, blob_queue: "queue.Queue[bytes]", schema, host_id: int):
    self._queue = blob_queue
    self._schema = schema
    self._host_id = host_id

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
      blob = codecs.encode_unroll(unroll, self._schema, self._host_id)
      while True:
        if stop_requested():
          return False
        try:
          self._queue.put(blob, timeout=_POLL_SECONDS)
          break
        except queue.Full:
          continue
    return True


class UnrollPusher(threads.Worker):
  """Moves encoded unrolls from the actors' queue to the store, several per round trip."""

  def __init__(self, blob_queue: "queue.Queue[bytes]", store: trajectory_store.RedisStore,
               episodes: "queue.SimpleQueue[types.EpisodeStats]", host_id: int,
               give_up_seconds: float):
    super().__init__(name="unroll-pusher", description="The unroll pusher")
    self._queue = blob_queue
    self._episodes = episodes
    self._store = store
    self._host_id = host_id
    self._give_up = give_up_seconds
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
                                            self._stop.is_set, "pushing unrolls", self._give_up)
        self.pushed += len(blobs)
        self.dropped_by_store += dropped or 0
        self.bytes_pushed += sum(len(b) for b in blobs)
      finished = queues.drain(self._episodes)
      if finished:
        blob = codecs.encode_episodes(finished[-codecs.MAX_EPISODES_PER_MESSAGE:],
                                      self._host_id)
        trajectory_store.retrying(lambda: self._store.push_episodes(blob), self._stop.is_set,
                                  "pushing episode scores", self._give_up)
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


class ParamsPoller(threads.Worker):
  """Gives the local inference server the store's parameters whenever their version changes,
  and watches the learner: stops when its run has ended (`run_ended`), fails when no learner
  has held the keys for `learner_timeout_seconds`."""

  def __init__(self, store: trajectory_store.RedisStore, server: inference.InferenceServer,
               template: Any, version: int, poll_seconds: float = PARAMS_POLL_SECONDS,
               learner_timeout_seconds: float = 600.0):
    super().__init__(name="params-poller", description="The parameter poller")
    self._poll_seconds = poll_seconds
    self._store = store
    self._server = server
    self._template = template
    self._timeout = learner_timeout_seconds
    self.version = version
    self.fetches = 0
    self.run_ended = False

  def _run(self) -> None:
    learner_seen = time.monotonic()
    while not self._stop.wait(self._poll_seconds):
      state = trajectory_store.retrying(self._store.learner_state, self._stop.is_set,
                                        "reading the learner's state", self._timeout)
      if state is None:
        continue  # Stopping.
      if state.run_ended:
        self.run_ended = True
        logging.info("The learner's run has ended; stopping.")
        return
      if state.learner_present:
        learner_seen = time.monotonic()
      elif time.monotonic() - learner_seen > self._timeout:
        raise RuntimeError(f"No learner has held {self._store.prefix}:* in {self._store.url} "
                           f"for {self._timeout:.0f} s (--learner_timeout_seconds); giving up.")
      if state.params_version is None or state.params_version == self.version:
        continue  # A restarted learner may publish a lower version: any change counts.
      params = fetch_params(self._store, self._template, self._stop.is_set, self._timeout)
      if params is not None:
        self._server.update_params(params[0], params[1])
        self.version = params[1]
        self.fetches += 1


def fetch_params(store: trajectory_store.RedisStore, template: Any, stop_requested,
                 give_up_seconds: Optional[float] = None):
  """(params, version) from the store, or None (none yet, or a blob of the wrong shape)."""
  max_bytes = codecs.blob_bytes(codecs.params_schema(template))
  try:
    blob = trajectory_store.retrying(lambda: store.fetch_params(max_bytes), stop_requested,
                                     "fetching parameters", give_up_seconds)
    if blob is None:
      return None
    return codecs.decode_params(blob, template)
  except (ValueError, wire.WireError) as e:  # WireError is a ValueError.
    logging.warning("Ignoring parameters in %s that do not fit this network: %s", store.url, e)
    return None


def wait_for_settings(store: trajectory_store.RedisStore, stop_requested,
                      timeout_seconds: float) -> Optional[Dict[str, Any]]:
  """The learner's settings (`learner_settings`); None if stopped first.

  Raises:
    TimeoutError: none appear within `timeout_seconds` (no learner on these keys).
    wire.WireError: the store holds something else.
  """
  deadline = time.monotonic() + timeout_seconds
  while not stop_requested():
    blob = trajectory_store.retrying(
        lambda: store.read_settings(learner_settings.MAX_BYTES + 1024), stop_requested,
        "reading the learner's settings", timeout_seconds)
    if blob is not None:
      return learner_settings.decode(blob)
    if time.monotonic() > deadline:
      raise TimeoutError(f"No learner settings in {store.url} ({store.prefix}:settings) after "
                         f"{timeout_seconds:.0f} s: is the learner running with the same "
                         "--trajectory_store and --redis_key_prefix?")
    time.sleep(PARAMS_POLL_SECONDS)
  return None


class ActorHost:
  """Owns the actors, the local inference server, the pusher and the poller."""

  def __init__(self, config: config_lib.TrainConfig, store: trajectory_store.RedisStore,
               params_poll_seconds: float = PARAMS_POLL_SECONDS,
               learner_timeout_seconds: float = 600.0):
    """Args:
      config: the actors' settings (environment, network, layout): the learner's
        (`learner_settings.train_config`) with this host's layout and seed.
      store: the learner's Redis store.
      params_poll_seconds: how often to look for new parameters: the learner's publish
        interval, so that a fast learner's parameters reach the actors as often as it writes
        them (the data's age in updates is about the learner's updates per interval).
      learner_timeout_seconds: fail after this long without a learner or without Redis.
    """
    self._config = config
    self._store = store
    self._params_poll_seconds = params_poll_seconds
    self._learner_timeout = learner_timeout_seconds
    # Stamped on every blob, so the learner counts this host's faults as one host's.
    self.host_id = int.from_bytes(os.urandom(8), "little") >> 1  # Fits the wire's u64.
    self._spec = envs.env_spec(config.env)
    self._network = networks.network_for_spec(config.network, self._spec)
    self._template = networks.init_params(self._network, self._spec, config.seed)
    self._workers: List[threads.Worker] = []
    self._episodes: "queue.SimpleQueue[types.EpisodeStats]" = queue.SimpleQueue()
    self.pusher: Optional[UnrollPusher] = None
    self.poller: Optional[ParamsPoller] = None

  def wait_for_params(self, stop_requested, timeout_seconds: float):
    """The learner's first parameters; raises TimeoutError if none appear in time."""
    deadline = time.monotonic() + timeout_seconds
    while not stop_requested():
      params = fetch_params(self._store, self._template, stop_requested, timeout_seconds)
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
    self.pusher = UnrollPusher(blob_queue, self._store, self._episodes, self.host_id,
                               self._learner_timeout)
    self.poller = ParamsPoller(self._store, server, self._template, version,
                               self._params_poll_seconds, self._learner_timeout)
    sink = EncodingSink(blob_queue, schema, self.host_id)
    actors = [actor_lib.Actor(i, env_config, server, sink,
                              config.unroll_length,
                              on_episode=self._episodes.put)
              for i, env_config in enumerate(actor_lib.env_configs(config, update_step=0))]
    self._workers = [server, self.pusher, self.poller, *actors]
    for w in self._workers:
      w.start()

  @property
  def run_ended(self) -> bool:
    """The learner's run has ended (its poller saw it and stopped)."""
    return self.poller is not None and self.poller.run_ended

  def check(self) -> None:
    """Raises if a thread failed; once the run has ended, the poller's stop is no failure."""
    workers = [w for w in self._workers if w is not self.poller or not self.run_ended]
    threads.raise_if_failed(workers)

  def close(self) -> None:
    # Actors first (they may block on the queue), then the pusher, poller and server.
    threads.close_all(reversed(self._workers))

