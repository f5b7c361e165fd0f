"""The learner host's door for remote environment hosts: a gRPC server feeding inference.

`EnvServer` owns the gRPC server, whose handlers are `env_service.EnvHostService`'s (settings,
then one stream per host), and a reaper thread: a host that goes silent is evicted after
`lease_seconds` (its slots freed, its partial unrolls discarded), and a stream that has not
said HELLO within `hello_timeout_seconds` is closed; keepalive pings detect dead connections
sooner. A non-loopback address is served with TLS, or not at all unless `insecure_listen`
(`config.RemoteEnvConfig`). When the run ends, `say_goodbye` tells every host.
"""

import concurrent.futures
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import grpc

from impala_jax import config as config_lib
from impala_jax import config_checks
from impala_jax import envs
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import unroll_buffer
from impala_jax.distributed import auth
from impala_jax.distributed import env_protocol
from impala_jax.distributed import env_service
from impala_jax.distributed import host_sessions
from impala_jax.distributed import wire

_REAP_SECONDS = 1.0
_STOP_GRACE_SECONDS = 2.0


def grpc_options(max_message_bytes: int, send_bytes: Optional[int] = None):
  """Message limits (received: `max_message_bytes`, from the schema; sent: `send_bytes`, the
  same by default, -1 unlimited), and keepalive that notices a dead peer in ~20 s."""
  send_bytes = max_message_bytes if send_bytes is None else send_bytes
  return [("grpc.max_receive_message_length", max_message_bytes),
          ("grpc.max_send_message_length", send_bytes),
          ("grpc.keepalive_time_ms", 10_000),
          ("grpc.keepalive_timeout_ms", 10_000),
          ("grpc.keepalive_permit_without_calls", 1),
          ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
          ("grpc.http2.max_pings_without_data", 0)]


class _Reaper(threads.Worker):
  """Ends the streams of hosts silent for longer than their lease, or without a timely HELLO."""

  def __init__(self, table: host_sessions.SessionTable, config: config_lib.RemoteEnvConfig):
    super().__init__(name="env-host-reaper", description="The env host reaper")
    self._table = table
    self._config = config

  def _run(self) -> None:
    while not self._stop.wait(_REAP_SECONDS):
      for session in self._table.expired(self._config.lease_seconds):
        logging.warning("Evicting %s: nothing received for %.0f s.", session.name,
                        self._config.lease_seconds)
        session.context.cancel()
      for context in self._table.pending_longer_than(self._config.hello_timeout_seconds):
        logging.warning("Closing a stream from %s: no HELLO within %.0f s.", context.peer(),
                        self._config.hello_timeout_seconds)
        context.cancel()


class EnvServer:
  """Owns the gRPC server and its reaper: `start()` binds and serves, `close()` stops both."""

  def __init__(self, config: config_lib.RemoteEnvConfig, service: env_service.EnvHostService,
               table: host_sessions.SessionTable, max_message_bytes: int):
    self._config = config
    self._service = service
    self._table = table
    self._max_message_bytes = max_message_bytes
    self._server = None
    self._reaper = _Reaper(table, config)
    self.port: Optional[int] = None

  def start(self) -> "EnvServer":
    handler = grpc.method_handlers_generic_handler(env_protocol.SERVICE, {
        "Settings": grpc.unary_unary_rpc_method_handler(self._service.settings),
        "Stream": grpc.stream_stream_rpc_method_handler(self._service.stream)})
    # Room for the hosts' streams and a few calls besides (settings, streams before HELLO);
    # the service itself refuses hosts beyond max_hosts.
    calls = self._config.max_hosts + host_sessions.MAX_PENDING_PER_ADDRESS
    self._server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=calls + 2,
                                              thread_name_prefix="env-server"),
        handlers=[handler], options=grpc_options(self._max_message_bytes),
        maximum_concurrent_rpcs=calls)
    self.port = self._bind()
    self._server.start()
    self._reaper.start()
    logging.info("Serving env hosts on %s (port %d, %s).", self._config.listen, self.port,
                 "TLS" if self._config.tls else "no TLS")
    if not self._config.tls and not config_checks.is_loopback(
        self._config.listen.rpartition(":")[0]):
      logging.warning("--insecure_listen: the token and every message cross the network in "
                      "the clear.")
    return self

  def _bind(self) -> int:
    address = self._config.listen
    if self._config.tls:
      with open(self._config.tls_key_file, "rb") as key, open(self._config.tls_cert_file,
                                                                "rb") as cert:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
      port = self._server.add_secure_port(address, credentials)
    else:
      port = self._server.add_insecure_port(address)
    if not port:
      raise OSError(f"Could not bind the env host server to {address!r}.")
    return port

  def say_goodbye(self, timeout_seconds: float = 10.0) -> None:
    """Tells every host that the run has ended (GOODBYE on its stream), and waits up to
    `timeout_seconds` for them to leave."""
    self._service.end_run()
    deadline = time.monotonic() + timeout_seconds
    while len(self._table) and time.monotonic() < deadline:
      time.sleep(0.1)
    if len(self._table):
      logging.warning("%d env hosts did not leave within %.0f s of GOODBYE.",
                      len(self._table), timeout_seconds)

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
  table = host_sessions.SessionTable(config.value_limits.violations_to_evict)
  service = env_service.EnvHostService(
      config, spec=spec, inference=inference, unroll_sink=unroll_sink, table=table,
      token=read_token(remote), on_episode=on_episode, stop_requested=stop_requested)
  max_bytes = wire.max_message_bytes(env_protocol.step_schema(spec), remote.envs_per_host)
  return EnvServer(remote, service, table, max_bytes + 4096)
