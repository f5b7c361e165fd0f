"""The learner host's door for remote environment hosts: a gRPC service feeding inference.

Each host holds one bidirectional stream (`env_protocol`). For every STEP the service asks the
central inference server for actions, exactly as a local actor thread does (so remote and local
requests share the same batched policy call), answers with ACTIONS, and then does the actor's
bookkeeping server-side (`acting.recorder`): partial unrolls and recurrent state live here,
keyed by (host session, env), and finished unrolls go into the same batches as local ones.

Every stream must carry the shared token; every message is checked against its schema; a bad
one is rejected with a gRPC status that names the problem and a log line, and only that stream
ends: the server keeps serving the others. A host that goes silent is evicted after
`lease_seconds` (its slots freed, its partial unrolls discarded); keepalive pings detect dead
connections sooner.
"""

import concurrent.futures
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional

from absl import logging
import grpc
import numpy as np

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import types
from impala_jax.acting import unroll_buffer
from impala_jax.distributed import auth
from impala_jax.distributed import env_protocol
from impala_jax.distributed import host_sessions
from impala_jax.distributed import wire
from impala_jax.runtime import worker

_REAP_SECONDS = 1.0
_STOP_GRACE_SECONDS = 2.0


def grpc_options(max_message_bytes: int):
  """Message limits from the schema, and keepalive that notices a dead peer in ~20 s."""
  return [("grpc.max_receive_message_length", max_message_bytes),
          ("grpc.max_send_message_length", max_message_bytes),
          ("grpc.keepalive_time_ms", 10_000),
          ("grpc.keepalive_timeout_ms", 10_000),
          ("grpc.keepalive_permit_without_calls", 1),
          ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
          ("grpc.http2.max_pings_without_data", 0)]


