"""The learner host's handler of remote environment hosts: settings, handshake, steps, goodbye.

Each host holds one bidirectional stream (`env_protocol`). For every STEP the service asks the
central inference server for actions, exactly as a local actor thread does (so remote and local
requests share the same batched policy call), answers with ACTIONS, and then does the actor's
bookkeeping server-side (`acting.recorder`): partial unrolls and recurrent state live here,
keyed by (host session, env), and finished unrolls go into the same batches as local ones.

Nothing a host sends is trusted. Every call must carry the shared token; every message is
checked against its schema (`wire`) and its values against the task's ranges and the
learner's limits (`envs.value_checks`) before anything reads it. A bad message ends only its
stream, with a gRPC status that names the problem and a log line: a malformed one for good
(`env_protocol.PERMANENT`), one with bad values so that the host may come back with fresh
environments, until its host id has broken the limits `violations_to_evict` times and is
evicted. The server keeps serving the others. When the run ends (`end_run`), every stream is
answered GOODBYE and ends.
"""

import threading
from typing import Any, Callable, Iterator, Optional

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
from impala_jax.distributed import learner_settings
from impala_jax.distributed import wire
from impala_jax.envs import value_checks


class _Rejected(Exception):
  """A call to end with `code` and `message` (already logged and counted)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code


class EnvHostService:
  """The handlers: `settings` (unary) and `stream` (HELLO, then STEP → ACTIONS)."""

  def __init__(self, config: config_lib.TrainConfig, *, spec: envs.EnvSpec, inference: Any,
               unroll_sink: unroll_buffer.UnrollSink, table: host_sessions.SessionTable,
               token: str, on_episode: Callable[[types.EpisodeStats], None],
               stop_requested: Callable[[], bool]):
    """Args:
      config: the learner's: its task, unroll length and acting settings (what hosts must
        share, answered by `settings`), `remote_envs` (max_hosts, envs_per_host, ...),
        `value_limits` (the values accepted from hosts), and its local environments and
        actor threads, after which the remote hosts' slots and requests come.
      spec: the learner's environment (hosts must run the same).
      inference: the central inference server (its `act`; `set_expected_requests` is told
        the local actor threads plus the live hosts whenever they change).
      unroll_sink: where complete unrolls go (the learner's batches).
      table: the sessions (shared with the server's reaper).
      token: the shared secret every call must carry.
      on_episode: each finished episode, attributed to its host.
      stop_requested: whether the run is stopping (ends waits for the sink).
    """
    self._spec = spec
    self._env_name = config.env.env_id
    self._settings = learner_settings.encode(learner_settings.of_config(config))
    self._unroll_length = config.unroll_length
    self._inference = inference
    self._unroll_sink = unroll_sink
    self._stop_requested = stop_requested
    self._on_episode = on_episode
    self._token = token
    self._slots = host_sessions.SlotAllocator(config.total_envs, config.remote_envs.max_envs)
    self._table = table
    self._config = config.remote_envs
    self._limits = config.value_limits
    self._on_hosts_changed = lambda hosts: inference.set_expected_requests(
        config.num_actor_threads + hosts)
    self._checker = value_checks.ValueChecker(spec, self._limits)
    self._step_schema = env_protocol.step_schema(spec)
    self._actions_schema = env_protocol.actions_schema(spec)
    self._run_ended = threading.Event()

  def end_run(self) -> None:
    """The run is over: every stream answers its next STEP with GOODBYE and ends."""
    self._run_ended.set()

  # -- the handlers -----------------------------------------------------------------------------

  def settings(self, request: bytes, context) -> bytes:
    """The learner's settings (GOODBYE once the run has ended)."""
    del request  # Its content does not matter: any request gets the same answer.
    if not auth.same_secret(self._token_of(context), self._token):
      self._abort(context, self._reject(context.peer(), grpc.StatusCode.UNAUTHENTICATED,
                                        "wrong or missing token"))
    if self._run_ended.is_set():
      return env_protocol.encode_goodbye(0)
    return self._settings

  def stream(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
    session = None
    try:
      session = self._handshake(requests, context)
      for payload in requests:
        if self._run_ended.is_set():
          yield env_protocol.encode_goodbye(session.next_sequence)
          return
        session.touch()
        arrays, sequence = self._check_step(session, payload)
        ids = arrays["env_ids"]
        first, observation = session.recorder.observe(ids, arrays["observation"])
        result = self._inference.act(ids + session.env_id_offset, observation, first)
        yield wire.encode(env_protocol.ACTIONS, sequence, self._actions_schema,
                          dict(env_ids=ids, action=result.action))
        self._record(session, arrays, first, result, context)
    except _Rejected as rejection:
      self._abort(context, rejection)
    finally:
      self._end(session)

  @staticmethod
  def _token_of(context) -> Optional[str]:
    return dict(context.invocation_metadata()).get(env_protocol.TOKEN_METADATA_KEY)

  @staticmethod
  def _abort(context, rejection: _Rejected) -> None:
    context.abort(rejection.code, str(rejection))

  def _reject(self, who: str, code: grpc.StatusCode, message: str) -> _Rejected:
    logging.warning("Rejected %s: %s", who, message)
    self._table.count_rejection()
    return _Rejected(code, message)

  # -- the handshake ----------------------------------------------------------------------------

  def _handshake(self, requests, context) -> host_sessions.HostSession:
    peer = context.peer()
    if not auth.same_secret(self._token_of(context), self._token):
      raise self._reject(peer, grpc.StatusCode.UNAUTHENTICATED, "wrong or missing token")
    hello = self._receive_hello(requests, context, peer)
    if self._table.is_evicted(hello.host_id):
      raise self._reject(host_sessions.host_name(hello.host_id),
                         grpc.StatusCode.PERMISSION_DENIED,
                         f"evicted after {self._limits.violations_to_evict} messages with "
                         "values outside the task's ranges; fix the host and restart it")
    self._check_hello(peer, hello)
    if len(self._table) >= self._config.max_hosts:
      raise self._reject(peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{self._config.max_hosts} hosts are connected already "
                         "(--max_hosts)")
    offset = self._slots.allocate(hello.num_envs)
    if offset is None:
      raise self._reject(peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"no room for {hello.num_envs} more environments "
                         f"({self._slots.in_use()} of {self._slots.capacity} remote slots "
                         "in use)")
    session = host_sessions.HostSession(hello, peer, offset, self._spec, self._unroll_length,
                                        context)
    holder = self._table.add(session)
    if holder is not None:
      self._slots.free(offset)
      raise self._reject(peer, grpc.StatusCode.ALREADY_EXISTS,
                         f"session id {hello.session_id.hex()[:8]} belongs to a live "
                         f"connection ({holder.peer}); a session cannot be taken over")
    logging.info("%s joined (global env ids %d..%d).", session.name, offset,
                 offset + hello.num_envs - 1)
    self._on_hosts_changed(len(self._table))
    return session

  def _receive_hello(self, requests, context, peer: str) -> env_protocol.Hello:
    """The stream's first message, a HELLO (the reaper closes streams silent past the
    deadline; an address may have a few streams waiting at once)."""
    if not self._table.add_pending(context, peer):
      raise self._reject(peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{host_sessions.MAX_PENDING_PER_ADDRESS} streams from "
                         f"{host_sessions.address_of(peer)} are waiting to say HELLO already")
    try:
      payload = next(requests, None)
    finally:
      self._table.remove_pending(context)
    if payload is None:
      raise self._reject(peer, grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"no HELLO (within {self._config.hello_timeout_seconds:.0f} s)")
    try:
      return env_protocol.decode_hello(payload)
    except wire.WireError as e:
      raise self._reject(peer, grpc.StatusCode.INVALID_ARGUMENT, f"bad HELLO: {e}") from e

  def _check_hello(self, peer: str, hello: env_protocol.Hello) -> None:
    spec = self._spec
    problems = []
    if hello.env_name != self._env_name:
      problems.append(f"environment {hello.env_name!r}, the learner trains on "
                      f"{self._env_name!r}")
    if hello.observation_shape != tuple(spec.observation_shape):
      problems.append(f"observation shape {hello.observation_shape}, expected "
                      f"{tuple(spec.observation_shape)}")
    if hello.observation_dtype != self._step_schema[1].dtype:
      problems.append(f"observation dtype {hello.observation_dtype}")
    if (hello.num_actions, hello.action_dim) != (spec.num_actions or 0, spec.action_dim or 0):
      problems.append(f"actions (num_actions={hello.num_actions}, action_dim="
                      f"{hello.action_dim})")
    most = self._config.envs_per_host
    if not 1 <= hello.num_envs <= most:
      problems.append(f"num_envs={hello.num_envs}, accepted 1..{most} (a host's share of the "
                      "learner's --remote_max_envs; see --remote_max_envs_per_host)")
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
      raise self._reject(session.name, grpc.StatusCode.INVALID_ARGUMENT,
                         f"bad STEP: {e}") from e
    try:
      self._checker.step(arrays)
    except value_checks.ValueViolation as e:
      raise self._violation(session, sequence, e) from e
    session.next_sequence += 1
    return arrays, sequence

  def _violation(self, session: host_sessions.HostSession, sequence: int,
                 violation: value_checks.ValueViolation) -> _Rejected:
    """Counts a STEP with bad values against its host: the session ends, and the host is
    evicted once it has done so `violations_to_evict` times."""
    evicted = self._table.count_violation(session.hello.host_id)
    logging.warning("Rejected STEP %d of %s: %s", sequence, session.name, violation)
    if evicted:
      logging.warning("Evicting %s: %d messages with values outside the task's ranges.",
                      session.source, self._limits.violations_to_evict)
      return _Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"evicted after {self._limits.violations_to_evict} messages with values "
                       f"outside the task's ranges; the last: {violation}")
    return _Rejected(env_protocol.REJECTED_RETRY, f"STEP {sequence} rejected: {violation}")

  def _record(self, session, arrays, first, result, context) -> None:
    episodes, complete = session.recorder.record(
        arrays["env_ids"], arrays["reward"], arrays["terminated"], arrays["truncated"],
        env_protocol.step_info(arrays), first, result)
    session.env_steps += len(arrays["env_ids"])
    for episode in episodes:
      self._on_episode(episode._replace(source=session.source))
    # Blocks while the learner is behind (backpressure to the host), until the stream ends.
    session.recorder.hand_over(
        complete, self._unroll_sink,
        lambda: self._stop_requested() or self._run_ended.is_set() or not context.is_active())

  def _end(self, session: Optional[host_sessions.HostSession]) -> None:
    if session is None:
      return
    self._table.remove(session)
    self._slots.free(session.env_id_offset)
    self._on_hosts_changed(len(self._table))
    logging.info("%s left after %d env steps; its partial unrolls are dropped.", session.name,
                 session.env_steps)
