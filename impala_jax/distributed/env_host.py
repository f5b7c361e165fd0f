"""An environment host: steps EnvPool here, gets actions from a learner's inference server.

The host runs no network. It asks the learner for its environment settings
(`learner_settings`: the task, frame size, time limit, ...), builds its environments from
them with its own count, threads and seed, opens one gRPC stream to the learner
(`env_protocol`), says HELLO, and then, with an asynchronous EnvPool split in two halves, keeps
two STEPs in flight: while one half's observations travel and are batched into the learner's
policy call, the other half steps. Every reply is checked against its schema and against the
step it answers.

How it ends:
  * the run ended (its budget or target score reached): the learner says GOODBYE and the host
    stops cleanly (`run_ended`; the script exits 0);
  * a lost connection, or a reply that does not come within `reply_timeout_seconds`, ends the
    stream; the host reconnects with exponential backoff as a new session, with fresh
    environments (the learner has dropped the old session's partial unrolls), for up to
    `learner_timeout_seconds` without hearing from the learner, then fails saying so;
  * a rejection that retrying cannot fix (wrong token, a different environment, an explicit
    setting that differs from the learner's, eviction) stops the host with that message.
"""

import collections
import dataclasses
import os
import queue
import threading
import time
from typing import Any, Mapping, Optional

from absl import logging
import grpc
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import threads
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_server
from impala_jax.distributed import learner_settings
from impala_jax.distributed import wire

_POLL_SECONDS = 0.1
_ROUND_TRIPS_KEPT = 10_000
_MAX_BACKOFF_SECONDS = 30.0
# The largest reply accepted: ACTIONS for a host's environments, or the learner's settings.
_MAX_REPLY_BYTES = 1 << 20


class _ConnectionLost(Exception):
  """The stream ended or stalled; the host reconnects."""


class _RunEnded(Exception):
  """The learner said GOODBYE: its run is over."""