class _Rejected(Exception):
  """A stream to end with `code` and `message` (already logged and counted)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code


class EnvHostService:
  """The stream handler: handshake, then STEP → inference → ACTIONS → bookkeeping."""

  def __init__(self, *, spec: envs.EnvSpec, env_name: str, unroll_length: int,
               inference: Any, unroll_sink: unroll_buffer.UnrollSink,
               stop_requested: Callable[[], bool],
               on_episode: Callable[[types.EpisodeStats], None], token: str,
               slots: host_sessions.SlotAllocator, table: host_sessions.SessionTable,
               max_envs_per_host: int, on_hosts_changed: Callable[[int], None]):
    self._spec = spec
    self._env_name = env_name
    self._unroll_length = unroll_length
    self._inference = inference
    self._unroll_sink = unroll_sink
    self._stop_requested = stop_requested
    self._on_episode = on_episode
    self._token = token
    self._slots = slots
    self._table = table
    self._max_envs_per_host = max_envs_per_host
    self._on_hosts_changed = on_hosts_changed
    self._step_schema = env_protocol.step_schema(spec)
    self._actions_schema = env_protocol.actions_schema(spec)
    self.pending: Dict[int, tuple] = {}  # id(context) → (context, since): no HELLO yet.
    self._pending_lock = threading.Lock()

  def stream(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
    session = None
    try:
      session = self._handshake(requests, context)
      for payload in requests:
        session.touch()
        arrays, sequence = self._check_step(session, payload)
        ids = arrays["env_ids"]
        first, observation = session.recorder.observe(ids, arrays["observation"])
        result = self._inference.act(ids + session.env_id_offset, observation, first)
        yield wire.encode(env_protocol.ACTIONS, sequence, self._actions_schema,
                          dict(env_ids=ids, action=result.action))
        self._record(session, arrays, first, result, context)
    except _Rejected as rejection:
      context.abort(rejection.code, str(rejection))
    finally:
      self._end(session, context)

  # -- the handshake ----------------------------------------------------------------------------

  def _reject(self, peer: str, code: grpc.StatusCode, message: str) -> _Rejected:
    logging.warning("Rejected env host %s: %s", peer, message)
    self._table.count_rejection()
    return _Rejected(code, message)

  def _handshake(self, requests, context) -> host_sessions.HostSession:
    peer = context.peer()
    token = dict(context.invocation_metadata()).get(env_protocol.TOKEN_METADATA_KEY)
    if not auth.same_secret(token, self._token):
      raise self._reject(peer, grpc.StatusCode.UNAUTHENTICATED, "wrong or missing token")
    with self._pending_lock:
      self.pending[id(context)] = (context, time.monotonic())
    try:
      payload = next(requests, None)
    finally:
      with self._pending_lock:
        self.pending.pop(id(context), None)
    if payload is None:
      raise self._reject(peer, grpc.StatusCode.INVALID_ARGUMENT, "closed before HELLO")
    try:
      hello = env_protocol.decode_hello(payload)
    except wire.WireError as e:
      raise self._reject(peer, grpc.StatusCode.INVALID_ARGUMENT, f"bad HELLO: {e}") from e
    self._check_hello(peer, hello)
    offset = self._slots.allocate(hello.num_envs)
    if offset is None:
      raise self._reject(peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"no room for {hello.num_envs} more environments "
                         f"({self._slots.in_use()} of {self._slots.capacity} remote slots "
                         "in use)")
    session = host_sessions.HostSession(hello, peer, offset, self._spec, self._unroll_length,
                                        context)
    replaced = self._table.add(session)
    if replaced is not None:  # A reconnect under the same id: the old stream ends now.
      logging.info("%s reconnected; ending its previous stream.", session.name)
      replaced.context.cancel()
    logging.info("%s joined (global env ids %d..%d).", session.name, offset,
                 offset + hello.num_envs - 1)
    self._on_hosts_changed(len(self._table))
    return session

  def _check_hello(self, peer: str, hello: env_protocol.Hello) -> None:
    spec = self._spec
    problems = []
    if hello.env_name != self._env_name:
      problems.append(f"environment {hello.env_name!r}, the learner trains on "
                      f"{self._env_name!r}")
    if hello.observation_shape != tuple(spec.observation_shape):
      problems.append(f"observation shape {hello.observation_shape}, expected "
                      f"{tuple(spec.observation_shape)}")
    if hello.observation_dtype != env_protocol.step_schema(spec)[1].dtype:
      problems.append(f"observation dtype {hello.observation_dtype}")
    if (hello.num_actions, hello.action_dim) != (spec.num_actions or 0, spec.action_dim or 0):
      problems.append(f"actions (num_actions={hello.num_actions}, action_dim="
                      f"{hello.action_dim})")
    if not 1 <= hello.num_envs <= self._max_envs_per_host:
      problems.append(f"num_envs={hello.num_envs}, accepted 1..{self._max_envs_per_host}")
    if problems:
      raise self._reject(peer, grpc.StatusCode.FAILED_PRECONDITION,
                         "HELLO does not match the learner: " + "; ".join(problems))

  # -- steps ------------------------------------------------------------------------------------

  def _check_step(self, session: host_sessions.HostSession, payload: bytes):
    try:
      kind, sequence = wire.peek(payload)
      if kind != env_protocol.STEP:
        raise wire.WireError(f"expected a STEP (kind {env_protocol.STEP}), got kind {kind}")
      if sequence != session.next_sequence:
        raise wire.WireError(f"sequence number {sequence} is stale or duplicate (expected "
                             f"{session.next_sequence})")
      arrays = wire.decode(payload, self._step_schema, session.hello.num_envs).arrays
      ids = arrays["env_ids"]
      if ids.min() < 0 or ids.max() >= session.hello.num_envs:
        raise wire.WireError(f"env ids {ids.min()}..{ids.max()} outside "
                             f"[0, {session.hello.num_envs})")
      if len(np.unique(ids)) != len(ids):
        raise wire.WireError("env ids repeat within one STEP")
    except wire.WireError as e:
      raise self._reject(session.peer, grpc.StatusCode.INVALID_ARGUMENT,
                         f"{session.name}: bad STEP: {e}") from e
    session.next_sequence += 1
    return arrays, sequence

  def _record(self, session, arrays, first, result, context) -> None:
    episodes, complete = session.recorder.record(
        arrays["env_ids"], arrays["reward"], arrays["terminated"], arrays["truncated"],
        env_protocol.step_info(arrays), first, result)
    session.env_steps += len(arrays["env_ids"])
    for episode in episodes:
      self._on_episode(episode)
    # Blocks while the learner is behind (backpressure to the host), until the stream ends.
    session.recorder.hand_over(complete, self._unroll_sink,
                               lambda: self._stop_requested() or not context.is_active())

  def _end(self, session: Optional[host_sessions.HostSession], context) -> None:
    if session is None:
      return
    self._table.remove(session)
    self._slots.free(session.env_id_offset)
    self._on_hosts_changed(len(self._table))
    logging.info("%s left after %d env steps; its partial unrolls are dropped.", session.name,
                 session.env_steps)


class _Reaper(worker.Worker):
  """Ends the streams of hosts silent for longer than their lease, or that never said HELLO."""

  def __init__(self, service: EnvHostService, table: host_sessions.SessionTable,
               lease_seconds: float):
    super().__init__(name="env-host-reaper", description="The env host reaper")
    self._service = service
    self._table = table
    self._lease = lease_seconds

  def _run(self) -> None:
    while not self._stop.wait(_REAP_SECONDS):
      for session in self._table.expired(self._lease):
        logging.warning("Evicting %s: nothing received for %.0f s.", session.name, self._lease)
        session.context.cancel()
      now = time.monotonic()
      with self._service._pending_lock:  # pylint: disable=protected-access
        silent = [c for c, since in self._service.pending.values() if now - since > self._lease]
      for context in silent:
        context.cancel()


class EnvServer:
  """Owns the gRPC server and its reaper: `start()` binds and serves, `close()` stops both."""

  def __init__(self, config: config_lib.RemoteEnvConfig, service: EnvHostService,
               table: host_sessions.SessionTable, max_message_bytes: int):
    self._config = config
    self._service = service
    self._table = table
    self._max_message_bytes = max_message_bytes
    self._server = None
    self._reaper = _Reaper(service, table, config.lease_seconds)
    self.port: Optional[int] = None

  def start(self) -> "EnvServer":
    handler = grpc.method_handlers_generic_handler(env_protocol.SERVICE, {
        "Stream": grpc.stream_stream_rpc_method_handler(self._service.stream)})
    self._server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=self._config.max_hosts + 2,
                                              thread_name_prefix="env-server"),
        handlers=[handler], options=grpc_options(self._max_message_bytes),
        maximum_concurrent_rpcs=self._config.max_hosts)
    self.port = self._bind()
    self._server.start()
    self._reaper.start()
    logging.info("Serving env hosts on %s (port %d).", self._config.listen, self.port)
    return self

  def _bind(self) -> int:
    address = self._config.listen
    if self._config.tls_cert_file:
      with open(self._config.tls_key_file, "rb") as key, open(self._config.tls_cert_file,
                                                                "rb") as cert:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
      port = self._server.add_secure_port(address, credentials)
    else:
      port = self._server.add_insecure_port(address)
    if not port:
      raise OSError(f"Could not bind the env host server to {address!r}.")
    return port

  def close(self) -> None:
    self._reaper.close()
    if self._server is not None:
      self._server.stop(grace=_STOP_GRACE_SECONDS).wait(timeout=10 * _STOP_GRACE_SECONDS)
      self._server = None

  def stats(self) -> host_sessions.SessionStats:
    return self._table.stats()


def read_token(config: config_lib.RemoteEnvConfig) -> str:
  """The env hosts' shared token; a server never runs without one."""
  token = auth.read_secret(config.token_file, auth.TOKEN_ENV_VAR)
  if token is None:
    raise ValueError(f"--listen={config.listen} needs a shared token: --token_file=PATH or "
                     f"${auth.TOKEN_ENV_VAR} (remote hosts must present the same one).")
  return token


