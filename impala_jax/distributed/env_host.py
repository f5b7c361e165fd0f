"""An environment host: steps EnvPool here, gets actions from a learner's inference server.

The host runs no network. It opens one gRPC stream to the learner (`env_protocol`), says HELLO
with a random session id, and then, with an asynchronous EnvPool split in two halves, keeps
two STEPs in flight: while one half's observations travel and are batched into the learner's
policy call, the other half steps. Every reply is checked against its schema and against the
step it answers.

Faults: a lost connection, or a reply that does not come within `reply_timeout_seconds`, ends
the stream; the host then reconnects with exponential backoff as a new session, with fresh
environments (the learner has dropped the old session's partial unrolls). A rejection that
retrying cannot fix (wrong token, a different environment) stops the host with that message.
"""

import collections
import dataclasses
import os
import queue
import threading
import time
from typing import Optional

from absl import logging
import grpc
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_server
from impala_jax.distributed import wire
from impala_jax.runtime import worker

_POLL_SECONDS = 0.1
_ROUND_TRIPS_KEPT = 10_000
_MAX_BACKOFF_SECONDS = 30.0
# Rejections that a reconnect would only repeat.
_PERMANENT = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
              grpc.StatusCode.UNIMPLEMENTED)


class _ConnectionLost(Exception):
  """The stream ended or stalled; the host reconnects."""


