"""The learner's side of the Redis trajectory store: batches in, parameters out.

`StoreBatchSource` is a `runtime.learner_loop.BatchSource`: it pops whole batches (blobs of
any size but the schema's are dropped in Redis, unread), decodes each blob against the
learner's own schema (a blob that does not match is counted and skipped, never crashed on),
checks its values (`envs.value_checks`: a violation is logged naming the actor host, counted,
and after `violations_to_evict` of them that host's blobs are dropped from then on), and drops
unrolls whose parameters are more than `max_policy_lag` updates old (or newer than the
learner: left over from a run that got further before it was restarted from a checkpoint).
Episode records get the same checks. `StorePublisher` writes the parameters at most every
`publish_interval_seconds`.
"""

import os
import socket
import time
import uuid
from typing import Any, Callable, List, Optional, Sequence

from absl import logging
import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import stage_clock
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import batch_assembler
from impala_jax.distributed import codecs
from impala_jax.distributed import trajectory_store
from impala_jax.distributed import violations as violations_lib
from impala_jax.distributed import wire
from impala_jax.envs import value_checks

_WAITING_LOG_SECONDS = 30.0
LEASE_SECONDS = 30


def actor_host_name(host_id: int) -> str:
  """An actor host as logs and episode sources name it (`types.EpisodeStats.source`)."""
  return f"actor host {host_id:016x}"