def check_tls_files(config: config_lib.RemoteEnvConfig) -> None:
  for path in (config.tls_cert_file, config.tls_key_file):
    if path and not os.path.isfile(path):
      raise ValueError(f"TLS file {path!r} does not exist.")


def make_env_server(config: config_lib.TrainConfig, spec: envs.EnvSpec, inference: Any,
                    unroll_sink: unroll_buffer.UnrollSink,
                    on_episode: Callable[[types.EpisodeStats], None],
                    stop_requested: Callable[[], bool]) -> EnvServer:
  """The env host server of a training run: slots after the local actors' environment ids."""
  remote = config.remote_envs
  table = host_sessions.SessionTable()
  service = EnvHostService(
      spec=spec, env_name=config.env.env_id, unroll_length=config.unroll_length,
      inference=inference, unroll_sink=unroll_sink, stop_requested=stop_requested,
      on_episode=on_episode, token=read_token(remote),
      slots=host_sessions.SlotAllocator(config.total_envs, remote.max_envs), table=table,
      max_envs_per_host=remote.max_envs_per_host,
      on_hosts_changed=lambda hosts: inference.set_expected_requests(
          config.num_actor_threads + hosts))
  max_bytes = wire.max_message_bytes(env_protocol.step_schema(spec), remote.max_envs_per_host)
  return EnvServer(remote, service, table, max_bytes + 4096)