class EnvHost(threads.Worker):
  """Owns the EnvPool and the stream to the learner; `start()`, `close()`; reconnects."""

  def __init__(self, env_config: config_lib.EnvConfig, learner_address: str, token: str, *,
               explicit: Optional[Mapping[str, Any]] = None,
               tls_ca_file: Optional[str] = None, reply_timeout_seconds: float = 30.0,
               connect_timeout_seconds: float = 30.0,
               learner_timeout_seconds: float = 600.0):
    """Args:
      env_config: this host's environments: its `num_envs`, `num_threads` and `seed` are
        used; every other setting comes from the learner.
      learner_address: the learner's `--listen` address, HOST:PORT.
      token: the shared secret.
      explicit: settings (`learner_settings` names) this host was given explicitly; one that
        differs from the learner's stops the host with a message naming it.
      tls_ca_file: use TLS, trusting this CA certificate (PEM).
      reply_timeout_seconds: reconnect when a reply takes longer.
      connect_timeout_seconds: give up one connection attempt after this long.
      learner_timeout_seconds: fail after this long without an answer from the learner.
    """
    super().__init__(name="env-host", description="The env host")
    if env_config.num_envs >= 2:  # Two halves: one steps while the other's reply travels.
      env_config = dataclasses.replace(env_config, batch_size=env_config.num_envs // 2)
    self._base_config = env_config
    self._explicit = dict(explicit or {})
    self._address = learner_address
    self._token = token
    self._tls_ca_file = tls_ca_file
    self._reply_timeout = reply_timeout_seconds
    self._connect_timeout = connect_timeout_seconds
    self._learner_timeout = learner_timeout_seconds
    # The same for this host's life, so the learner counts its violations across reconnects.
    self.host_id = os.urandom(env_protocol.SESSION_ID_BYTES)
    self._last_contact = time.monotonic()
    self.run_ended = False
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
      except _RunEnded:
        self.run_ended = True
        logging.info("The learner's run has ended; stopping.")
        return
      except grpc.RpcError as e:
        if e.code() in env_protocol.PERMANENT:
          raise RuntimeError(f"The learner at {self._address} rejected this host: "
                             f"{e.code().name}: {e.details()}") from e
        logging.warning("Lost the learner at %s (%s: %s).", self._address, e.code().name,
                        e.details())
      except (_ConnectionLost, wire.WireError) as e:
        logging.warning("Lost the learner at %s: %s", self._address, e)
      silent = time.monotonic() - self._last_contact
      if silent > self._learner_timeout:
        raise RuntimeError(f"No answer from the learner at {self._address} for {silent:.0f} s "
                           f"(--learner_timeout_seconds={self._learner_timeout:.0f}); giving "
                           "up.")
      if time.monotonic() - started > 2 * _MAX_BACKOFF_SECONDS:
        backoff = 1.0  # The connection worked for a while: start backing off afresh.
      if not self._stop.is_set():
        logging.info("Reconnecting in %.0f s.", backoff)
        self._stop.wait(min(backoff, max(0.0, self._learner_timeout - silent) + 0.1))
        backoff = min(2 * backoff, _MAX_BACKOFF_SECONDS)

  def _channel(self) -> grpc.Channel:
    # Sends are this host's own STEPs; replies are capped (ACTIONS, settings).
    options = env_server.grpc_options(_MAX_REPLY_BYTES, send_bytes=-1)
    if self._tls_ca_file:
      with open(self._tls_ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
      return grpc.secure_channel(self._address, credentials, options=options)
    return grpc.insecure_channel(self._address, options=options)

  def _metadata(self):
    return [(env_protocol.TOKEN_METADATA_KEY, self._token)]

  def _settings(self, channel: grpc.Channel) -> config_lib.EnvConfig:
    """This host's environments with the learner's settings; raises _RunEnded after GOODBYE."""
    reply = channel.unary_unary(env_protocol.SETTINGS_METHOD)(
        b"", metadata=self._metadata(), timeout=self._reply_timeout)
    self.heard_from_learner()
    if wire.peek(reply)[0] == env_protocol.GOODBYE:
      raise _RunEnded()
    settings = learner_settings.decode(reply)
    try:
      return learner_settings.env_config(settings, self._base_config, self._explicit)
    except ValueError as e:
      raise RuntimeError(f"Refusing to join the learner at {self._address}: {e}") from None

  def _connection(self) -> None:
    """One session: the learner's settings, fresh environments, HELLO, then steps until
    stopped, the stream ends or the run does."""
    requests: "queue.Queue[Optional[bytes]]" = queue.Queue()
    replies: "queue.Queue" = queue.Queue()
    channel = self._channel()
    env = None
    call = None
    reader = None
    try:
      grpc.channel_ready_future(channel).result(timeout=self._connect_timeout)
      env_config = self._settings(channel)
      spec = envs.env_spec(env_config)
      env = envs.make_env(env_config)
      call = channel.stream_stream(env_protocol.METHOD)(_drain(requests, self._stop),
                                                        metadata=self._metadata())
      reader = threading.Thread(target=_read, args=(call, replies), name="env-host-reader",
                                daemon=True)
      reader.start()
      self.connections += 1
      session_id = os.urandom(env_protocol.SESSION_ID_BYTES)
      requests.put(env_protocol.encode_hello(session_id, self.host_id, env_config.env_id,
                                             env_config.num_envs, spec))
      logging.info("Connected to %s as host %s, session %s (%s, %d envs).", self._address,
                   self.host_id.hex()[:8], session_id.hex()[:8], env_config.env_id,
                   env_config.num_envs)
      _Session(self, env, env_config, spec, requests, replies).steps(
          self._stop, self._reply_timeout)
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

  def heard_from_learner(self) -> None:
    self._last_contact = time.monotonic()

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


class _Session:
  """One connection's steps: two STEPs in flight, each answered by ACTIONS (or GOODBYE).

  `host` gets the counters (`env_steps`, `bytes_*`, `round_trips`) and `heard_from_learner`.
  """

  def __init__(self, host: EnvHost, env, env_config: config_lib.EnvConfig,
               spec: envs.EnvSpec, requests: "queue.Queue", replies: "queue.Queue"):
    self._host = host
    self._env = env
    self._env_config = env_config
    self._spec = spec
    self._requests = requests
    self._replies = replies
    self._step_schema = env_protocol.step_schema(spec)
    self._actions_schema = env_protocol.actions_schema(spec)

  def steps(self, stop: threading.Event, reply_timeout: float) -> None:
    """Steps until `stop` is set; raises when a reply is late, malformed, or says GOODBYE."""
    host, env = self._host, self._env
    env.async_reset()
    # (sequence, env ids, time sent) awaiting ACTIONS, oldest first.
    in_flight = collections.deque()
    sequence = 0
    halves = 2 if self._env_config.num_envs >= 2 else 1
    for _ in range(halves):
      sequence += 1
      in_flight.append((sequence, self._send_step(sequence), time.monotonic()))
    while not stop.is_set():
      reply = self._next_reply(stop, reply_timeout)
      expected_sequence, ids, sent_at = in_flight.popleft()
      host.round_trips.append(time.monotonic() - sent_at)
      host.bytes_received += len(reply)
      actions = self._check_actions(reply, expected_sequence, ids)
      env.send(envs.to_env_action(actions, self._spec), ids)
      sequence += 1
      in_flight.append((sequence, self._send_step(sequence), time.monotonic()))

  def _send_step(self, sequence: int) -> np.ndarray:
    observation, reward, terminated, truncated, info = self._env.recv()
    ids = np.asarray(info["env_id"], np.int32)
    message = wire.encode(
        env_protocol.STEP, sequence, self._step_schema,
        env_protocol.step_arrays(ids, observation, reward, terminated, truncated, info,
                                 self._spec.family))
    self._requests.put(message)
    self._host.bytes_sent += len(message)
    self._host.env_steps += len(ids)
    return ids

  def _next_reply(self, stop: threading.Event, reply_timeout: float) -> bytes:
    deadline = time.monotonic() + reply_timeout
    while time.monotonic() < deadline:
      if stop.is_set():
        raise _ConnectionLost("stopping")  # Ends the connection; _run sees the stop.
      try:
        item = self._replies.get(timeout=_POLL_SECONDS)
      except queue.Empty:
        continue
      if isinstance(item, BaseException):
        raise item
      self._host.heard_from_learner()
      return item
    raise _ConnectionLost(f"no reply within {reply_timeout:.0f} s")

  def _check_actions(self, reply: bytes, sequence: int, ids: np.ndarray) -> np.ndarray:
    if wire.peek(reply)[0] == env_protocol.GOODBYE:
      raise _RunEnded()
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