class StoreBatchSource:
  """Batches of `batch_size` fresh, well-formed unrolls with values in range from the store.

  Args:
    config: the learner's: its batch size, unroll length, `trajectory_store.max_policy_lag`,
      `max_batch_wait_minutes` (raise when no fresh unroll came for that long) and
      `value_limits`.
    store: the Redis store to pop from.
    spec, initial_core_state: the learner's task and its network's core state, which every
      unroll must match (`unroll_schema_for`).
    current_version: the learner's parameter version, to judge an unroll's age by.
    stop_requested: whether the run is stopping (ends the wait for a batch with None).
    workers: threads whose failure ends the wait (the learner lease).
    on_episode: each finished episode an actor host reports, once checked.
    on_wait: called while waiting for unrolls (the publisher's flush).
  """

  def __init__(self, config: config_lib.TrainConfig, store: trajectory_store.RedisStore,
               spec: envs.EnvSpec, initial_core_state: types.CoreState, *,
               current_version: Callable[[], int], stop_requested: Callable[[], bool],
               workers: Sequence[threads.Worker] = (),
               on_episode: Callable[[types.EpisodeStats], None] = lambda e: None,
               on_wait: Callable[[], None] = lambda: None):
    self._store = store
    self._batch_size = config.batch_size
    self._schema = unroll_schema_for(spec, config.unroll_length, initial_core_state)
    self._blob_bytes = codecs.blob_bytes(self._schema)
    self._checker = value_checks.ValueChecker(spec, config.value_limits)
    self.violations = violations_lib.Violations(config.value_limits.violations_to_evict)
    self._initial_core_state = initial_core_state
    self._max_policy_lag = config.trajectory_store.max_policy_lag
    self._current_version = current_version
    self._stop_requested = stop_requested
    self._max_wait_seconds = 60 * config.max_batch_wait_minutes
    self._workers = list(workers)
    self._on_episode = on_episode
    self._on_wait = on_wait
    self.stale = 0  # Unrolls dropped for their age.
    self.rejected = 0  # Blobs that did not match the schema.
    self.evicted_blobs = 0  # Blobs of evicted hosts, dropped.
    self.bytes_received = 0
    self.unrolls_received = 0
    self.clock = stage_clock.StageClock(("batch_wait",))

  def next_batch(self) -> Optional[types.HostBatch]:
    self.clock.restart()
    last_unroll = last_warning = time.perf_counter()
    unrolls: List[types.Unroll] = []
    try:
      while len(unrolls) < self._batch_size:
        threads.raise_if_failed(self._workers)
        self._on_wait()
        popped = trajectory_store.retrying(
            lambda: self._store.pop_unrolls(self._batch_size - len(unrolls), self._blob_bytes),
            self._stop_requested, "popping unrolls")
        if popped is None:  # Stop requested.
          return None
        self._count_oversized(popped.oversized, "unrolls")
        fresh = self._fresh(popped.blobs)
        unrolls.extend(fresh)
        self._collect_episodes()
        now = time.perf_counter()
        if fresh:
          last_unroll = now
        elif now - last_unroll > self._max_wait_seconds:
          raise TimeoutError(f"No fresh unroll in {self._store.url} for "
                             f"{self._max_wait_seconds:.0f} s; are the actor hosts running?")
        elif now - last_warning > _WAITING_LOG_SECONDS:
          last_warning = now
          logging.warning("Waiting for unrolls in %s: %d of %d for this batch.",
                          self._store.url, len(unrolls), self._batch_size)
      # Decoded blobs are fresh arrays, stacked once into a batch nobody else holds.
      return types.HostBatch(batch_assembler.stack_unrolls(unrolls), release=lambda: None)
    finally:
      self.clock.lap("batch_wait")

  def _count_oversized(self, count: int, what: str) -> None:
    if count:
      self.rejected += count
      logging.warning("Dropped %d %s in %s larger than any well-formed one.", count, what,
                      self._store.url)

  def _violation(self, host_id: int, what: str, error: value_checks.ValueViolation) -> None:
    name = actor_host_name(host_id)
    logging.warning("Rejected %s from %s: %s", what, name, error)
    if self.violations.count(host_id):  # Its blobs are dropped unchecked from now on.
      logging.warning("Evicting %s: %d blobs with values outside the task's ranges; its "
                      "unrolls and episodes are dropped from now on.", name,
                      self.violations.to_evict)

  def _collect_episodes(self) -> None:
    try:
      popped = self._store.pop_episodes(codecs.EPISODES_BLOB_BYTES)
    except trajectory_store.StoreUnavailable:
      return  # Collected with a later batch.
    self._count_oversized(popped.oversized, "episode records")
    for blob in popped.blobs:
      try:
        records = codecs.decode_episodes(blob)
      except wire.WireError as e:
        self.rejected += 1
        logging.warning("Rejected an episodes blob from %s: %s", self._store.url, e)
        continue
      if self.violations.is_evicted(records.host_id):
        self.evicted_blobs += 1
        continue
      try:
        self._checker.episodes(records.returns, records.lengths)
      except value_checks.ValueViolation as e:
        self._violation(records.host_id, "episode records", e)
        continue
      source = actor_host_name(records.host_id)
      for episode_return, length in zip(records.returns, records.lengths):
        self._on_episode(types.EpisodeStats(float(episode_return), int(length), source))

  def _fresh(self, blobs: List[bytes]) -> List[types.Unroll]:
    version = self._current_version()
    fresh = []
    for blob in blobs:
      self.bytes_received += len(blob)
      try:
        unroll, host_id = codecs.decode_unroll(blob, self._schema, self._initial_core_state)
      except wire.WireError as e:
        self.rejected += 1
        logging.warning("Rejected a blob from %s: %s", self._store.url, e)
        continue
      if self.violations.is_evicted(host_id):
        self.evicted_blobs += 1
        continue
      try:
        self._checker.unroll(unroll)
      except value_checks.ValueViolation as e:
        self._violation(host_id, "an unroll", e)
        continue
      self.unrolls_received += 1
      oldest, newest = int(unroll.policy_version.min()), int(unroll.policy_version.max())
      if oldest < version - self._max_policy_lag or newest > version:
        self.stale += 1
        if self.stale <= 3 or self.stale % 1000 == 0:
          logging.warning("Dropped stale unroll #%d: acted by parameters v%d..v%d, the learner "
                          "is at v%d (max lag %d).", self.stale, oldest, newest, version,
                          self._max_policy_lag)
        continue
      fresh.append(unroll)
    return fresh


