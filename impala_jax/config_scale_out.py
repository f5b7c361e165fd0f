"""Configuration of the scale-out designs (docs/distributed.md): remote environment hosts, the
Redis trajectory store fed by actor hosts, several learner processes, and the limits on the
values other hosts may send. `config` re-exports every name here, so `config.RemoteEnvConfig`
and the rest stay where callers look for them.
"""

import dataclasses
import math
import urllib.parse
from typing import Optional

from impala_jax.config_checks import is_loopback
from impala_jax.config_checks import require as _require

@dataclasses.dataclass(frozen=True)
class ValueLimits:
  """What the learner accepts from other hosts (env hosts, actor hosts), beyond the ranges the
  environment itself declares (`envs.value_checks`).

  Attributes:
    max_abs_reward: the largest reward magnitude accepted, also per step of an episode's
      score: past ~1e6 a value loss in float32 no longer stays finite over a batch.
    max_abs_value: the largest magnitude of a float observation, continuous action or
      recurrent state value accepted.
    violations_to_evict: a host whose data breaks these limits this many times is evicted
      (refused from then on); each violation rejects that message or unroll.
  """

  max_abs_reward: float = 1e6
  max_abs_value: float = 1e6
  violations_to_evict: int = 3

  def __post_init__(self):
    _require(0 < self.max_abs_reward < math.inf,
             f"max_abs_reward must be a positive finite number, got {self.max_abs_reward}.")
    _require(0 < self.max_abs_value < math.inf,
             f"max_abs_value must be a positive finite number, got {self.max_abs_value}.")
    _require(self.violations_to_evict >= 1,
             f"violations_to_evict must be >= 1, got {self.violations_to_evict}.")


