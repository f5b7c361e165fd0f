"""A private redis-server on this machine, for single-machine runs, benchmarks and tests.

The trajectory store (trajectory_store.py) needs a Redis server. On one machine, this starts
one of its own: a free loopback port, fresh random passwords, no persistence, and the store's
two ACL users (`store_roles`), each with its own password:

    with local_redis.LocalRedisServer(workdir) as server:
      # python experiments/control.py --trajectory_store={server.url} --redis_username=learner \
      #     --redis_password_file={server.learner_password_file} --num_actor_threads=0 ...
      # python experiments/actor_host.py --trajectory_store={server.url} \
      #     --redis_username=actor --redis_password_file={server.actor_password_file} ...
      store = trajectory_store.RedisStore(config_lib.TrajectoryStoreConfig(
          url=server.url, username="learner", password_file=server.learner_password_file))

The default user is the administrator's (`password_file`: what the server's own readiness check
and tests use). Passwords are only ever in files of mode 600 (on a command line they would
show in `ps`); the config file holds the roles' passwords as SHA-256 digests. With `tls`, the
server speaks only TLS (rediss://) and requires client certificates. `stop()` and then `start()`
restart the server on the same port with the same passwords, empty (as after a crash).
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
from typing import NamedTuple, Optional

import redis

from impala_jax.distributed import store_roles

_READY_TIMEOUT_SECONDS = 20.0
_STOP_TIMEOUT_SECONDS = 20.0
_INSTALL_HINT = "run `make redis-server` or `apt-get install redis-server`"


def _free_port() -> int:
  # Released before redis-server binds it: another process could take it in between; then
  # redis-server exits and `start()` raises, naming the log that says so.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_private(path: str, text: str) -> None:
  # Mode 600 from creation (a chmod after writing would leave a window), and again for a file
  # that already existed with a looser mode.
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  os.fchmod(fd, 0o600)
  with open(fd, "w", encoding="utf-8") as f:
    f.write(text)


def _quoted(text: str) -> str:
  """`text` as one argument of a redis.conf line (a folder's name may hold spaces)."""
  return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TlsFiles(NamedTuple):
  """PEM files of a TLS server that verifies its clients (and of one client, for its own
  readiness check)."""

  ca_file: str
  server_cert_file: str
  server_key_file: str
  client_cert_file: str
  client_key_file: str


class LocalRedisServer:
  """A redis-server on 127.0.0.1 with a password; a context manager (or `start()`/`stop()`).

  Attributes:
    port: its loopback port, kept across restarts.
    password_file: the administrator's (default user's) password (mode 600).
    learner_password_file, actor_password_file: the `learner` and `actor` users' passwords,
      for `--redis_password_file` (with `--redis_username=learner` / `actor`).
    log_path: redis-server's output, appended to across restarts.
  """

  def __init__(self, directory: str, password: Optional[str] = None,
               port: Optional[int] = None, maxmemory_mb: int = 1024,
               tls: Optional[TlsFiles] = None):
    """Writes nothing yet; `start()` (or `with`) does.

    Args:
      directory: an existing folder for the password, config and log files.
      password: the password; None: a fresh random one.
      port: the port; None: a free one.
      maxmemory_mb: the server's memory limit. Past it writes are refused (`noeviction`), not
        keys silently evicted: a store that loses its parameters key or a lease without a
        word would be worse than a clear error.
      tls: serve TLS only, with these files.
    """
    self._maxmemory_mb = maxmemory_mb
    self._tls = tls
    self.port = port or _free_port()
    self.password_file = os.path.join(directory, "redis_password")
    self.learner_password_file = os.path.join(directory, "redis_learner_password")
    self.actor_password_file = os.path.join(directory, "redis_actor_password")
    self._role_passwords = {store_roles.LEARNER: secrets.token_hex(16),
                            store_roles.ACTOR: secrets.token_hex(16)}
    self.log_path = os.path.join(directory, "redis.log")
    self._directory = directory
    self._config_file = os.path.join(directory, "redis.conf")
    self._password = password or secrets.token_hex(16)
    self._process: Optional[subprocess.Popen] = None

  @property
  def url(self) -> str:
    return f"{'rediss' if self._tls else 'redis'}://127.0.0.1:{self.port}/0"

  def __enter__(self) -> "LocalRedisServer":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def start(self) -> "LocalRedisServer":
    """Starts redis-server and waits until it answers PING; stops it again if it does not.

    Raises:
      RuntimeError: redis-server is not installed, or did not answer in time (see the log).
    """
    if self._process is not None:
      raise RuntimeError(f"redis-server on port {self.port} is already running.")
    if shutil.which("redis-server") is None:
      raise RuntimeError(f"redis-server is not installed: {_INSTALL_HINT}.")
    _write_private(self.password_file, self._password + "\n")
    _write_private(self.learner_password_file,
                   self._role_passwords[store_roles.LEARNER] + "\n")
    _write_private(self.actor_password_file, self._role_passwords[store_roles.ACTOR] + "\n")
    _write_private(self._config_file, "\n".join(
        self._listen_lines() +
        ["bind 127.0.0.1", "protected-mode yes", 'save ""', "appendonly no",
         f"dir {_quoted(self._directory)}", f"requirepass {_quoted(self._password)}",
         f"maxmemory {self._maxmemory_mb}mb", "maxmemory-policy noeviction"] +
        store_roles.acl_lines(self._role_passwords) + [""]))
    with open(self.log_path, "a", encoding="utf-8") as log:  # The child keeps its own handle.
      self._process = subprocess.Popen(["redis-server", self._config_file], stdout=log,
                                       stderr=subprocess.STDOUT)
    try:
      self._wait_until_ready()
    except BaseException:
      self.stop()
      raise
    return self

  def _listen_lines(self):
    if self._tls is None:
      return [f"port {self.port}"]
    return ["port 0", f"tls-port {self.port}",
            f"tls-cert-file {_quoted(self._tls.server_cert_file)}",
            f"tls-key-file {_quoted(self._tls.server_key_file)}",
            f"tls-ca-cert-file {_quoted(self._tls.ca_file)}", "tls-auth-clients yes"]

  def admin_client(self) -> redis.Redis:
    """A client as the administrator (the default user): for checks and tests."""
    tls = {} if self._tls is None else dict(
        ssl=True, ssl_ca_certs=self._tls.ca_file, ssl_certfile=self._tls.client_cert_file,
        ssl_keyfile=self._tls.client_key_file)
    return redis.Redis(host="127.0.0.1", port=self.port, password=self._password,
                       socket_timeout=1.0, socket_connect_timeout=1.0, **tls)

  def _wait_until_ready(self) -> None:
    client = self.admin_client()
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    try:
      while True:
        try:
          client.ping()
          return
        except redis.RedisError:  # Not listening yet, or still loading.
          if self._process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"redis-server did not answer on 127.0.0.1:{self.port} (exit code "
                f"{self._process.poll()}); see {self.log_path}. If it is missing or broken, "
                f"{_INSTALL_HINT}.") from None
          time.sleep(0.1)
    finally:
      client.close()

  def stop(self) -> None:
    """Ends redis-server (SIGTERM, then SIGKILL) and reaps it; its data is gone."""
    process, self._process = self._process, None
    if process is None:
      return
    try:
      process.terminate()
      process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
      pass  # Killed below.
    finally:  # Also when interrupted: never leave it running or unreaped.
      if process.poll() is None:
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT_SECONDS)