class StorePublisher:
  """`publish(params, version)` for the learner loop: to the store, at most every interval.

  A publish that the interval holds back is kept and written by the next `publish` or
  `flush`: the batch source flushes while it waits, so actors always get the learner's newest
  parameters (else a learner that outran its actors would wait for fresh unrolls that its
  actors, still on old parameters, can never make).
  """

  def __init__(self, store: trajectory_store.RedisStore, interval_seconds: float,
               stop_requested: Callable[[], bool], settings: Optional[bytes] = None):
    self._store = store
    self._settings = settings  # The learner's, for actor hosts (`learner_settings`).
    self._interval = interval_seconds
    self._stop_requested = stop_requested
    self._last = -float("inf")
    self._pending = None  # (params, version) held back by the interval, or not yet written.
    self._failing = False
    self.bytes_published = 0

  def publish(self, params: Any, version: int, force: bool = False) -> None:
    self._pending = (params, version)
    if force or time.monotonic() - self._last >= self._interval:
      self.flush()

  def flush(self) -> None:
    if self._pending is None:
      return
    params, version = self._pending
    self._last = time.monotonic()
    blob = codecs.encode_params(jax.device_get(params), version)
    # A publish must not stall the learner through a Redis outage: try once, and again at the
    # next publish or flush (kept pending: hosts may be waiting for these very parameters).
    try:
      self._store.publish_params(blob, version, self._settings)
      self.bytes_published += len(blob)
      self._pending = None
      if self._failing:
        logging.info("Published parameters v%d again.", version)
      self._failing = False
    except trajectory_store.StoreUnavailable as e:
      if not self._failing:  # Once per outage, not once per update.
        logging.warning("Could not publish parameters v%d (retried with every update): %s",
                        version, e)
      self._failing = True


def unroll_schema_for(spec, unroll_length: int, initial_core_state):
  """The schema of the unrolls this learner accepts (its own spec, T and network)."""
  return codecs.unroll_schema(spec, unroll_length,
                              jax.tree.map(np.asarray, initial_core_state))


class LearnerLease(threads.Worker):
  """Holds the store's learner key: one learner per key prefix, renewed in the background.

  `acquire` waits up to `wait_seconds` for a previous holder's lease to run out (a learner
  killed without a word leaves one for `LEASE_SECONDS`) and then fails with the holder's id.
  The thread renews the lease; if it finds the key taken over, it fails (and the learner loop,
  which checks it, stops the run).
  """

  def __init__(self, store: trajectory_store.RedisStore, lease_seconds: int = LEASE_SECONDS):
    super().__init__(name="learner-lease", description="The learner lease")
    self._store = store
    self._lease = lease_seconds
    self.learner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

  def acquire(self, stop_requested: Callable[[], bool], wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    warned = False
    while not stop_requested():
      holder = trajectory_store.retrying(
          lambda: self._store.claim_learner(self.learner_id, self._lease), stop_requested,
          "claiming the learner key")
      if holder is None:
        return not stop_requested()
      if time.monotonic() > deadline:
        raise RuntimeError(
            f"Another learner ({holder}) is using the keys {self._store.prefix}:* in "
            f"{self._store.url}; stop it, or give this run its own --redis_key_prefix.")
      if not warned:
        logging.warning("Learner %s holds %s; waiting up to %.0f s for its lease to end.",
                        holder, self._store.url, wait_seconds)
        warned = True
      time.sleep(1.0)
    return False

  def _run(self) -> None:
    while not self._stop.wait(self._lease / 3):
      try:
        if not self._store.renew_learner(self.learner_id, self._lease):
          raise RuntimeError(f"Another learner took over {self._store.prefix}:* in "
                             f"{self._store.url}; this one stops.")
      except trajectory_store.StoreUnavailable:
        continue  # Redis restarting: renew next time (the lease outlives a short outage).

  def close(self) -> None:
    super().close()
    try:
      self._store.release_learner(self.learner_id)
    except trajectory_store.StoreUnavailable:
      pass  # The lease runs out by itself.