@dataclasses.dataclass(frozen=True)
class RemoteEnvConfig:
  """Remote environment hosts that stream to this learner's inference server (SEED-style).

  Attributes:
    listen: HOST:PORT the gRPC server binds, e.g. "127.0.0.1:50051" (loopback unless told;
      "0.0.0.0:50051" for other machines, which needs TLS or `insecure_listen`). Port 0 picks
      a free one.
    token_file: file holding the shared secret; None reads $IMPALA_JAX_TOKEN. Never the
      secret itself: configs are written to disk and command lines are visible to `ps`.
    max_envs: global environment ids reserved for remote hosts, over all of them.
    max_envs_per_host: the most environments one host may bring; None: a fair share,
      max_envs // max_hosts, so that one host cannot take every slot.
    max_hosts: concurrent hosts.
    lease_seconds: a host not heard from for this long is evicted (its partial unrolls are
      discarded); it may reconnect and starts clean.
    hello_timeout_seconds: a stream that has not said HELLO this long after it opened is
      closed (streams that never do would hold connections).
    tls_cert_file, tls_key_file: serve TLS with this certificate chain and key (PEM).
    insecure_listen: serve a non-loopback address without TLS (the token and every message
      in the clear): only on a network you trust.
  """

  listen: str = "127.0.0.1:50051"
  token_file: Optional[str] = None
  max_envs: int = 256
  max_envs_per_host: Optional[int] = None
  max_hosts: int = 8
  lease_seconds: float = 30.0
  hello_timeout_seconds: float = 10.0
  tls_cert_file: Optional[str] = None
  tls_key_file: Optional[str] = None
  insecure_listen: bool = False

  def __post_init__(self):
    host, _, port = self.listen.rpartition(":")
    _require(bool(host) and port.isdigit() and int(port) < 65536,
             f"listen must be HOST:PORT, got {self.listen!r}.")
    _require(self.max_envs >= 1, f"max_envs must be >= 1, got {self.max_envs}.")
    _require(self.max_hosts >= 1, f"max_hosts must be >= 1, got {self.max_hosts}.")
    _require(1 <= self.envs_per_host <= self.max_envs,
             f"max_envs_per_host must be in [1, max_envs={self.max_envs}], got "
             f"{self.envs_per_host}" + ("" if self.max_envs_per_host is not None else
                                        f" (max_envs // max_hosts={self.max_hosts})") + ".")
    _require(self.lease_seconds > 0, f"lease_seconds must be > 0, got {self.lease_seconds}.")
    _require(self.hello_timeout_seconds > 0,
             f"hello_timeout_seconds must be > 0, got {self.hello_timeout_seconds}.")
    _require(bool(self.tls_cert_file) == bool(self.tls_key_file),
             "TLS needs both tls_cert_file and tls_key_file.")
    _require(self.tls or self.insecure_listen or is_loopback(host),
             f"--listen={self.listen} is not a loopback address and has no TLS: the token and "
             "every observation would cross the network in the clear. Serve TLS "
             "(--tls_cert_file, --tls_key_file; hosts then pass --tls_ca_file), or pass "
             "--insecure_listen on a network you trust.")

  @property
  def tls(self) -> bool:
    return bool(self.tls_cert_file)

  @property
  def envs_per_host(self) -> int:
    """The most environments one host may bring (`max_envs_per_host` or the fair share)."""
    if self.max_envs_per_host is not None:  # 0 is refused, not a fair share.
      return self.max_envs_per_host
    return max(1, self.max_envs // self.max_hosts)


@dataclasses.dataclass(frozen=True)
class TrajectoryStoreConfig:
  """A Redis trajectory store between actor hosts and the learner (`distributed`).

  Attributes:
    url: redis://HOST:PORT/DB, or rediss://... for TLS (no password in it). A non-loopback
      host needs rediss:// unless `insecure_redis`.
    username: the Redis ACL user: "learner" for the learner, "actor" for actor hosts
      (`distributed.store_roles`); None: the default user.
    password_file: file holding that user's password; None reads $REDIS_PASSWORD.
    tls_ca_file: rediss://: trust this CA (PEM); None: the system's.
    tls_cert_file, tls_key_file: rediss://: this client's certificate and key (PEM), for a
      server that verifies its clients.
    insecure_redis: allow redis:// (no TLS) to a non-loopback host: passwords and data in the
      clear, only on a network you trust.
    key_prefix: the keys' namespace, so several runs can share one server.
    capacity: unrolls the store keeps; beyond it the oldest are dropped (and counted).
    max_policy_lag: the learner drops unrolls acted more than this many updates ago (and
      counts them): V-trace corrects some lag, not any.
    publish_interval_seconds: the learner publishes parameters at most this often.
  """

  url: str = "redis://127.0.0.1:6379/0"
  username: Optional[str] = None
  password_file: Optional[str] = None
  tls_ca_file: Optional[str] = None
  tls_cert_file: Optional[str] = None
  tls_key_file: Optional[str] = None
  insecure_redis: bool = False
  key_prefix: str = "impala_jax"
  capacity: int = 256
  max_policy_lag: int = 20
  publish_interval_seconds: float = 0.2

  def __post_init__(self):
    _require(self.url.startswith(("redis://", "rediss://")),
             "The trajectory store must be a redis://HOST:PORT/DB or rediss://HOST:PORT/DB "
             f"URL, got {self.url!r}.")
    _require(self.tls or not (self.tls_ca_file or self.tls_cert_file),
             f"TLS files need a rediss:// URL, got {self.url!r}.")
    _require(bool(self.tls_cert_file) == bool(self.tls_key_file),
             "A Redis client certificate needs both tls_cert_file and tls_key_file.")
    host = urllib.parse.urlparse(self.url).hostname or ""
    _require(self.tls or self.insecure_redis or is_loopback(host),
             f"--trajectory_store={self.url} is not on loopback and has no TLS: the password "
             "and every unroll would cross the network in the clear. Use rediss:// (with "
             "--redis_tls_ca_file, and --redis_tls_cert_file/--redis_tls_key_file where the "
             "server verifies clients), or pass --insecure_redis on a network you trust.")
    _require(self.capacity >= 1, f"capacity must be >= 1, got {self.capacity}.")
    _require(self.max_policy_lag >= 0,
             f"max_policy_lag must be >= 0, got {self.max_policy_lag}.")
    _require(self.publish_interval_seconds >= 0, "publish_interval_seconds must be >= 0, got "
             f"{self.publish_interval_seconds}.")
    _require(bool(self.key_prefix) and ":" not in self.key_prefix,
             f"key_prefix must be a non-empty name without ':', got {self.key_prefix!r}.")

  @property
  def tls(self) -> bool:
    return self.url.startswith("rediss://")


@dataclasses.dataclass(frozen=True)
class MultiHostConfig:
  """One data-parallel learner over several processes (hosts) with `jax.distributed`.

  Every process runs the same program: its own actors and inference server on its local
  devices, and its share of one learner whose gradients are averaged over every device of
  every process. `batch_size` is per process; the global batch is num_processes × that.

  Attributes:
    coordinator_address: HOST:PORT of process 0's coordination service.
    num_processes: processes in the group.
    process_id: this process, 0..num_processes-1 (0 writes metrics and checkpoints).
    initialization_timeout_seconds: give up when the group has not formed by then.
    heartbeat_timeout_seconds: a process not heard from this long is declared dead; every
      other process then exits with an error naming it.
    stall_timeout_seconds: a process whose learner completes no update for this long
      (alive but stuck, e.g. in a collective another process never joined) exits with an
      error (the update-rate watchdog).
    coordinator_bind_address: HOST:PORT process 0's coordination service listens on. None:
      loopback when `coordinator_address` is a loopback address (one machine), else every
      interface (JAX's default: the other hosts must reach it).
  """

  coordinator_address: str = "127.0.0.1:12355"
  num_processes: int = 1
  process_id: int = 0
  initialization_timeout_seconds: int = 300
  heartbeat_timeout_seconds: int = 30
  stall_timeout_seconds: float = 600.0
  coordinator_bind_address: Optional[str] = None

  @property
  def bind_address(self) -> Optional[str]:
    """Where the coordination service listens (None: JAX's default, every interface)."""
    if self.coordinator_bind_address:
      return self.coordinator_bind_address
    host, _, port = self.coordinator_address.rpartition(":")
    if host.strip("[]") in ("127.0.0.1", "localhost", "::1"):
      return f"{host}:{port}"
    return None

  def __post_init__(self):
    host, _, port = self.coordinator_address.rpartition(":")
    _require(bool(host) and port.isdigit(),
             f"coordinator_address must be HOST:PORT, got {self.coordinator_address!r}.")
    _require(self.num_processes >= 1, f"num_processes must be >= 1, got {self.num_processes}.")
    _require(0 <= self.process_id < self.num_processes,
             f"process_id must be in [0, {self.num_processes}), got {self.process_id}.")
    _require(self.heartbeat_timeout_seconds >= 1 and self.initialization_timeout_seconds >= 1
             and self.stall_timeout_seconds > 0, "multi-host timeouts must be positive.")