class EnvHost(worker.Worker):
  """Owns the EnvPool and the stream to the learner; `start()`, `close()`; reconnects."""

  def __init__(self, env_config: config_lib.EnvConfig, learner_address: str, token: str, *,
               tls_ca_file: Optional[str] = None, reply_timeout_seconds: float = 30.0,
               connect_timeout_seconds: float = 30.0):
    super().__init__(name="env-host", description="The env host")
    if env_config.num_envs >= 2:  # Two halves: one steps while the other's reply travels.
      env_config = dataclasses.replace(env_config, batch_size=env_config.num_envs // 2)
    self._env_config = env_config
    self._address = learner_address
    self._token = token
    self._tls_ca_file = tls_ca_file
    self._reply_timeout = reply_timeout_seconds
    self._connect_timeout = connect_timeout_seconds
    self._spec = envs.env_spec(env_config)
    self._is_atari = envs.is_atari(env_config.env_id)
    self._step_schema = env_protocol.step_schema(self._spec)
    self._actions_schema = env_protocol.actions_schema(self._spec)
    self._max_bytes = wire.max_message_bytes(self._step_schema, env_config.num_envs) + 4096
    self.env_steps = 0
    self.connections = 0
    # Wire statistics: bytes each way, and each STEP's round trip (sent → ACTIONS back, which
    # includes the wait for the learner's batched policy call).
    self.bytes_sent = 0
    self.bytes_received = 0
    self.round_trips = collections.deque(maxlen=_ROUND_TRIPS_KEPT)

  def _run(self) -> None:
    backoff = 1.0
    while not self._stop.is_set():
      started = time.monotonic()
      try:
        self._connection()
      except grpc.RpcError as e:
        if e.code() in _PERMANENT:
          raise RuntimeError(f"The learner at {self._address} rejected this host: "
                             f"{e.code().name}: {e.details()}") from e
        logging.warning("Lost the learner at %s (%s: %s).", self._address, e.code().name,
                        e.details())
      except (_ConnectionLost, wire.WireError) as e:
        logging.warning("Lost the learner at %s: %s", self._address, e)
      if time.monotonic() - started > 2 * _MAX_BACKOFF_SECONDS:
        backoff = 1.0  # The connection worked for a while: start backing off afresh.
      if not self._stop.is_set():
        logging.info("Reconnecting in %.0f s.", backoff)
        self._stop.wait(backoff)
        backoff = min(2 * backoff, _MAX_BACKOFF_SECONDS)

  def _channel(self) -> grpc.Channel:
    options = env_server.grpc_options(self._max_bytes)
    if self._tls_ca_file:
      with open(self._tls_ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
      return grpc.secure_channel(self._address, credentials, options=options)
    return grpc.insecure_channel(self._address, options=options)

  def _connection(self) -> None:
    """One session: fresh environments, HELLO, then steps until stopped or the stream ends."""
    requests: "queue.Queue[Optional[bytes]]" = queue.Queue()
    replies: "queue.Queue" = queue.Queue()
    channel = self._channel()
    env = None
    call = None
    reader = None
    try:
      grpc.channel_ready_future(channel).result(timeout=self._connect_timeout)
      call = channel.stream_stream(env_protocol.METHOD)(
          _drain(requests, self._stop), metadata=[(env_protocol.TOKEN_METADATA_KEY,
                                                   self._token)])
      reader = threading.Thread(target=_read, args=(call, replies), name="env-host-reader",
                                daemon=True)
      reader.start()
      env = envs.make_env(self._env_config)
      self.connections += 1
      session_id = os.urandom(env_protocol.SESSION_ID_BYTES)
      requests.put(env_protocol.encode_hello(session_id, self._env_config.env_id,
                                             self._env_config.num_envs, self._spec))
      logging.info("Connected to %s as session %s (%d envs).", self._address,
                   session_id.hex()[:8], self._env_config.num_envs)
      self._steps(env, requests, replies)
    except grpc.FutureTimeoutError as e:
      raise _ConnectionLost(f"no learner answers at {self._address}") from e
    finally:
      requests.put(None)
      if call is not None:
        call.cancel()
      if reader is not None:
        reader.join(timeout=10)
      if env is not None:
        env.close()
      channel.close()

  def _steps(self, env, requests: "queue.Queue", replies: "queue.Queue") -> None:
    env.async_reset()
    # (sequence, env ids, time sent) awaiting ACTIONS, oldest first.
    in_flight = collections.deque()
    sequence = 0
    halves = 2 if self._env_config.num_envs >= 2 else 1
    for _ in range(halves):
      sequence += 1
      in_flight.append((sequence, self._send_step(env, requests, sequence), time.monotonic()))
    while not self._stop.is_set():
      reply = self._next_reply(replies)
      expected_sequence, ids, sent_at = in_flight.popleft()
      self.round_trips.append(time.monotonic() - sent_at)
      self.bytes_received += len(reply)
      actions = self._check_actions(reply, expected_sequence, ids)
      env.send(envs.to_env_action(actions, self._spec), ids)
      sequence += 1
      in_flight.append((sequence, self._send_step(env, requests, sequence), time.monotonic()))

  def _send_step(self, env, requests: "queue.Queue", sequence: int) -> np.ndarray:
    observation, reward, terminated, truncated, info = env.recv()
    ids = np.asarray(info["env_id"], np.int32)
    message = wire.encode(
        env_protocol.STEP, sequence, self._step_schema,
        env_protocol.step_arrays(ids, observation, reward, terminated, truncated, info,
                                 self._is_atari))
    requests.put(message)
    self.bytes_sent += len(message)
    self.env_steps += len(ids)
    return ids

  def stats(self) -> dict:
    """Steps, bytes per agent step each way, and round-trip times (recent 10k STEPs)."""
    trips = np.asarray(self.round_trips) * 1000.0
    steps = max(self.env_steps, 1)
    return dict(env_steps=self.env_steps, connections=self.connections,
                bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
                bytes_per_step_sent=self.bytes_sent / steps,
                bytes_per_step_received=self.bytes_received / steps,
                round_trip_ms_mean=float(trips.mean()) if len(trips) else None,
                round_trip_ms_p50=float(np.percentile(trips, 50)) if len(trips) else None,
                round_trip_ms_p95=float(np.percentile(trips, 95)) if len(trips) else None)

  def _next_reply(self, replies: "queue.Queue") -> bytes:
    deadline = time.monotonic() + self._reply_timeout
    while time.monotonic() < deadline:
      if self._stop.is_set():
        raise _ConnectionLost("stopping")  # Ends the connection; _run sees the stop.
      try:
        item = replies.get(timeout=_POLL_SECONDS)
      except queue.Empty:
        continue
      if isinstance(item, BaseException):
        raise item
      return item
    raise _ConnectionLost(f"no reply within {self._reply_timeout:.0f} s")

  def _check_actions(self, reply: bytes, sequence: int, ids: np.ndarray) -> np.ndarray:
    message = wire.decode(reply, self._actions_schema, self._env_config.num_envs)
    if message.kind != env_protocol.ACTIONS or message.sequence != sequence:
      raise wire.WireError(f"Expected ACTIONS for step {sequence}, got kind {message.kind} "
                           f"for step {message.sequence}.")
    if not np.array_equal(message.arrays["env_ids"], ids):
      raise wire.WireError(f"ACTIONS for step {sequence} name other environments.")
    return message.arrays["action"]


def _drain(requests: "queue.Queue", stop: threading.Event):
  """The request stream: messages from `requests` until None (or the host stops)."""
  while not stop.is_set():
    try:
      item = requests.get(timeout=_POLL_SECONDS)
    except queue.Empty:
      continue
    if item is None:
      return
    yield item


def _read(call, replies: "queue.Queue") -> None:
  """Moves replies to a queue, so the host can wait for them with a timeout."""
  try:
    for reply in call:
      replies.put(reply)
    replies.put(_ConnectionLost("the learner closed the stream"))
  except BaseException as e:  # pylint: disable=broad-except
    replies.put(e)
